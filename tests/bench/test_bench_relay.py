"""Smoke test of benchmarks/bench_relay.py: `--quick --json` as a subprocess finishes, every
row of its table has a positive figure and no measurement failed. The figures themselves
are not checked (the machine is shared, so no timed assertions)."""

from __future__ import annotations

import pytest

from kit.bench import run_quick_json

RUN_TIMEOUT = 120.0

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 30)

PATHS = ("named-direct forward", "1 relay", "3 relays", "5 relays")
EXPECTED = [
    *(f"new connection + 1-byte echo p{p}, {path}" for path in PATHS for p in (50, 99)),
    *(f"64-byte round trip p{p}, {path}" for path in PATHS for p in (50, 99)),
    *(f"bulk one way, {path}" for path in PATHS),
    *(f"relay CPU per GB relayed, {path}" for path in PATHS[1:]),
    "cold circuit build p50, 5 relays",
    "cold circuit build p99, 5 relays",
]
WITH_DIRECT = ("new connection", "64-byte round trip", "bulk one way")


def test_bench_relay_quick_json() -> None:
    report = run_quick_json("bench_relay.py", RUN_TIMEOUT)
    assert report["errors"] == []
    rows = {row["metric"]: row for row in report["rows"]}
    assert sorted(rows) == sorted(EXPECTED)
    for metric, row in rows.items():
        assert row["vx6"] is not None and row["vx6"] > 0, row
        if metric.startswith(WITH_DIRECT):
            assert row["direct"] is not None and row["direct"] > 0, row
    assert report["details"]["cold builds"]["builds"]
    assert set(report["details"]["ratio_to_named_direct"]) >= {
        "bulk one way, 5 relays",
        "new connection + 1-byte echo p50, 5 relays",
    }
