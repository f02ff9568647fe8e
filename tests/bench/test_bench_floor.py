"""Smoke test of benchmarks/bench_floor.py: `--quick --json` as a subprocess finishes,
every row has positive figures for both columns, and no socat process outlives it. The
figures themselves are not checked (the machine is shared, so no timed assertions).
.ci/run installs socat; on a machine without it the script has nothing to measure."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kit.bench import run_quick_json
from vx6.app.localnet import wait_for

RUN_TIMEOUT = 60.0

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 30)

EXPECTED = [
    "64-byte round trip p50, socat x2 chain",
    "64-byte round trip p99, socat x2 chain",
    "bulk one way, socat x2 chain",
]


def _socat_pids() -> set[str]:
    found = subprocess.run(["pgrep", "-x", "socat"], capture_output=True, text=True, check=False)
    return set(found.stdout.split())


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_bench_floor_quick_json() -> None:
    before = _socat_pids()
    report = run_quick_json("bench_floor.py", RUN_TIMEOUT)
    rows = {row["metric"]: row for row in report["rows"]}
    assert list(rows) == EXPECTED
    for row in rows.values():
        assert row["direct"] > 0 and row["vx6"] > 0, row
    # Every relay it started is gone (a killed child may take a moment to be reaped).
    wait_for(lambda: _socat_pids() <= before, 10.0, "the benchmark's socat processes to exit")
