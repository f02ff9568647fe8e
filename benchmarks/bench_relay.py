"""Benchmark VX6 relay circuits (1, 3 and 5 relays) on loopback against a direct connection.

Theory of operation. Two target servers (echo, bulk sink; _load.py) run in their own
processes; _relay_net.py starts six relays, the owner alice and the client bob, and
connects one forward per service and path (named direct, the second baseline, and 1, 3
and 5 relays). Every figure is also measured straight to the target ("direct") in the
same run. Latency and bulk runs go round all paths in turn, `--repeat` times, so the
columns share the machine's state; bulk figures are medians. Cold builds use the
`build_circuit` control op: bob builds a circuit outside his pool, reports its
`build_ms` (CREATE sent to every hop keyed, timed in bob's daemon) and destroys it.
Relay CPU is utime + stime from /proc/PID/stat of every relay around the bulk runs.
Everything is bounded in bytes and time, and every process is stopped on exit, error,
Ctrl-C or SIGTERM.

Run: `python benchmarks/bench_relay.py [--quick] [--json] [--mib N] [--repeat N]`.
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
from _relay_net import (
    DIRECT,
    PATHS,
    RELAYS,
    SETUP_TIMEOUT,
    build_network,
    connect_forwards,
    log,
    named_direct_ratios,
    pools_full,
)
from _report import (
    Profiler,
    Row,
    cpu_seconds,
    machine_busy_seconds,
    machine_details,
    node_event_loop,
    percentile,
    render_table,
    run_main,
)

from vx6.app.localnet import LocalNet, LocalNode, wait_for

MIB = 1 << 20
BUILD_HOPS = 5
BUILD_WARMUP = 3  # unmeasured builds first: they also dial missing relay links
BUILD_PAUSE = 0.1  # seconds between builds: well under a relay's 20 creations/s per source


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a CI smoke run (~15 s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--mib", type=int, help="bytes per bulk run in MiB (256; quick 32)")
    p.add_argument("--repeat", type=int, help="rounds over all paths (5; quick 1)")
    p.add_argument("--round-trips", type=int, help="64-byte echo round trips (2000; quick 300)")
    p.add_argument("--connections", type=int, help="new connections per path (200; quick 50)")
    p.add_argument("--builds", type=int, help="cold 5-relay circuit builds timed (20; quick 5)")
    p.add_argument("--limit", type=float, help="max seconds per bulk run (30; quick 5)")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the nodes during one extra, unmeasured 5-relay bulk run",
    )
    p.add_argument("--keep", action="store_true", help="keep the node homes and logs")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    quick = args.quick
    args.mib = args.mib or (32 if quick else 256)
    args.repeat = args.repeat or (1 if quick else 5)
    args.round_trips = args.round_trips or (300 if quick else 2000)
    args.connections = args.connections or (50 if quick else 200)
    args.builds = args.builds or (5 if quick else 20)
    args.limit = args.limit or (5.0 if quick else 30.0)
    return args


# ---------------------------------------------------------------------------- phases
class RelayBench:
    def __init__(
        self,
        args: argparse.Namespace,
        paths: dict[str, dict[str, _load.Addr]],
        nodes: tuple[LocalNode, LocalNode],
        relays: dict[str, LocalNode],
        pids: dict[str, int],
    ) -> None:
        self.args = args
        self.paths = paths
        self.alice, self.bob = nodes
        self.relays = relays
        self.pids = pids
        self.rows: list[Row] = []
        self.details: dict[str, Any] = {}
        self.errors: list[str] = []

    def attempt(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one measurement; a failure is listed and the run goes on without it."""
        try:
            return fn(*args)
        except Exception as exc:
            self.errors.append(f"{what}: {exc!r}")
            log(f"  FAILED {what}: {exc!r}")
            return None

    def warm_up(self) -> None:
        for label, addrs in self.paths.items():
            if label != DIRECT:
                _load.round_trips(addrs["echo"], 20, 64, warmup=0)
                _load.one_way(addrs["bulk"], 4 * MIB, self.args.limit)
        wait_for(lambda: pools_full(self.bob), SETUP_TIMEOUT, "the circuit pools to fill")
        pool = {}
        for fwd in self.bob.call("forwards")["forwards"]:
            if fwd["hops"] and fwd["name"].startswith("bulk"):
                pool[PATHS[fwd["hops"]]] = [c["build_ms"] for c in fwd["circuits"]]
        self.details["pool_circuit_build_ms"] = pool

    # ------------------------------------------------------------------ latency
    def latency(self) -> None:
        """In `--repeat` rounds that go round all paths, so load changes hit them alike."""
        rounds = self.args.repeat
        rtt: dict[str, list[int] | None] = dict.fromkeys(self.paths, None)
        conn: dict[str, list[int] | None] = dict.fromkeys(self.paths, None)
        for r in range(rounds):
            log(f"64-byte round trips and new connections, all paths ({r + 1}/{rounds})")
            for label, addrs in self.paths.items():
                for samples, what, fn, n in (
                    (rtt, "64-byte round trip", _load.round_trips, self.args.round_trips),
                    (conn, "new connection", _load.new_connections, self.args.connections),
                ):
                    count = max(1, n // rounds)
                    extra = (64, 20) if fn is _load.round_trips else (5,)
                    got = self.attempt(f"{what} ({label})", fn, addrs["echo"], count, *extra)
                    if got is not None:
                        samples[label] = (samples[label] or []) + got
        self._percentile_rows("new connection + 1-byte echo", conn, 1e6, "ms", ("<=", 5.0))
        self._percentile_rows("64-byte round trip", rtt, 1e3, "us", None)

    def _percentile_rows(
        self,
        label: str,
        samples: dict[str, list[int] | None],
        scale: float,
        unit: str,
        target: tuple[str, float] | None,
    ) -> None:
        def value(s: list[int] | None, p: int) -> float | None:
            return percentile(s, p) / scale if s else None

        for path in PATHS.values():
            for p in (50, 99):
                wanted = target if path == PATHS[5] and p == 50 else None
                self.rows.append(
                    Row(
                        f"{label} p{p}, {path}",
                        unit,
                        value(samples.get(DIRECT), p),
                        value(samples.get(path), p),
                        wanted,
                        lower_is_better=True,
                    )
                )
        self.details[label] = {
            k: {"count": len(v), "mean": sum(v) / len(v) / scale, "max": max(v) / scale}
            for k, v in samples.items()
            if v
        }

    # ------------------------------------------------------------------ bulk and CPU
    def _cpu(self) -> dict[str, float]:
        seconds = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return {**seconds, "machine": machine_busy_seconds()}

    def _cells(self) -> dict[str, int]:
        return {n: int(r.call("status")["circuits"]["cells_out"]) for n, r in self.relays.items()}

    def bulk(self) -> None:
        budget, limit = self.args.mib * MIB, self.args.limit
        rates: dict[str, list[float]] = {label: [] for label in self.paths}
        sent = dict.fromkeys(self.paths, 0)
        cpu = {label: dict.fromkeys([*self.pids, "machine"], 0.0) for label in self.paths}
        cells = {label: dict.fromkeys(self.relays, 0) for label in self.paths}
        wall = dict.fromkeys(self.paths, 0.0)
        for rep in range(self.args.repeat):
            for label, addrs in self.paths.items():
                log(f"bulk one way: {label} ({rep + 1}/{self.args.repeat})")
                cells_before, before, started = self._cells(), self._cpu(), time.monotonic()
                result = self.attempt(
                    f"bulk one way ({label})", _load.one_way, addrs["bulk"], budget, limit
                )
                wall[label] += time.monotonic() - started
                after, cells_after = self._cpu(), self._cells()
                for k in after:
                    cpu[label][k] += after[k] - before[k]
                for k in cells_after:
                    cells[label][k] += cells_after[k] - cells_before[k]
                if result is not None:
                    rates[label].append(result.mb_per_s)
                    sent[label] += result.up
        median = {k: statistics.median(v) if v else None for k, v in rates.items()}
        for hops, label in PATHS.items():
            target = (">=", 150.0) if hops == 5 else None
            self.rows.append(
                Row(f"bulk one way, {label}", "MB/s", median[DIRECT], median[label], target)
            )
        for hops, label in PATHS.items():
            if hops and sent[label]:
                relay_cpu = sum(cpu[label][f"relay_{n}"] for n in self.relays)
                per_gb = relay_cpu / (sent[label] / 1e9 * hops)
                self.rows.append(
                    Row(f"relay CPU per GB relayed, {label}", "s/GB", None, per_gb, None, True)
                )
        self.details["bulk one way MB/s"] = rates
        self.details["bulk bytes sent"] = sent
        self.details["relay cells_out during bulk"] = cells
        self.details["cpu_percent"] = {
            "bulk one way": {
                k: {p: round(100 * s / max(wall[k], 1e-9), 1) for p, s in v.items()}
                for k, v in cpu.items()
            }
        }
        self.details["cpu_s_per_gb"] = {
            k: {p: round(s / (sent[k] / 1e9), 3) for p, s in v.items() if p != "machine"}
            for k, v in cpu.items()
            if sent[k]
        }

    def profile(self) -> None:
        """One extra 5-relay bulk run under py-spy; its figure is not in the table."""
        names = ["client_node", "owner_node", *(f"relay_{n}" for n in self.relays)]
        with Profiler(self.args.profile, {n: self.pids[n] for n in names}) as profiler:
            addr = self.paths[PATHS[5]]["bulk"]
            result = self.attempt("profiled bulk run", _load.one_way, addr, self.args.mib * MIB, 30)
        self.details["profile"] = profiler.summary
        self.details["profile_phase"] = "5 relays bulk one way (extra run)"
        if result is not None:
            self.details["profiled_run_mb_per_s"] = round(result.mb_per_s, 1)

    # ------------------------------------------------------------------ cold builds
    def _links(self) -> int:
        """Links open between the benchmark's nodes (each counted at both ends)."""
        nodes = [*self.relays.values(), self.bob, self.alice]
        return sum(int(n.call("status")["links"]) for n in nodes)

    def builds(self) -> None:
        """Cold builds outside the pool. A build may have to dial a relay link that no
        circuit has needed yet; those builds are counted (the open links are summed
        before and after each one) and also left out in the details."""
        warm: list[float] = []
        builds: list[dict[str, Any]] = []
        log(f"cold {BUILD_HOPS}-relay circuit builds x{self.args.builds}")
        for i in range(BUILD_WARMUP + self.args.builds):
            links = self._links()
            started = time.perf_counter()
            reply = self.attempt(
                "cold circuit build",
                lambda: self.bob.call("build_circuit", owner="alice", hops=BUILD_HOPS),
            )
            elapsed = (time.perf_counter() - started) * 1000
            time.sleep(BUILD_PAUSE)
            if reply is None:
                continue
            if i < BUILD_WARMUP:
                warm.append(reply["build_ms"])
                continue
            builds.append(
                {
                    "build_ms": reply["build_ms"],
                    "daemon_ms": reply["total_ms"],
                    "control_ms": round(elapsed, 2),
                    "new_links": (self._links() - links) // 2,
                }
            )
        build_ms = [b["build_ms"] for b in builds]
        for p in (50, 99):
            self.rows.append(
                Row(
                    f"cold circuit build p{p}, {BUILD_HOPS} relays",
                    "ms",
                    None,
                    percentile(build_ms, p) if build_ms else None,
                    ("<=", 50.0),
                    lower_is_better=True,
                )
            )
        no_dial = [b["build_ms"] for b in builds if b["new_links"] == 0]
        self.details["cold builds"] = {
            "builds": builds,
            "warm_up_build_ms": warm,
            "builds_that_dialled_links": len(builds) - len(no_dial),
            "p50_p99_ms_without_dials": [percentile(no_dial, p) for p in (50, 99)]
            if no_dial
            else None,
        }


# ---------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    servers: list[Any] = []
    report: dict[str, Any] = {
        "machine": machine_details(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    extra: list[str] = []
    try:
        echo_proc, echo = _load.start_server("echo")
        servers.append(echo_proc)
        bulk_proc, bulk = _load.start_server("bulk")
        servers.append(bulk_proc)
        with LocalNet(keep=args.keep) as net:
            if args.keep:
                log(f"node homes and logs in {net.base}")
            log(f"starting {RELAYS} relays, alice (owner) and bob (client)")
            alice, bob, relays = build_network(net)
            log("connecting forwards: named direct, 1, 3 and 5 relays")
            paths = connect_forwards(alice, bob, {"echo": echo, "bulk": bulk})
            pids = {
                "client_node": bob.process.pid,
                "owner_node": alice.process.pid,
                **{f"relay_{n}": r.process.pid for n, r in relays.items()},
                "bulk_target": bulk_proc.pid,
                "load_client": os.getpid(),
            }
            bench = RelayBench(args, paths, (alice, bob), relays, pids)
            bench.details["event_loop"] = node_event_loop(alice)
            try:
                bench.warm_up()
                bench.latency()
                bench.bulk()
                if args.profile:
                    bench.profile()
                bench.builds()
                ratios = named_direct_ratios(bench.rows)
                bench.details["ratio_to_named_direct"] = ratios
                extra = ["", "relay / named-direct forward:"]
                extra += [f"  {k}: {v}" for k, v in ratios.items()]
            except Exception:
                bench.errors.append("aborted")
                raise
            finally:
                if bench.errors:  # the node logs usually say why
                    for node in (alice, bob):
                        log(f"{node.name} log tail:\n{node.log_text()[-1500:]}")
            report.update(
                rows=[r.as_dict() for r in bench.rows], details=bench.details, errors=bench.errors
            )
    finally:
        for proc in servers:
            _load.stop_server(proc)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = [Row.from_dict(r) for r in report["rows"]]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        title = "VX6 relay circuits vs direct TCP on loopback"
        table = render_table(report["machine"], rows, report["details"], report["errors"], title)
        print(table + "\n".join(extra))
    if report["errors"]:
        return 2
    return 1 if args.strict and any(r.passed is False for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: run(parse_args(argv)), log)


if __name__ == "__main__":
    sys.exit(main())
