"""Benchmark hidden services on loopback against a 5-relay forward and a direct connection.

Theory of operation. Two target servers (echo, bulk sink; _load.py) run in their own
processes; _hidden_net.py starts fourteen relays, the owner alice and the client bob.
alice exposes both targets (for bob's 5-relay forward, the baseline of the same run)
and makes each a hidden service per profile with `vx6 hidden create` (the service's
profile sets its side of the path); bob connects one forward per service to each path:
5 relays, hidden fast and hidden balanced. Bulk and latency go
round all paths in turn, `--repeat` times, so the columns share the machine's state;
every figure is also measured straight to the target ("direct"). Then the steps a
connection does not repeat on a live path: a first connection with the descriptor
cached (the `hidden` op's `close_paths` closes bob's joined paths, the descriptor stays),
a cold first connection (a fresh client node: lookup and every build), `vx6 hidden
create` until bob can connect, and the service's recovery after an intro relay is
killed. The per-step times (lookup, builds, introduction, rendezvous) are the client's
own (`forwards` op, `setup_ms` of a path). CPU is utime + stime of every process around
the bulk runs. Everything is bounded in bytes and time, and every process is stopped on
exit, error, Ctrl-C or SIGTERM.

Run: `python benchmarks/bench_hidden.py [--quick] [--json] [--mib N] [--repeat N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _load
import _setup  # noqa: F401  (first: makes vx6 importable from a checkout)
from _hidden_net import (
    BALANCED,
    DIRECT,
    FAST,
    PATHS,
    PROFILES,
    RELAYED,
    RELAYS,
    build_network,
    connect_forwards,
    log,
)
from _hidden_phases import HiddenPhases
from _report import (
    Row,
    cpu_seconds,
    machine_busy_seconds,
    machine_details,
    node_event_loop,
    percentile,
    render_table,
    run_main,
)

from vx6.app.localnet import LocalNet

MIB = 1 << 20
BULK_TARGETS = {FAST: (100.0, 0.7), BALANCED: (60.0, 0.45)}  # MB/s, share of 5 relays
NEW_CONNECTION_TARGET = (8.0, 2.0)  # ms p50, times the 5-relay forward's p50


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a CI smoke run")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--mib", type=int, help="bytes per bulk run in MiB (256; quick 16)")
    p.add_argument("--repeat", type=int, help="rounds over all paths (3; quick 1)")
    p.add_argument("--round-trips", type=int, help="64-byte echo round trips (2000; quick 200)")
    p.add_argument("--connections", type=int, help="new connections per path (200; quick 30)")
    p.add_argument("--first", type=int, help="first connections, descriptor cached (20; quick 3)")
    p.add_argument("--cold", type=int, help="cold first connections, fresh nodes (5; quick 1)")
    p.add_argument("--creates", type=int, help="`hidden create` to reachable (3; quick 1)")
    p.add_argument("--limit", type=float, help="max seconds per bulk run (30; quick 5)")
    p.add_argument("--keep", action="store_true", help="keep the node homes and logs")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    quick = args.quick
    args.mib = args.mib or (16 if quick else 256)
    args.repeat = args.repeat or (1 if quick else 3)
    args.round_trips = args.round_trips or (200 if quick else 2000)
    args.connections = args.connections or (30 if quick else 200)
    args.first = args.first or (3 if quick else 20)
    args.cold = args.cold or (1 if quick else 5)
    args.creates = args.creates or (1 if quick else 3)
    args.limit = args.limit or (5.0 if quick else 30.0)
    return args


class HiddenBench(HiddenPhases):
    """Bulk, latency and CPU over all paths; the one-off steps are in HiddenPhases."""

    def warm_up(self) -> None:
        for label, addrs in self.paths.items():
            if label != DIRECT:
                _load.round_trips(addrs["echo"], 20, 64, warmup=0)
                _load.one_way(addrs["bulk"], 4 * MIB, self.args.limit)

    # ------------------------------------------------------------------ latency
    def latency(self) -> None:
        rounds = self.args.repeat
        rtt: dict[str, list[int]] = {label: [] for label in self.paths}
        conn: dict[str, list[int]] = {label: [] for label in self.paths}
        for r in range(rounds):
            log(f"64-byte round trips and new connections, all paths ({r + 1}/{rounds})")
            for label, addrs in self.paths.items():
                got = self.attempt(
                    f"new connection ({label})",
                    _load.new_connections,
                    addrs["echo"],
                    max(1, self.args.connections // rounds),
                    5,
                )
                conn[label] += got or []
                got = self.attempt(
                    f"64-byte round trip ({label})",
                    _load.round_trips,
                    addrs["echo"],
                    max(1, self.args.round_trips // rounds),
                    64,
                    20,
                )
                rtt[label] += got or []
        limit, share = NEW_CONNECTION_TARGET
        p50 = self._percentile_rows("new connection + 1-byte echo", conn, 1e6, "ms", limit)
        self._percentile_rows("64-byte round trip", rtt, 1e3, "us", None)
        base = p50.get(RELAYED)
        for label in (FAST, BALANCED):
            value = p50.get(label)
            ratio = value / base if value and base else None
            target = ("<=", share) if label == FAST else None
            self.rows.append(
                Row(f"new connection p50, {label} / 5 relays", "x", None, ratio, target, True)
            )

    def _percentile_rows(
        self,
        label: str,
        samples: dict[str, list[int]],
        scale: float,
        unit: str,
        fast_p50: float | None,
    ) -> dict[str, float]:
        """p50 and p99 per path; `fast_p50`: the target of hidden fast's p50."""
        p50: dict[str, float] = {}
        direct = samples.get(DIRECT)
        for path in PATHS:
            for p in (50, 99):
                value = percentile(samples[path], p) / scale if samples[path] else None
                if p == 50 and value is not None:
                    p50[path] = value
                base = percentile(direct, p) / scale if direct else None
                wanted = None
                if fast_p50 is not None and path == FAST and p == 50:
                    wanted = ("<=", fast_p50)
                self.rows.append(Row(f"{label} p{p}, {path}", unit, base, value, wanted, True))
        self.details[label] = {
            k: {"count": len(v), "mean": sum(v) / len(v) / scale, "max": max(v) / scale}
            for k, v in samples.items()
            if v
        }
        return p50

    # ------------------------------------------------------------------ bulk and CPU
    def _cpu(self) -> dict[str, float]:
        seconds = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return {**seconds, "machine": machine_busy_seconds()}

    def bulk(self) -> None:
        budget, limit = self.args.mib * MIB, self.args.limit
        rates: dict[str, list[float]] = {label: [] for label in self.paths}
        sent = dict.fromkeys(self.paths, 0)
        cpu = {label: dict.fromkeys([*self.pids, "machine"], 0.0) for label in self.paths}
        wall = dict.fromkeys(self.paths, 0.0)
        for rep in range(self.args.repeat):
            for label, addrs in self.paths.items():
                log(f"bulk one way: {label} ({rep + 1}/{self.args.repeat})")
                before, started = self._cpu(), time.monotonic()
                result = self.attempt(
                    f"bulk one way ({label})", _load.one_way, addrs["bulk"], budget, limit
                )
                wall[label] += time.monotonic() - started
                after = self._cpu()
                for k in after:
                    cpu[label][k] += after[k] - before[k]
                if result is not None:
                    rates[label].append(result.mb_per_s)
                    sent[label] += result.up
        median = {k: statistics.median(v) if v else None for k, v in rates.items()}
        for label in PATHS:
            rate, share = BULK_TARGETS.get(label, (None, None))
            target = None if rate is None else (">=", rate)
            self.rows.append(
                Row(f"bulk one way, {label}", "MB/s", median[DIRECT], median[label], target)
            )
        base = median[RELAYED]
        for label, (_, share) in BULK_TARGETS.items():
            value = median[label]
            ratio = value / base if value and base else None
            self.rows.append(
                Row(f"bulk one way, {label} / 5 relays", "x", None, ratio, (">=", share))
            )
        per_gb = {
            k: {p: round(s / (sent[k] / 1e9), 3) for p, s in v.items() if p != "machine"}
            for k, v in cpu.items()
            if sent[k]
        }
        for label in PATHS:
            shares = per_gb.get(label, {})
            relays = sum(v for k, v in shares.items() if k.startswith("relay_"))
            for role, value in (
                ("client node", shares.get("client_node")),
                ("service node", shares.get("owner_node")),
                ("relays (sum)", relays if shares else None),
            ):
                self.rows.append(
                    Row(f"CPU per GB, {label}, {role}", "s/GB", None, value, None, True)
                )
        self.details["bulk one way MB/s"] = rates
        self.details["bulk bytes sent"] = sent
        self.details["cpu_s_per_gb"] = per_gb
        self.details["cpu_percent"] = {
            "bulk one way": {
                k: {p: round(100 * s / max(wall[k], 1e-9), 1) for p, s in v.items()}
                for k, v in cpu.items()
            }
        }


