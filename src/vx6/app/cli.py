"""The `vx6` command line. Every command but `run`, `init`, `id` and `demo` talks to the
running node over its control socket; every listing also speaks JSON (`--json`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from vx6 import __version__
from vx6.errors import UsageError, VX6Error

EXIT_ERROR = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vx6", description="Reach localhost services over VX6.")
    p.add_argument("--version", action="version", version=f"vx6 {__version__}")
    p.add_argument(
        "--home",
        type=Path,
        help="node home directory (default: $VX6_HOME or the platform data directory)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_text: str, json_flag: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print JSON")
        return sp

    sp = cmd("init", "create this node's identity (also automatic on first use)", True)
    sp.add_argument("--name", help="the name to claim, e.g. alice")
    cmd("id", "print this node's name, key and fingerprint", True)
    sp = cmd(
        "run",
        "run the node in the foreground (logs to stderr; SIGTERM stops it, SIGHUP reloads "
        "config.toml)",
    )
    sp.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="ADDR:PORT",
        help="listen address or host name (default [::]:4242, dual-stack; "
        "localhost: ::1 and 127.0.0.1); repeatable",
    )
    sp.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="ADDR:PORT",
        help="a live node to sync records with; repeatable",
    )
    sp.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="ADDR:PORT",
        help="any live node, for first contact with the DHT; repeatable",
    )
    sp.add_argument(
        "--advertise",
        action="append",
        default=[],
        metavar="ADDR:PORT",
        help="address to publish instead of the detected ones; repeatable",
    )
    sp.add_argument("--name", help="the name to claim, e.g. alice")
    sp.add_argument("--relay", action="store_true", help="offer to relay for others")
    sp.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sp = cmd("expose", "publish a local service", True)
    sp.add_argument("name", help="service name, e.g. ssh")
    sp.add_argument("--target", required=True, metavar="HOST:PORT", help="e.g. 127.0.0.1:22")
    sp.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="KEY_OR_NAME",
        help="a client key or name allowed to connect; repeatable",
    )
    sp.add_argument("--public", action="store_true", help="allow every key (explicit choice)")
    sp.add_argument(
        "--allow-remote-target",
        action="store_true",
        help="permit a target that is not a loopback address",
    )
    sp = cmd("unexpose", "withdraw a service")
    sp.add_argument("name")
    cmd("services", "list this node's services", True)
    sp = cmd("connect", "forward a local port to a service", True)
    sp.add_argument("service", help="OWNER.SERVICE (e.g. alice.ssh), an alias or a petname")
    sp.add_argument("--local", required=True, metavar="[ADDR:]PORT", help="local port (0: any)")
    sp.add_argument("--via", metavar="ADDR:PORT", help="owner's endpoint: direct mode, no lookup")
    sp.add_argument("--name", help="name of the forward (default: the service address)")
    sp.add_argument(
        "--hops", type=int, default=0, metavar="N", help="relay proxy mode through N relays (1-5)"
    )
    sp.add_argument(
        "--relay-fallback",
        type=int,
        default=0,
        metavar="N",
        help="direct, but through N relays when the owner cannot be reached directly",
    )
    sp.add_argument("--profile", choices=("fast", "balanced"), help="hidden service path")
    sp = cmd("disconnect", "remove a forward")
    sp.add_argument("name", help="forward name or local port")
    cmd("forwards", "list forwards", True)
    sp = cmd("nc", "pipe stdin/stdout to a service (ssh ProxyCommand)")
    sp.add_argument("service", help="OWNER.SERVICE, an alias or a petname")
    sp.add_argument("--via", metavar="ADDR:PORT", help="owner's endpoint: direct mode")
    sp.add_argument("--hops", type=int, default=0, metavar="N", help="through N relays (1-5)")
    sp.add_argument("--profile", choices=("fast", "balanced"), help="hidden service path")
    cmd("status", "show the node's state", True)
    cmd("peers", "show links and known peers", True)
    cmd("relays", "list the relays route planning can use", True)
    sp = cmd("resolve", "show what the registry knows about an address", True)
    sp.add_argument("address")
    sp = cmd("ping", "measure the round trip to an owner's node", True)
    sp.add_argument("owner", help="OWNER or OWNER.SERVICE")
    sp.add_argument("--count", type=int, default=3)
    sp = cmd("rotate", "hand this node's name to a new key (signed by this key)", True)
    sp.add_argument("to", help="the new owner key (52 characters, from `vx6 id` there)")
    cmd("pins", "list the owner keys pinned for names (like ssh's known_hosts)", True)
    sp = cmd("unpin", "forget the key pinned for a name (the next connection pins afresh)", True)
    sp.add_argument("name", help="the owner name, e.g. alice")
    cmd("stop", "stop the running node")
    cmd("reload", "apply config.toml's service and forward changes (as SIGHUP does)", True)
    from vx6.app.hidden_args import add_parser as add_hidden_parser

    add_hidden_parser(sub)
    sp = cmd("demo", "run a local multi-node network and exercise every mode", True)
    sp.add_argument("--mib", type=int, default=64, help="MiB moved per throughput row")
    sp = cmd("unit", "print (or install) a systemd user unit that runs this node")
    sp.add_argument(
        "--install", action="store_true", help="write it to ~/.config/systemd/user/vx6.service"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except UsageError as exc:
        print(f"vx6: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except VX6Error as exc:
        print(f"vx6: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _home(args: argparse.Namespace) -> Any:
    from vx6.store.home import Home

    return Home(args.home)


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "run":
        return _run(args)
    if command in ("init", "id"):
        return _init_or_id(args)
    if command == "demo":
        from vx6.app.demo import run_demo

        return run_demo(mib=args.mib, as_json=args.json)
    if command == "unit":
        return _unit(args)
    if command == "nc":
        return _nc(args)
    if command == "hidden":
        from vx6.app.hidden_cli import run as run_hidden

        return run_hidden(args)
    return _control_command(args)


def _run(args: argparse.Namespace) -> int:
    from vx6.app.run import run_node
    from vx6.app.startlog import StartupLog
    from vx6.core.names import validate_label
    from vx6.net.addresses import parse_endpoint
    from vx6.store.config import DEFAULT_PORT, NodeConfig

    # Held until the node is up: a run that cannot start prints one line (app/startlog.py).
    startlog = StartupLog(sys.stderr, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.basicConfig(level=args.log_level.upper(), handlers=[startlog])
    try:
        cfg = NodeConfig(
            name=validate_label(args.name, "name") if args.name else None,
            listen=[parse_endpoint(x, DEFAULT_PORT) for x in args.listen],
            peers=[parse_endpoint(x, DEFAULT_PORT) for x in args.peer],
            bootstrap=[parse_endpoint(x, DEFAULT_PORT) for x in args.bootstrap],
            advertise=[parse_endpoint(x) for x in args.advertise],
            relay=args.relay,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return run_node(args.home, cfg, startlog)


def _init_or_id(args: argparse.Namespace) -> int:
    from vx6.core.names import validate_label
    from vx6.crypto.keys import fingerprint, key_to_text
    from vx6.store.registry import Registry

    home = _home(args)
    created = not home.exists()
    identity = home.identity()
    home.link_key()
    home.onion_key()
    with Registry(home.registry_path) as reg:
        if args.command == "init" and args.name:
            reg.set_meta("name", validate_label(args.name, "name"))
        name = reg.get_meta("name")
    info = {
        "name": name,
        "key": key_to_text(identity.public),
        "fingerprint": fingerprint(identity.public),
        "home": str(home.path),
        "created": created,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        if args.command == "init":
            print("created a new identity" if created else "identity already exists")
        print(
            f"name:        {name or '-'}\nkey:         {info['key']}\n"
            f"fingerprint: {info['fingerprint']}\nhome:        {home.path}"
        )
    return 0


# `connect` waits for the first path: to a hidden service that is one or two attempts of
# up to 45 s each (docs/hidden.md section 7), so the default 30 s would cut it short.
CONNECT_REPLY_TIMEOUT = 120.0


def _request(args: argparse.Namespace, message: dict[str, Any]) -> dict[str, Any]:
    from vx6.net.control import request

    timeout = CONNECT_REPLY_TIMEOUT if message.get("op") == "connect" else 30.0
    reply = request(_home(args).safe_control_path(), message, timeout=timeout)
    if not reply.get("ok"):
        code = reply.get("code")
        raise VX6Error(str(reply.get("error")) + (f" [{code}]" if code else ""))
    return reply


def _control_command(args: argparse.Namespace) -> int:
    c = args.command
    msg: dict[str, Any] = {"op": c}
    if c == "expose":
        msg.update(
            name=args.name,
            target=args.target,
            allow=args.allow,
            public=args.public,
            allow_remote_target=args.allow_remote_target,
        )
        _validate_expose(args)
    elif c in ("unexpose", "disconnect", "unpin"):
        msg["name"] = args.name
    elif c == "connect":
        _check_client_target(args)
        msg.update(
            service=args.service,
            local=args.local,
            via=args.via,
            name=args.name,
            hops=args.hops,
            relay_fallback=args.relay_fallback,
            profile=args.profile or "",
        )
        _validate_connect(args)
    elif c == "resolve":
        msg["address"] = args.address
    elif c == "ping":
        msg.update(address=args.owner, count=args.count)
    elif c == "rotate":
        msg["to"] = args.to
    reply = _request(args, msg)
    reply.pop("ok", None)
    if getattr(args, "json", False):
        print(json.dumps(reply, indent=2))
        return 0
    from vx6.app.format import render

    print(render(c, reply))
    return 0


def _validate_expose(args: argparse.Namespace) -> None:
    from vx6.store.config import service_config

    service_config(args.name, args.target, args.allow, args.public, args.allow_remote_target)
    if not args.public and not args.allow:
        raise UsageError("a private service needs --allow KEY_OR_NAME (or --public)")


def _check_client_target(args: argparse.Namespace) -> None:
    """An alias or a petname is parsed here, so its error is the answer at once."""
    if "." in args.service:  # a service address (parse_target agrees): no hidden code
        return
    from vx6.app.hidden_cli import check_client_target

    check_client_target(_home(args), args.service)


def _validate_connect(args: argparse.Namespace) -> None:
    from vx6.store.config import forward_config

    forward_config(
        args.name or args.service,
        args.service,
        args.local,
        args.via,
        hops=args.hops,
        relay_fallback=args.relay_fallback,
        profile=args.profile or "",
    )


def _nc(args: argparse.Namespace) -> int:
    from vx6.core.names import parse_service_address
    from vx6.net.control import read_line
    from vx6.store.config import MAX_RELAYS
    from vx6.wire.control import decode_message, encode_message

    hidden = "." not in args.service
    _check_client_target(args)
    if not hidden:
        parse_service_address(args.service)
    elif args.via or args.hops:
        raise UsageError("a hidden service is reached by --profile, not --via or --hops")
    if args.profile and not hidden:
        raise UsageError("--profile is for hidden services (an alias or a petname)")
    if args.via:
        from vx6.net.addresses import parse_endpoint

        try:
            parse_endpoint(args.via)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    target = args.service + (f"@{args.via}" if args.via else "")
    path = _home(args).safe_control_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        raise VX6Error(f"no node is running with home {path.parent}") from exc
    if not 0 <= args.hops <= MAX_RELAYS or (args.hops and args.via):
        raise UsageError(f"--hops must be 1..{MAX_RELAYS} relays, and not with --via")
    request = {"op": "nc", "target": target, "hops": args.hops, "profile": args.profile or ""}
    sock.sendall(encode_message(request))
    reply = decode_message(read_line(sock))
    if not reply.get("ok"):
        code = reply.get("code")
        raise VX6Error(f"{reply.get('error')}" + (f" [{code}]" if code else ""))

    def upstream() -> None:
        try:
            while chunk := os.read(0, 65536):
                sock.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    while chunk := sock.recv(65536):
        view = memoryview(chunk)
        while view:
            view = view[os.write(1, view) :]
    return 0


def _unit(args: argparse.Namespace) -> int:
    home = _home(args)
    exe = Path(sys.argv[0]).resolve()
    unit = f"""[Unit]
Description=VX6 node ({home.path})
After=network-online.target
Wants=network-online.target

[Service]
ExecStart={exe} --home {home.path} run
# `systemctl reload`: config.toml's services and forwards change, live connections stay.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
# Every link and forwarded connection is a file descriptor (the node raises its soft
# limit to this hard one at start).
LimitNOFILE=65536
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ReadWritePaths={home.path}

[Install]
WantedBy=default.target
"""
    if not args.install:
        print(unit, end="")
        return 0
    target = Path.home() / ".config" / "systemd" / "user" / "vx6.service"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(unit)
    print(f"wrote {target}\nenable it with: systemctl --user enable --now vx6")
    return 0
