"""`vx6 hidden ...`: hidden services and petnames, offline (docs/hidden.md, "CLI and
config").

These commands edit config.toml's `[hidden.NAME]` tables and the home's
`hidden/NAME/` directory, and the registry's petnames; none needs a running node. A
running node picks config changes up on `vx6 reload` (or SIGHUP). `vx6 hidden list`
adds what a running node reports (the control op `hidden`) and says "unknown" where no
node answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from vx6.core.hidden.alias import encode_alias, parse_alias
from vx6.core.hidden.target import (
    MAX_PETNAMES,
    AliasTarget,
    parse_target,
    validate_petname,
)
from vx6.core.names import ServiceAddress
from vx6.crypto.keys import Identity, key_to_text
from vx6.errors import UsageError, VX6Error
from vx6.store.config import load_config
from vx6.store.config_edit import with_hidden_table, without_hidden_table
from vx6.store.hidden_config import HiddenServiceConfig, hidden_service_config
from vx6.store.home import Home
from vx6.store.registry import Registry

NOT_RUNNING = "unknown (node not running)"
NO_LIVE_OP = "unknown (the node does not report hidden services yet)"


def run(args: argparse.Namespace) -> int:
    home = Home(args.home)
    command = args.hidden_command
    if command == "create":
        return _create(home, args)
    if command == "list":
        return _list(home, args.json)
    if command == "remove":
        return _remove(home, args.name, args.yes)
    return _petname_command(home, args)


def alias_of(home: Home, name: str) -> str:
    return encode_alias(Identity(home.hidden_alias_seed(name)).public)


def access_text(svc: HiddenServiceConfig) -> str:
    if svc.public:
        return "everyone with the alias"
    return ", ".join(svc.allow) or "nobody (no allow list)"


def _config_text(home: Home) -> str:
    try:
        return home.config_path.read_text() if home.config_path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {home.config_path}: {exc}") from exc


def _create(home: Home, args: argparse.Namespace) -> int:
    svc = hidden_service_config(
        args.name,
        args.target,
        profile=args.profile,
        allow=args.allow,
        public=args.public,
        allow_remote_target=args.allow_remote_target,
        intro_rate=args.intro_rate,
        intro_burst=args.intro_burst,
    )
    if not svc.public and not svc.allow:
        raise UsageError("a private hidden service needs --allow KEY_OR_NAME (or --public)")
    home.ensure()
    old = load_config(home.config_path).hidden.get(svc.name)
    alias = alias_of(home, svc.name)  # the key first: a rerun after a failure reuses it
    if old != svc:
        text = with_hidden_table(_config_text(home), svc, str(home.config_path))
        home.write_config(text)
    done = "created" if old is None else "updated" if old != svc else "unchanged"
    print(alias)
    print(
        f"hidden service {svc.name} {done}: -> {svc.target}, profile {svc.profile}, allowed: "
        f"{access_text(svc)}. A running node picks it up on `vx6 reload`.",
        file=sys.stderr,
    )
    return 0


def _live(home: Home) -> tuple[str, dict[str, dict[str, Any]]]:
    """What a running node says (the `hidden` control op), by service name."""
    from vx6.net.control import request

    try:
        reply = request(home.safe_control_path(), {"op": "hidden"}, timeout=5.0)
    except VX6Error:
        return NOT_RUNNING, {}
    if not reply.get("ok") or not isinstance(reply.get("hidden"), list):
        return NO_LIVE_OP, {}
    found = {s["name"]: s for s in reply["hidden"] if isinstance(s, dict) and "name" in s}
    return "running", found


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _list(home: Home, as_json: bool) -> int:
    configured = load_config(home.config_path).hidden
    node, live = _live(home) if configured else ("-", {})
    rows = []
    for name, svc in sorted(configured.items()):
        state = home.hidden_state(name)
        rows.append(
            {
                "name": name,
                "alias": alias_of(home, name),
                "profile": svc.profile,
                "target": svc.target,
                "public": svc.public,
                "allow": list(svc.allow),
                "intro_rate": svc.intro_rate,
                "intro_burst": svc.intro_burst,
                "last_revision": state.last_revision,
                "last_published": state.last_published,
                "guards": [
                    {
                        "identity": key_to_text(g.identity),
                        "chosen_at": g.chosen_at,
                        "down_since": g.down_since,
                    }
                    for g in state.guards
                ],
                "live": live.get(name),
            }
        )
    if as_json:
        print(json.dumps({"node": node, "hidden": rows}, indent=2))
        return 0
    if not rows:
        print("(no hidden services; make one with `vx6 hidden create`)")
    for row in rows:
        print(_render(row, configured[str(row["name"])], node))
    return 0


def _render(row: dict[str, Any], svc: HiddenServiceConfig, node: str) -> str:
    live = row["live"]
    unknown = node if live is None else None
    lines = [
        f"{row['name']}: {row['alias']}",
        f"  target:    {row['target']} (profile {row['profile']})",
        f"  allowed:   {access_text(svc)}",
        f"  revision:  {row['last_revision'] or '-'}, "
        f"last published {_when(row['last_published'])}",
    ]
    guards = ", ".join(
        g["identity"][:16] + (" (down)" if g["down_since"] is not None else "")
        for g in row["guards"]
    )
    lines.append(f"  guards:    {guards or 'none chosen yet'}")
    if unknown:
        lines += [f"  intros:    {unknown}", f"  reachable: {unknown}"]
    else:
        intros = ", ".join(
            f"{i.get('relay', '?')[:16]} {i.get('role', '?')} {i.get('state', '?')}"
            for i in live.get("intros", [])
        )
        lines += [f"  intros:    {intros or 'none'}", f"  reachable: {live.get('reachable')}"]
    return "\n".join(lines)


def _remove(home: Home, name: str, yes: bool) -> int:
    text = _config_text(home)
    in_config = name.lower() in load_config(home.config_path).hidden
    if not in_config and not home.hidden_alias_exists(name):
        raise UsageError(f"no hidden service {name!r}")
    alias = alias_of(home, name)
    if not yes:
        raise UsageError(
            f"removing {name} deletes its alias key for good: {alias} can never be reached "
            "again, not even by making it anew. Pass --yes to remove it"
        )
    if in_config:
        edited = without_hidden_table(text, name.lower(), str(home.config_path))
        if edited is not None:
            home.write_config(edited)
    home.remove_hidden(name)
    print(f"removed hidden service {name}; its alias {alias} is gone for good")
    return 0


def _registry(home: Home) -> Registry:
    home.ensure()
    return Registry(home.registry_path)


def _petname_command(home: Home, args: argparse.Namespace) -> int:
    command = args.name_command
    if command == "add":
        petname = validate_petname(args.petname)
        key = parse_alias(args.alias)
        with _registry(home) as reg:
            held = reg.get_petname(petname)
            if held is not None and held != key:
                raise UsageError(
                    f"petname {petname} already names {encode_alias(held)}; remove it first"
                )
            reg.set_petname(petname, key, MAX_PETNAMES)
        print(f"{petname} -> {encode_alias(key)}")
        return 0
    if command == "remove":
        petname = validate_petname(args.petname)
        with _registry(home) as reg:
            if not reg.remove_petname(petname):
                raise UsageError(f"no petname {petname!r}")
        print(f"removed petname {petname}")
        return 0
    with _registry(home) as reg:
        rows = [{"petname": n, "alias": encode_alias(k)} for n, k in reg.petnames()]
    if args.json:
        print(json.dumps({"petnames": rows}, indent=2))
    else:
        print("\n".join(f"{r['petname']}  {r['alias']}" for r in rows) or "(no petnames)")
    return 0


def check_client_target(home: Home, text: str) -> ServiceAddress | AliasTarget:
    """The target `vx6 connect`/`vx6 nc` were given: a service address, or an alias or
    petname (parsed and validated here; the node resolves it again)."""

    def lookup(petname: str) -> bytes | None:
        if not home.registry_path.exists():
            return None
        with Registry(home.registry_path) as reg:
            return reg.get_petname(petname)

    return parse_target(text, lookup)