# ---------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    servers: list[Any] = []
    report: dict[str, Any] = {
        "machine": machine_details(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
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
            log("hidden services and forwards: 5 relays, hidden fast and balanced")
            paths, aliases = connect_forwards(alice, bob, {"echo": echo, "bulk": bulk})
            pids = {
                "client_node": bob.process.pid,
                "owner_node": alice.process.pid,
                **{f"relay_{n}": r.process.pid for n, r in relays.items()},
                "bulk_target": bulk_proc.pid,
                "load_client": os.getpid(),
            }
            bench = HiddenBench(args, net, paths, aliases, (alice, bob), relays, pids)
            bench.details["event_loop"] = node_event_loop(alice)
            bench.details["profiles"] = PROFILES
            try:
                bench.warm_up()
                bench.latency()
                bench.bulk()
                bench.first_connections()
                bench.cold_connections()
                bench.create_to_reachable(echo)
                bench.intro_recovery()  # last: it kills a relay
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
        title = "VX6 hidden services vs a 5-relay forward and direct TCP on loopback"
        print(render_table(report["machine"], rows, report["details"], report["errors"], title))
    if report["errors"]:
        return 2
    return 1 if args.strict and any(r.passed is False for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: run(parse_args(argv)), log)


if __name__ == "__main__":
    sys.exit(main())
