"""Smoke test of benchmarks/bench_hidden.py: `--quick --json` as a subprocess finishes, no
measurement failed, and the report has every row (a positive figure each) and the
client's per-step times. The figures themselves are not checked (the machine is shared,
so no timed assertions)."""

from __future__ import annotations

import pytest

from kit.bench import run_quick_json

RUN_TIMEOUT = 240.0

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 30)

PATHS = ("5 relays", "hidden fast", "hidden balanced")
HIDDEN = PATHS[1:]
STEPS = (
    "lookup",
    "rendezvous_build",
    "establish",
    "intro_build",
    "introduction",
    "rendezvous",
    "total",
    "connect",
)
FIRST = [f"first connection, descriptor cached, {path}" for path in HIDDEN]
COLD = ["cold first connection, hidden fast"]
EXPECTED = [
    *(f"new connection + 1-byte echo p{p}, {path}" for path in PATHS for p in (50, 99)),
    *(f"64-byte round trip p{p}, {path}" for path in PATHS for p in (50, 99)),
    *(f"new connection p50, {path} / 5 relays" for path in HIDDEN),
    *(f"bulk one way, {path}" for path in PATHS),
    *(f"bulk one way, {path} / 5 relays" for path in HIDDEN),
    *(
        f"CPU per GB, {path}, {role}"
        for path in PATHS
        for role in ("client node", "service node", "relays (sum)")
    ),
    *(f"{label} p{p}" for label in FIRST + COLD for p in (50, 99)),
    *(f"{label} step p50: {step}" for label in FIRST + COLD for step in STEPS),
    *(f"`hidden create` to reachable by a third party p{p}" for p in (50, 99)),
    "intro killed to new descriptor published",
    "intro killed to a new rendezvous by bob",
]
WITH_DIRECT = ("new connection +", "64-byte round trip", "bulk one way, ")
TARGETED = {
    "bulk one way, hidden fast",
    "bulk one way, hidden balanced",
    "bulk one way, hidden fast / 5 relays",
    "bulk one way, hidden balanced / 5 relays",
    "new connection + 1-byte echo p50, hidden fast",
    "new connection p50, hidden fast / 5 relays",
    "first connection, descriptor cached, hidden fast p50",
    "cold first connection, hidden fast p50",
    "`hidden create` to reachable by a third party p50",
    "intro killed to new descriptor published",
}


def test_bench_hidden_quick_json() -> None:
    report = run_quick_json("bench_hidden.py", RUN_TIMEOUT)
    assert report["errors"] == []
    rows = {row["metric"]: row for row in report["rows"]}
    assert sorted(rows) == sorted(EXPECTED)
    for metric, row in rows.items():
        assert row["vx6"] is not None and row["vx6"] >= 0, row
        if metric.startswith(WITH_DIRECT) and "/ 5 relays" not in metric:
            assert row["direct"] is not None and row["direct"] > 0, row
    assert {m for m, row in rows.items() if row["target"]} == TARGETED
    for label in FIRST + COLD:
        steps = report["details"][f"{label} steps ms"]
        assert steps and all(set(STEPS) <= {k.removesuffix("_ms") for k in s} for s in steps)
    assert set(report["details"]["cpu_s_per_gb"]) >= set(PATHS)
    assert report["details"]["intro recovery"]["killed"]
