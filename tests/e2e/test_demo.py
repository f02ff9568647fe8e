"""`vx6 demo` is the README's main job: it must work end to end from the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(240)


def test_demo_runs_every_mode_and_reports_success() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vx6", "demo", "--mib", "4", "--json"],
        capture_output=True,
        timeout=230,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    report = json.loads(result.stdout)
    modes = {row["mode"] for row in report["rows"]}
    assert {
        "named direct",
        "named via DHT",
        "direct IPv6",
        "relay, 1 hop",
        "relay, 5 hops",
        "hidden fast",
        "hidden balanced",
    } <= modes
    assert report["ok"] and all(row["ok"] for row in report["rows"])
    assert all(row["mb_s"] and row["mb_s"] > 0 for row in report["rows"])
