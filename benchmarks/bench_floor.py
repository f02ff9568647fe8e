"""The floor under bench_forward.py's targets: two native relay processes, no crypto.

Theory of operation. A VX6 forward puts two processes between the application and its
target (the client node and the owner node), so a byte crosses three loopback
connections and wakes two extra processes each way. This script measures that shape
with the leanest native relay there is, `socat` (C, no encryption, no framing): two
socat processes chained between the load client and the same echo and bulk servers
bench_forward.py uses (_load.py), against the direct connection in the same run. What
a chain of two socats cannot reach on this machine, no implementation of the forward's
shape can; docs/benchmarks.md compares the issue's targets with these figures.

socat is optional (`apt install socat`); without it the script says so and exits 0.
Everything is bounded in bytes and time; the socat and server processes are stopped on
exit, error, Ctrl-C or SIGTERM.

Run: `python benchmarks/bench_floor.py [--quick] [--json]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import _load
import _setup  # noqa: F401  (first: makes vx6 importable from a checkout)
from _report import Row, machine_details, percentile, render_table, run_main

MIB = 1024 * 1024
# The targets for the forward (bench_forward.py), held against the chain here.
TARGETS = {"rtt": ("<=", 100.0), "bulk": (">=", 1200.0)}
LISTEN_TIMEOUT = 5.0


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (<15 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeat", type=int, default=None, help="bulk runs, median (5; quick 1)")
    args = parser.parse_args(argv)
    args.mib = 64 if args.quick else 1024
    args.round_trips = 1000 if args.quick else 5000
    args.repeat = args.repeat or (1 if args.quick else 5)
    return args


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _socat(listen: int, target: _load.Addr) -> subprocess.Popen[bytes]:
    """One relay: accept on 127.0.0.1:listen, connect each connection to target."""
    return subprocess.Popen(
        [
            "socat",
            "-b",
            "262144",
            f"TCP-LISTEN:{listen},bind=127.0.0.1,reuseaddr,fork,nodelay",
            f"TCP:{target[0]}:{target[1]},nodelay",
        ],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its group: `fork` children go down with it
    )


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def chain(target: _load.Addr, procs: list[subprocess.Popen[bytes]]) -> _load.Addr:
    """Two socats in a row in front of `target`; returns the first one's address."""
    inner, outer = _free_port(), _free_port()
    procs.append(_socat(inner, target))
    procs.append(_socat(outer, ("127.0.0.1", inner)))
    for port in (inner, outer):
        _wait_listening(port)
    return ("127.0.0.1", outer)


def measure(args: argparse.Namespace, paths: dict[str, dict[str, _load.Addr]]) -> list[Row]:
    rtt: dict[str, list[int]] = {}
    bulk: dict[str, float] = {}
    for name, addrs in paths.items():
        log(f"64-byte round trips: {name}")
        rtt[name] = _load.round_trips(addrs["echo"], args.round_trips, 64)
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(args.repeat):  # alternate, so both columns share the machine's state
        for name, addrs in paths.items():
            log(f"bulk one way: {name} ({i + 1}/{args.repeat})")
            rates[name].append(_load.one_way(addrs["bulk"], args.mib * MIB, 30).mb_per_s)
    bulk = {name: statistics.median(v) for name, v in rates.items()}
    rows = [
        Row(
            f"64-byte round trip p{p}, socat x2 chain",
            "us",
            percentile(rtt["direct"], p) / 1e3,
            percentile(rtt["chain"], p) / 1e3,
            TARGETS["rtt"] if p == 50 else None,
            lower_is_better=True,
        )
        for p in (50, 99)
    ]
    rows.append(
        Row("bulk one way, socat x2 chain", "MB/s", bulk["direct"], bulk["chain"], TARGETS["bulk"])
    )
    return rows


def run(args: argparse.Namespace) -> int:
    if shutil.which("socat") is None:
        log("socat is not installed (apt install socat); nothing to measure")
        return 0
    servers: list[subprocess.Popen[bytes]] = []
    relays: list[subprocess.Popen[bytes]] = []
    try:
        echo_proc, echo = _load.start_server("echo")
        servers.append(echo_proc)
        bulk_proc, bulk = _load.start_server("bulk")
        servers.append(bulk_proc)
        paths = {
            "direct": {"echo": echo, "bulk": bulk},
            "chain": {"echo": chain(echo, relays), "bulk": chain(bulk, relays)},
        }
        rows = measure(args, paths)
    finally:
        for proc in relays:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # socat and its per-connection children
            proc.wait()
        for server in servers:
            _load.stop_server(server)
    report: dict[str, Any] = {
        "machine": machine_details(),
        "rows": [r.as_dict() for r in rows],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        title = "Two native relays (socat, no crypto) vs direct TCP on loopback"
        print(render_table(report["machine"], rows, {}, [], title=title, measured="socat x2"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: run(args), log)


if __name__ == "__main__":
    sys.exit(main())
