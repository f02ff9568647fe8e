"""Benchmark a named-direct VX6 forward on loopback against a direct connection.

Theory of operation. One run starts two target servers in their own processes (an echo
and a bulk sink/source, see _load.py) and a three-node network with vx6.app.localnet: a hub,
an owner `alice` that exposes both targets (private, allowing `bob`) and a client `bob`
that connects a local forward to each by name. Every measurement is taken twice in a row,
once straight to the target and once through bob's forward, so the two columns share the
machine state. Node RSS is read from /proc; CPU use of every process during the bulk runs
comes from /proc/PID/stat. Everything is bounded by byte budgets, time limits and
socket timeouts, and the nodes and servers are stopped on the way out, also on error,
Ctrl-C or SIGTERM.

Run: `python benchmarks/bench_forward.py [--quick] [--json] [--mib N] [--profile DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _load
import _setup  # noqa: F401  (first: makes vx6 importable from a checkout)
from _report import (
    CpuMeter,
    Profiler,
    Row,
    machine_details,
    node_event_loop,
    percentile,
    proc_status_kib,
    render_table,
    reset_peak_rss,
    run_main,
)

from vx6.app.localnet import LocalNet, LocalNode, wait_for

MIB = 1 << 20
SETUP_TIMEOUT = 20.0
IDLE_PAUSE = 1.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a CI smoke run (<30 s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--mib", type=int, help="bulk bytes per run in MiB (1024; quick 64)")
    p.add_argument("--round-trips", type=int, help="64-byte echo round trips (5000; quick 1000)")
    p.add_argument("--connections", type=int, help="new connections timed (300; quick 100)")
    p.add_argument("--parallel", type=int, default=32, help="parallel connections (32)")
    p.add_argument("--repeat", type=int, help="runs of each bulk figure, median shown (5; quick 1)")
    p.add_argument("--limit", type=float, help="max seconds per bulk run (30; quick 5)")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the client and owner nodes during vx6 bulk one way",
    )
    p.add_argument(
        "--event-loop",
        choices=("auto", "asyncio", "uvloop"),
        help="the nodes' event loop (sets VX6_EVENT_LOOP for them; default: as inherited)",
    )
    p.add_argument("--keep", action="store_true", help="keep the node homes and logs")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    quick = args.quick
    args.mib = args.mib or (64 if quick else 1024)
    args.round_trips = args.round_trips or (1000 if quick else 5000)
    args.connections = args.connections or (100 if quick else 300)
    args.repeat = args.repeat or (1 if quick else 5)
    args.limit = args.limit or (5.0 if quick else 30.0)
    return args


# ---------------------------------------------------------------------------- setup
def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def build_network(net: LocalNet, echo: _load.Addr, bulk: _load.Addr) -> dict[str, Any]:
    hub = net.start("hub")
    alice = net.start("alice", peers=(hub.listen,))
    bob = net.start("bob", peers=(hub.listen,))
    # The owner resolves --allow names when exposing, so wait until it knows bob.
    wait_for(
        lambda: alice.try_call("resolve", address="bob.any").get("ok"),
        SETUP_TIMEOUT,
        "alice to learn bob's name",
    )
    for name, (host, port) in (("echo", echo), ("bulk", bulk)):
        alice.call("expose", name=name, target=f"{host}:{port}", allow=["bob"])
    forwards: dict[str, _load.Addr] = {}
    setup_ms: dict[str, Any] = {}
    for name in ("echo", "bulk"):
        reply = wait_for(
            lambda n=name: _try_connect(bob, n), SETUP_TIMEOUT, f"bob to connect alice.{name}"
        )
        host, port = reply["forward"]["local"].rsplit(":", 1)
        forwards[name] = (host, int(port))
        setup_ms[name] = reply.get("setup", {}).get("setup_ms")
    return {"alice": alice, "bob": bob, "forwards": forwards, "setup_ms": setup_ms}


def _try_connect(bob: LocalNode, service: str) -> dict[str, Any] | None:
    reply = bob.try_call("connect", service=f"alice.{service}", name=service, local="0")
    return reply if reply.get("ok") else None


# ---------------------------------------------------------------------------- phases
class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        targets: dict[str, _load.Addr],
        forwards: dict[str, _load.Addr],
        pids: dict[str, int],
    ) -> None:
        self.args = args
        self.paths = {"direct": targets, "vx6": forwards}
        self.pids = pids
        self.rows: list[Row] = []
        self.details: dict[str, Any] = {}
        self.errors: list[str] = []

    def both(
        self,
        label: str,
        run: Callable[[dict[str, _load.Addr]], Any],
        repeat: int = 1,
        meter: bool = False,
    ) -> dict[str, list[Any]]:
        """Run `repeat` times per path; a failed repeat is an error, the others still count."""
        results: dict[str, list[Any]] = {}
        for path, addrs in self.paths.items():
            log(f"{label}: {path}" + (f" x{repeat}" if repeat > 1 else ""))
            wanted = meter and path == "vx6" and label == "bulk one way"
            profiler = Profiler(self.args.profile if wanted else None, self._node_pids())
            with profiler, CpuMeter(self.pids) as cpu:
                results[path] = []
                for _ in range(repeat):
                    try:
                        results[path].append(run(addrs))
                    except Exception as exc:
                        self.errors.append(f"{label} ({path}): {exc!r}")
                        log(f"  FAILED: {exc!r}")
            if meter:
                self.details.setdefault("cpu_percent", {}).setdefault(label, {})[path] = cpu.result
            if profiler.summary:
                self.details["profile"] = profiler.summary
        return results

    def _node_pids(self) -> dict[str, int]:
        return {k: self.pids[k] for k in ("client_node", "owner_node")}

    def latency(self) -> None:
        n, m = self.args.round_trips, self.args.connections
        rtt = self.both("64-byte echo round trip", lambda a: _load.round_trips(a["echo"], n, 64))
        self._percentiles("64-byte round trip", _first(rtt), 1e3, "us", {50: ("<=", 100.0)})
        conn = self.both(
            "new connection + 1-byte echo", lambda a: _load.new_connections(a["echo"], m)
        )
        self._percentiles("new connection", _first(conn), 1e6, "ms", {50: ("<=", 0.3)})

    def _percentiles(
        self,
        label: str,
        samples: dict[str, list[int] | None],
        scale: float,
        unit: str,
        targets: dict[int, tuple[str, float]],
    ) -> None:
        for p in (50, 99):
            vals = {k: (percentile(v, p) / scale if v else None) for k, v in samples.items()}
            self.rows.append(
                Row(
                    f"{label} p{p}",
                    unit,
                    vals.get("direct"),
                    vals.get("vx6"),
                    targets.get(p),
                    lower_is_better=True,
                )
            )
        self.details[label] = {
            k: {"count": len(v), "mean": sum(v) / len(v) / scale, "max": max(v) / scale}
            for k, v in samples.items()
            if v
        }

    def bulk(self) -> None:
        budget, limit = self.args.mib * MIB, self.args.limit
        runs: list[
            tuple[str, Callable[[dict[str, _load.Addr]], _load.Transfer], tuple[str, float] | None]
        ] = [
            ("bulk one way", lambda a: _load.one_way(a["bulk"], budget, limit), (">=", 1200.0)),
            ("bulk both ways (sum)", lambda a: _load.duplex(a["bulk"], budget, limit), None),
            (
                f"{self.args.parallel} parallel (aggregate)",
                lambda a: _load.parallel(a["bulk"], self.args.parallel, budget, limit),
                None,
            ),
        ]
        for pid in self._node_pids().values():
            reset_peak_rss(pid)
        for label, run, target in runs:
            res = self.both(label, run, repeat=self.args.repeat, meter=True)
            rates = {k: [t.mb_per_s for t in v] for k, v in res.items()}
            median = {k: statistics.median(v) if v else None for k, v in rates.items()}
            self.rows.append(Row(label, "MB/s", median["direct"], median["vx6"], target))
            self.details[label] = {k: [vars(t) for t in v] for k, v in res.items()}
        self.rss_rows("peak RSS during bulk", "VmHWM", None)

    def rss_rows(self, label: str, field: str, target: tuple[str, float] | None) -> None:
        for role in ("owner", "client"):
            kib = proc_status_kib(self.pids[f"{role}_node"], field)
            self.rows.append(
                Row(
                    f"{label}, {role} node",
                    "MiB",
                    None,
                    kib / 1024 if kib is not None else None,
                    target,
                    lower_is_better=True,
                )
            )

    def warm_up(self) -> None:
        fwd = self.paths["vx6"]
        _load.round_trips(fwd["echo"], 50, 64, warmup=0)
        _load.one_way(fwd["bulk"], 16 * MIB, self.args.limit)


def _first(results: dict[str, list[Any]]) -> dict[str, list[int] | None]:
    return {path: runs[0] if runs else None for path, runs in results.items()}


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    servers: list[Any] = []
    report: dict[str, Any] = {
        "machine": machine_details(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    try:
        echo_proc, echo = _load.start_server("echo")
        servers.append(echo_proc)
        bulk_proc, bulk = _load.start_server("bulk")
        servers.append(bulk_proc)
        if args.event_loop:
            os.environ["VX6_EVENT_LOOP"] = args.event_loop  # the nodes inherit it
        with LocalNet(keep=args.keep) as net:
            if args.keep:
                log(f"node homes and logs in {net.base}")
            log("starting hub, alice (owner) and bob (client)")
            setup = build_network(net, echo, bulk)
            pids = {
                "client_node": setup["bob"].process.pid,
                "owner_node": setup["alice"].process.pid,
                "bulk_target": bulk_proc.pid,
                "load_client": os.getpid(),
            }
            bench = Bench(args, {"echo": echo, "bulk": bulk}, setup["forwards"], pids)
            bench.details["forward_setup_ms"] = setup["setup_ms"]
            bench.details["event_loop"] = node_event_loop(setup["alice"])
            try:
                bench.warm_up()
                time.sleep(IDLE_PAUSE)  # let the nodes settle: this row is about idle memory
                bench.rss_rows("idle RSS", "VmRSS", ("<=", 60.0))
                bench.latency()
                bench.bulk()
                time.sleep(IDLE_PAUSE)
                bench.rss_rows("idle RSS after load", "VmRSS", ("<=", 60.0))
            except Exception:
                bench.errors.append("aborted")
                raise
            finally:
                if bench.errors:  # the node logs usually say why
                    for node in (setup["alice"], setup["bob"]):
                        log(f"{node.name} log tail:\n{node.log_text()[-1500:]}")
            report.update(
                rows=[r.as_dict() for r in bench.rows], details=bench.details, errors=bench.errors
            )
    finally:
        for proc in servers:
            _load.stop_server(proc)
    report["seconds"] = round(time.monotonic() - started, 1)
    rows = [Row.from_dict(r) for r in report["rows"]]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_table(report["machine"], rows, report["details"], report["errors"]))
    if report["errors"]:
        return 2
    return 1 if args.strict and any(r.passed is False for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: run(parse_args(argv)), log)


if __name__ == "__main__":
    sys.exit(main())
