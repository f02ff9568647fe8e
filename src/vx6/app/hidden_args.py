"""The arguments of `vx6 hidden ...` (app/hidden_cli.py runs them). Kept free of VX6
imports: every `vx6` command builds the whole parser, and `vx6 nc` (an ssh
ProxyCommand) should not pay for the hidden-service code. The constants repeat
vx6/core/hidden/target.py's; tests/unit/test_hidden_cli.py checks they agree."""

from __future__ import annotations

from typing import Any

PROFILES = ("fast", "balanced")
DEFAULT_PROFILE = "fast"
INTRO_RATE = 25
INTRO_BURST = 200


def add_parser(sub: Any) -> None:
    """The `hidden` command and its subcommands, on the top-level subparsers."""
    top = sub.add_parser("hidden", help="hidden services, reached by an alias (offline)")
    cmds = top.add_subparsers(dest="hidden_command", required=True, metavar="SUBCOMMAND")
    sp = cmds.add_parser("create", help="make (or update) a hidden service; prints its alias")
    sp.add_argument("name", help="a local label for it, e.g. web")
    sp.add_argument("--target", required=True, metavar="HOST:PORT", help="e.g. 127.0.0.1:8080")
    sp.add_argument("--profile", choices=PROFILES, default=DEFAULT_PROFILE)
    sp.add_argument("--allow", action="append", default=[], metavar="KEY_OR_NAME")
    sp.add_argument("--public", action="store_true", help="anyone with the alias may connect")
    sp.add_argument("--allow-remote-target", action="store_true")
    sp.add_argument("--intro-rate", type=int, default=INTRO_RATE, metavar="N")
    sp.add_argument("--intro-burst", type=int, default=INTRO_BURST, metavar="N")
    sp = cmds.add_parser("list", help="list hidden services")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp = cmds.add_parser("remove", help="delete a hidden service and its alias key for good")
    sp.add_argument("name")
    sp.add_argument("--yes", action="store_true", help="yes, the alias is gone for good")
    names = cmds.add_parser("name", help="petnames: your own names for aliases")
    ncmds = names.add_subparsers(dest="name_command", required=True, metavar="SUBCOMMAND")
    sp = ncmds.add_parser("add", help="name an alias")
    sp.add_argument("petname")
    sp.add_argument("alias")
    sp = ncmds.add_parser("remove", help="forget a petname")
    sp.add_argument("petname")
    sp = ncmds.add_parser("list", help="list petnames")
    sp.add_argument("--json", action="store_true", help="print JSON")
