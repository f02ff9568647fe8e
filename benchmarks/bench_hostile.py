"""The hostile suite: every attack of the hardening issue at full size (or small with
--quick) against a real node on loopback, beside an honest client, in one table.

    python benchmarks/bench_hostile.py               # full size, about 11-13 minutes
    python benchmarks/bench_hostile.py --quick       # CI size, about 2.5 minutes
    python benchmarks/bench_hostile.py --only loop-stall,fd-streams --json --no-fail

Theory of operation. For each attack a fresh network (`_hostile_net.HostileNet`) comes
up; then three things run at once for the attack's window: the attacker in its own
process (`_attack_kit.py attack NAME`), the honest client in its own process
(`_honest.py`: an echo probe through bob's forward and a fresh handshake with the
victim, each every 0.5 s), and here a thread sampling the victim's /proc. After the
attacker ends, the honest side and the sampler go on for the attack's settle time (so
a leak shows as fds that did not come back). Then the row is judged against the
targets and the network is torn down. Every attack is bounded in count and in time,
and the benchmark kills an attacker that overruns its bound.

Exit status: 0 when every target holds, 1 when one is missed (0 with --no-fail), 2 when
an attack or the setup failed, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _setup  # noqa: F401  (makes vx6 importable from a bare checkout)
from _hostile_checks import (
    HIDDEN_ROWS,
    hidden_checks,
    status_checks,
    status_figures,
    status_note,
    status_snapshot,
    wants_status,
)
from _hostile_net import (
    KIT,
    HostileNet,
    Sampler,
    fd_count,
    log,
    log_lines_since,
    log_size,
    nofile_soft,
)
from _report import machine_details, percentile, run_main

from vx6.app.localnet import LocalNet
from vx6.crypto.keys import Identity, fingerprint
from vx6.net.addresses import parse_endpoint

HERE = Path(__file__).resolve().parent
HONEST_INTERVAL = 0.5
HONEST_TIMEOUT = 5.0
OVERRUN = 30.0  # seconds past its bound before an attacker is killed
TARGETS = {
    "honest_ok_pct": 99.0,  # at least
    "handshake_p99_ms": 1000.0,  # at most
    "rss_mb": 150.0,  # at most (MB = 10^6 bytes)
    "log_lines_per_s": 1.0,  # at most, on average over the window
    "fd_leak": 16,  # at most this many fds more after the settle time than before
    "amplification": 1.0,  # at most (reply bytes / request bytes, unproved source)
}
QUICK_LOG_ALLOWANCE = 40  # lines: a short window also holds each category's first burst


@dataclass
class Attack:
    number: int
    name: str
    what: str
    quick: dict[str, Any] = field(default_factory=dict)
    full: dict[str, Any] = field(default_factory=dict)
    settle: float = 1.0
    circuit: bool = False  # honest traffic through a one-relay circuit via the victim
    hidden: bool = False  # the victim hosts a hidden service over 5 more relays


ATTACKS = [
    Attack(1, "stream-setup", "links die during stream setup (slow target)",
           {"links": 2, "opens": 50, "hold": 1.0, "rounds": 1, "seconds": 2.5},
           {"links": 5, "opens": 200, "hold": 2.0, "rounds": 3, "seconds": 12}, settle=7.0),
    Attack(2, "link-fill", "link table filled by fresh keys + slowloris",
           {"links": 120, "slowloris": 20, "ping_every": 10, "concurrency": 16, "seconds": 5},
           {"links": 1024, "slowloris": 200, "ping_every": 10, "concurrency": 32,
            "seconds": 60}),
    Attack(3, "loop-stall", "one link PINGs flat out, never reads",
           {"seconds": 4}, {"seconds": 30}),
    Attack(4, "never-reading", "requests with replies, never read",
           {"links": 3, "seconds": 4}, {"links": 20, "seconds": 30}),
    Attack(5, "idle-sockets", "idle TCP connections held",
           {"count": 200, "concurrency": 100, "seconds": 4},
           {"count": 1000, "concurrency": 200, "seconds": 60}),
    Attack(6, "registry-flood", "valid records from fresh keys (sync + DHT)",
           {"records": 3000, "links": 2, "per_link": 3000, "dht_stores": 10, "seconds": 5},
           {"records": 40000, "links": 10, "per_link": 3500, "dht_stores": 100,
            "seconds": 60}),
    Attack(7, "circuit-fill", "circuit table filled with idle circuits",
           {"circuits": 400, "per_link": 40, "seconds": 5},
           {"circuits": 8192, "per_link": 40, "seconds": 60}, circuit=True),
    Attack(8, "log-flood", "junk, refusals and destroys to flood the log",
           {"rate": 10, "max_ops": 400, "seconds": 4},
           {"rate": 20, "max_ops": 10000, "seconds": 60}),
    Attack(9, "fd-streams", "many streams to a public service (EMFILE)",
           {"links": 2, "streams": 600, "seconds": 4},
           {"links": 5, "streams": 1000, "seconds": 30}),
    Attack(10, "-", "finding 10", settle=0),
    Attack(11, "-", "finding 11", settle=0),
    Attack(12, "dht-amplification", "DHT answers from unproved sources",
           {"requests": 20, "seconds": 3}, {"requests": 200, "seconds": 25}),
    Attack(13, "-", "finding 13", settle=0),
    Attack(14, "-", "finding 14", settle=0),
    Attack(15, "dump-spam", "2-byte RECORDS frames asking for sync dumps",
           {"seed": 500, "reconnects": 20, "frames": 20, "seconds": 4},
           {"seed": 2000, "reconnects": 300, "frames": 100, "seconds": 45}),
    Attack(16, "unknown-cells", "CELLS for circuits that do not exist",
           {"links": 1, "max_cells": 20000, "seconds": 4},
           {"links": 3, "max_cells": 400000, "seconds": 30}),
    Attack(17, "relay-directory-flood", "relay records from fresh keys STOREd as directory",
           {"records": 160, "unlisted": 30, "sources": 8, "probes": 40, "seconds": 4},
           {"records": 4000, "unlisted": 1000, "sources": 16, "probes": 60, "seconds": 30}),
    Attack(18, "allow-nudge", "refused streams nudging an unresolved allow name",
           {"links": 8, "opens": 200, "rate": 40, "seconds": 3},
           {"links": 50, "opens": 1200, "rate": 40, "seconds": 30}),
    Attack(19, "intro-registrations", "ESTABLISH_INTRO from fresh auth keys, per source",
           {"sources": 17, "per_source": 68, "seconds": 4},
           {"sources": 40, "per_source": 100, "seconds": 15}),
    Attack(20, "rendezvous-cookies", "ESTABLISH_RENDEZVOUS with fresh cookies, per source",
           {"sources": 2, "per_source": 262, "hold": 0, "seconds": 14},
           {"sources": 17, "per_source": 262, "hold": 31, "seconds": 50}),
    Attack(21, "intro-flood", "INTRODUCE1 flood for one registered intro",
           {"rate": 5, "burst": 10, "flooders": 2, "circuits": 8, "introductions": 1600,
            "seconds": 3},
           {"rate": 25, "burst": 200, "flooders": 8, "circuits": 16, "introductions": 20000,
            "seconds": 30}),
    Attack(22, "descriptor-storage", "bad descriptors STOREd at a DHT node",
           {"rounds": 6, "seconds": 4}, {"rounds": 100, "seconds": 40}),
    Attack(23, "introduction-replay", "replayed INTRODUCE2, reused cookie, build flood",
           {"replays": 5, "reuses": 5, "flood": 80, "seconds": 10},
           {"replays": 40, "reuses": 40, "flood": 100, "refill": 5, "seconds": 30},
           hidden=True),
]  # fmt: skip


def _spawn(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _result(proc: subprocess.Popen[str], bound: float, what: str) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"error": f"{what} overran its bound of {bound:.0f} s and was killed"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"{what} exited {proc.returncode}: {err.strip()[-600:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_attack(attack: Attack, quick: bool, keep: bool) -> dict[str, Any]:
    params = attack.quick if quick else attack.full
    seconds = float(params["seconds"])
    window = seconds + attack.settle
    with (
        LocalNet(keep=keep) as net,
        HostileNet(net, circuit=attack.circuit, hidden=attack.hidden) as hn,
    ):
        if keep:
            log(f"{attack.name}: node homes and logs in {net.base}")
        hn.build()
        victim = hn.victim
        pid = victim.process.pid
        spec = {"target": hn.target_spec(), "params": params}
        honest_key = os.urandom(32)
        honest_host, honest_port = parse_endpoint(hn.honest_listen)
        honest_spec = {
            "identity": honest_key.hex(),
            "host": honest_host,
            "port": honest_port,
            "probe_port": hn.probe_port,
            "seconds": window,
            "interval": HONEST_INTERVAL,
            "timeout": HONEST_TIMEOUT,
        }
        fds_before = fd_count(pid) or 0
        log_offset = log_size(victim.log_path)
        registry_before = hn.registry_bytes()
        reads_status = wants_status(attack.name)
        status_before = status_snapshot(victim) if reads_status else None
        sampler = Sampler(pid)
        sampler.start()
        started = time.monotonic()
        honest = _spawn([str(HERE / "_honest.py"), json.dumps(honest_spec)])
        attacker = _spawn([str(KIT), "attack", attack.name, json.dumps(spec)])
        achieved = _result(attacker, seconds + OVERRUN, "the attacker")
        honest_result = _result(honest, window + HONEST_TIMEOUT + OVERRUN, "the honest client")
        hidden_probe = hn.hidden_probe() if attack.hidden else None
        elapsed = time.monotonic() - started
        cpu = sampler.stop()
        all_lines, lines = log_lines_since(
            victim.log_path, log_offset, fingerprint(Identity(honest_key).public)
        )
        row = {
            "number": attack.number,
            "attack": attack.name,
            "what": attack.what,
            "params": params,
            "window_s": round(elapsed, 1),
            "victim_alive": victim.process.poll() is None and not sampler.died,
            "rss_peak_mb": round(sampler.rss_kib * 1024 / 1e6, 1),
            "fds_before": fds_before,
            "fds_peak": sampler.fds,
            "fds_after": fd_count(pid),
            "nofile_soft": nofile_soft(pid),
            "log_lines": lines,
            "log_lines_with_honest": all_lines,
            "log_lines_per_s": round(lines / elapsed, 2),
            "victim_cpu_s": round(cpu, 2),
            "registry_growth_bytes": hn.registry_bytes() - registry_before,
            "achieved": achieved,
            "honest": honest_result,
        }
        if hidden_probe is not None:
            row["hidden_probe"] = hidden_probe
        if reads_status:
            after = status_snapshot(victim) if row["victim_alive"] else None
            row["victim_status"] = status_figures(attack.name, status_before, after)
        if attack.name == "registry-flood" and row["victim_alive"]:
            reply = victim.try_call("status")
            row["registry_records"] = reply.get("records") if reply.get("ok") else None
    return row


def judge(row: dict[str, Any], quick: bool) -> dict[str, bool]:
    honest = row["honest"]
    checks: dict[str, bool] = {"victim alive": row["victim_alive"]}
    if "error" in honest or "error" in row["achieved"]:
        checks["ran"] = False
        return checks
    ok_pct = 100.0 * honest["probes_ok"] / max(1, honest["probes"])
    p99 = percentile(honest["handshake_ms"], 99) if honest["handshake_ms"] else HONEST_TIMEOUT * 1e3
    row["honest_ok_pct"], row["handshake_p99_ms"] = round(ok_pct, 1), round(p99, 1)
    probes = honest["probe_ok_ms"]
    row["probe_p99_ms"] = round(percentile(probes, 99), 1) if probes else None
    row["handshake_ok_pct"] = round(
        100.0 * honest["handshakes_ok"] / max(1, honest["handshakes"]), 1
    )
    checks["honest ok"] = ok_pct >= TARGETS["honest_ok_pct"]
    checks["handshake p99"] = p99 <= TARGETS["handshake_p99_ms"]
    checks["rss"] = row["rss_peak_mb"] <= TARGETS["rss_mb"]
    cap = row["nofile_soft"] or 1 << 30
    leak = (row["fds_after"] or 0) - row["fds_before"]
    checks["fds"] = row["fds_peak"] < cap and leak <= TARGETS["fd_leak"]
    allowance = QUICK_LOG_ALLOWANCE if quick else 0
    checks["log"] = row["log_lines"] <= TARGETS["log_lines_per_s"] * row["window_s"] + allowance
    if row["attack"] == "dht-amplification":
        worst = row["achieved"].get("amplification_worst")
        checks["amplification"] = worst is not None and worst <= TARGETS["amplification"]
    if "victim_status" in row:
        checks.update(status_checks(row))
    if "hidden_probe" in row:
        checks["hidden client"] = bool(row["hidden_probe"].get("ok"))
    if row["attack"] in HIDDEN_ROWS:
        checks.update(hidden_checks(row, row["params"]))
    return checks


def note(row: dict[str, Any]) -> str:
    a = row["achieved"]
    if "error" in a:
        return str(a["error"])[:60]
    parts = [f"cpu {row['victim_cpu_s']} s", f"fds after {row['fds_after']}"]
    picks = {
        "link-fill": ("links_up", "closed_by_victim", "slowloris_connects"),
        "registry-flood": ("records_sent", "dht_stored"),
        "circuit-fill": ("creates_sent", "cells_in_CREATED", "cells_in_DESTROY"),
        "dht-amplification": ("amplification_find_node", "amplification_find_value"),
        "dump-spam": ("dumps", "record_bytes_in"),
        "loop-stall": ("send_rate_kB_s", "closed_by_victim"),
        "fd-streams": ("streams_opened", "streams_refused"),
        "stream-setup": ("opens", "streams_opened"),
        "unknown-cells": ("cells_sent", "closed_by_victim"),
        "relay-directory-flood": (
            "listed_sent",
            "listed_stored",
            "unlisted_sent",
            "honest_relay_seen_after",
        ),
        "allow-nudge": ("opens", "refused_NOT_ALLOWED"),
        "intro-registrations": (
            "circuits_built",
            "registered_total",
            "registered_per_source_max",
            "answer_DESTROY_RESOURCE_LIMIT",
        ),
        "rendezvous-cookies": (
            "circuits_built",
            "registered_total",
            "registered_per_source_max",
            "answer_DESTROY_RESOURCE_LIMIT",
        ),
        "descriptor-storage": ("served_honest", "victim_dht_added"),
        "introduction-replay": ("replay_phase", "flood_phase", "builds_under_way_after_flood"),
        "intro-flood": (
            "introductions_sent",
            "introduce2_at_service",
            "forward_bound",
            "acks_rate_limited",
        ),
    }.get(row["attack"], ("closed_by_victim",))
    parts += [f"{k} {a[k]}" for k in picks if k in a]
    parts += status_note(row)
    if "hidden_probe" in row:
        parts.append(f"hidden client {row['hidden_probe']}")
    if "registry_records" in row:
        parts.append(f"registry {row['registry_records']} records")
    if row["registry_growth_bytes"] > 1 << 20:
        parts.append(f"registry +{row['registry_growth_bytes'] / 1e6:.1f} MB")
    return ", ".join(parts)


COLUMNS = (
    "#", "attack", "honest ok %", "probe p99 ms", "hs p99 ms", "RSS MB", "fds peak/cap",
    "log/s", "result",
)  # fmt: skip


def render(rows: list[dict[str, Any]]) -> str:
    table = [COLUMNS]
    for r in rows:
        if r.get("skipped"):
            table.append((str(r["number"]), r["attack"], *["-"] * 6, r["result"]))
            continue
        table.append((
            str(r["number"]), r["attack"], str(r.get("honest_ok_pct", "-")),
            str(r.get("probe_p99_ms", "-")), str(r.get("handshake_p99_ms", "-")),
            str(r["rss_peak_mb"]), f"{r['fds_peak']}/{r['nofile_soft']}",
            str(r["log_lines_per_s"]), r["result"],
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("")
    out += [f"{r['number']:>2} {r['attack']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (CI)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even if a target fails")
    parser.add_argument("--only", default="", help="comma-separated attack names")
    parser.add_argument("--nofile", type=int, default=1024, help="nodes' RLIMIT_NOFILE soft")
    parser.add_argument("--keep", action="store_true", help="keep node homes and logs")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The nodes inherit this soft limit (a common default); attackers and targets lift theirs.
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(args.nofile, hard), hard))
    only = {n for n in args.only.split(",") if n}
    unknown = only - {a.name for a in ATTACKS}
    if unknown:
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    failed = False
    started = time.monotonic()
    machine = machine_details()
    for attack in ATTACKS:
        if attack.name == "-":
            if not only:
                rows.append({"number": attack.number, "attack": attack.what,
                             "skipped": True, "result": "n/a (unit-tested)"})  # fmt: skip
            continue
        if only and attack.name not in only:
            continue
        log(f"{attack.number} {attack.name}: {'quick' if args.quick else 'full'} size")
        try:
            row = run_attack(attack, args.quick, args.keep)
        except Exception as exc:  # the setup failed: say so, go on with the next attack
            errors.append(f"{attack.name}: {exc}")
            rows.append({"number": attack.number, "attack": attack.name, "skipped": True,
                         "result": "ERROR (setup)"})  # fmt: skip
            continue
        checks = judge(row, args.quick)
        row["checks"] = checks
        missed = [k for k, ok in checks.items() if not ok]
        row["result"] = "pass" if not missed else "FAIL: " + ", ".join(missed)
        row["note"] = note(row)
        failed |= bool(missed)
        for side in ("achieved", "honest"):
            if "error" in row[side]:
                errors.append(f"{attack.name}: {row[side]['error']}")
        log(f"{attack.number} {attack.name}: {row['result']} ({row['window_s']} s)")
        rows.append(row)
    report = {
        "mode": "quick" if args.quick else "full",
        "targets": TARGETS,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine,
        "rows": rows,
        "errors": errors,
    }
    print(json.dumps(report, indent=2) if args.json else render(rows))
    if errors:
        return 2
    return 1 if failed and not args.no_fail else 0


if __name__ == "__main__":
    sys.exit(run_main(main, log))
