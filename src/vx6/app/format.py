"""Human-readable rendering of control answers (the JSON form is printed as is)."""

from __future__ import annotations

import time
from typing import Any


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    head = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([head, *body])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _ago(when: float | None) -> str:
    if not when:
        return "never"
    return f"{max(0.0, time.time() - when):.0f} s ago"


def _circuit_health(forwards: list[dict[str, Any]]) -> list[str]:
    """One block per relayed forward: each circuit's state, streams and build time."""
    lines = []
    for f in forwards:
        circuits = f.get("circuits") or []
        if not circuits:
            continue
        healthy = sum(1 for c in circuits if c["state"] == "open")
        lines.append(f"{f['name']} circuits ({healthy} of {len(circuits)} open):")
        # A retiring circuit carries its connections on but takes no new ones.
        rows = [{**c, "state": "retiring" if c.get("retiring") else c["state"]} for c in circuits]
        lines.append(table(rows, ["id", "state", "hops", "streams", "build_ms", "relays"]))
    return lines


def render(command: str, reply: dict[str, Any]) -> str:
    if command == "status":
        lines = [
            f"name:        {reply.get('name') or '-'}",
            f"fingerprint: {reply['fingerprint']}",
            f"key:         {reply['key']}",
            f"listen:      {', '.join(reply['listen'])}",
            f"advertised:  {', '.join(reply['advertised'])}",
            f"uptime:      {reply['uptime_s']} s",
            f"links:       {reply['links']} ({reply['sync_links']} syncing)",
            f"records:     {reply['records']} (registry {reply.get('registry', 'ok')})",
            f"dht:         {reply['dht']['table_size']} contacts, "
            f"{reply['dht']['records_held']} records held, last successful lookup "
            f"{_ago(reply['dht']['last_successful_lookup'])}",
            f"services:    {reply['services']}  (streams now {reply['streams_owner_active']},"
            f" total {reply['streams_owner_total']})",
            "forwards:",
            table(
                reply["forwards"],
                [
                    "name",
                    "local",
                    "service",
                    "path",
                    "active",
                    "connections",
                    "failures",
                    "last_error",
                ],
            ),
        ]
        retry_cols = ["address", "state", "attempts", "next_retry_s", "last_error"]
        for title, key in (("bootstrap:", "bootstrap"), ("sync peers:", "sync_peers")):
            if reply.get(key):
                lines += [title, table(reply[key], retry_cols)]
        circ = reply.get("circuits", {})
        lines.append(
            f"circuits:    relay {'on' if circ.get('relay') else 'off'}; "
            f"relaying {circ.get('relayed_circuits', 0)}, exit for "
            f"{circ.get('exit_circuits', 0)}, own {circ.get('client_circuits', 0)}"
        )
        lines += _circuit_health(reply["forwards"])
        refusals = reply.get("refusals") or {}
        if refusals:
            lines.append("refused:     " + ", ".join(f"{name} {n}" for name, n in refusals.items()))
        return "\n".join(lines)
    if command == "peers":
        return (
            "links:\n"
            + table(
                reply["links"], ["fingerprint", "address", "direction", "sync", "streams", "rtt_ms"]
            )
            + "\nknown peers:\n"
            + table(reply["known"], ["address", "fingerprint", "rtt_ms"])
            + "\nDHT routing table:\n"
            + table(reply["dht_table"], ["node_id", "address"])
        )
    if command == "relays":
        return table(reply["relays"], ["fingerprint", "address", "uptime_s", "rtt_ms"])
    if command == "services":
        rows = [{**s, "allow": allow_text(s)} for s in reply["services"]]
        return table(rows, ["name", "target", "public", "allow"])
    if command == "forwards":
        cols = ["name", "local", "service", "path", "active", "connections", "failures"]
        listing = table(reply["forwards"], [*cols, "last_error"])
        return "\n".join([listing, *_circuit_health(reply["forwards"])])
    if command == "connect":
        f = reply["forward"]
        setup = reply.get("setup", {})
        if str(f["path"]).startswith("hidden"):
            return (
                f"forwarding {f['local']} -> {f['service']} ({f['path']}; rendezvous "
                f"joined in {setup.get('setup_ms', '?')} ms)"
            )
        return (
            f"forwarding {f['local']} -> {f['service']} ({f['path']}; owner "
            f"{setup.get('owner', '?')}, checked in {setup.get('setup_ms', '?')} ms)"
        )
    if command == "expose":
        s = reply["service"]
        who = allow_text(s)
        return f"exposed {reply['address']} -> {s['target']} (allowed: {who})"
    if command == "resolve":
        head = f"{reply['address']} -> {reply['fingerprint']} ({reply['key']})"
        return head + "\n" + table(reply["records"], ["kind", "subject", "seq", "source"])
    if command == "ping":
        return f"{reply['owner']}: rtt " + " ".join(f"{r} ms" for r in reply["rtt_ms"])
    if command in ("unexpose", "disconnect"):
        return f"removed {reply['removed']}"
    if command == "pins":
        rows = [
            {**p, "pinned": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p["pinned_at"]))}
            for p in reply["pins"]
        ]
        return table(rows, ["name", "fingerprint", "pinned", "key"])
    if command == "unpin":
        return f"unpinned {reply['removed']} (was {reply['fingerprint']})"
    if command == "rotate":
        return f"{reply['name']} now points to {reply['fingerprint']} ({reply['to']})"
    if command == "stop":
        return "stopping"
    if command == "reload":
        restart = reply.get("restart_needed") or []
        note = f"\n{', '.join(restart)} changed: that takes a restart" if restart else ""
        return f"reloaded config.toml: {reply['changes']}{note}"
    return "\n".join(f"{k}: {v}" for k, v in reply.items())


def allow_text(service: dict[str, Any]) -> str:
    """`bob (resolved: FP), carol (not resolved yet)`: who may use a service."""
    if service.get("public"):
        return "everyone"
    status = service.get("allow_status")
    if status is None:  # a node from before allow_status
        return ", ".join(service.get("allow", []))
    shown = []
    for e in status:
        if e["state"] == "key":
            shown.append(f"{e['fingerprint']} (key)")
        elif e["state"] == "unresolved":
            shown.append(f"{e['entry']} (not resolved yet)")
        else:
            shown.append(f"{e['entry']} ({e['state']}: {e['fingerprint']})")
    return ", ".join(shown)
