"""The DHT simulator (vx6.sim): small runs meet the targets the 10,000-node runs are
measured against (docs/dht.md), the CLI prints one JSON object, runs are reproducible."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest

from vx6.sim import SimParams, run_simulation
from vx6.sim.__main__ import main

REQUIRED = {
    "nodes",
    "lookups",
    "success_rate",
    "rounds_median",
    "rounds_p99",
    "rpcs_median",
    "name_success_rate",
}
TIMING = {"wall_seconds", "build_seconds"}


def test_cli_prints_one_json_object() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--nodes", "120", "--lookups", "20", "--json", "--seed", "3"]) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    figures = json.loads(lines[0])
    assert set(figures) >= REQUIRED
    assert figures["nodes"] == 120 and figures["lookups"] == 20


def test_cli_rejects_bad_fractions() -> None:
    with pytest.raises(SystemExit):
        main(["--churn", "1.5"])


def test_500_nodes_no_churn() -> None:
    figures = run_simulation(SimParams(nodes=500, lookups=200, name_lookups=50, seed=11))
    assert figures["success_rate"] >= 0.99
    assert figures["name_success_rate"] >= 0.99
    assert isinstance(figures["rounds_median"], int | float) and figures["rounds_median"] <= 3


def test_500_nodes_with_30_percent_gone() -> None:
    figures = run_simulation(SimParams(nodes=500, churn=0.3, lookups=200, name_lookups=50, seed=12))
    assert figures["gone"] == 150
    assert figures["success_rate"] >= 0.99


def test_500_nodes_with_hostile_ids_next_to_the_name() -> None:
    figures = run_simulation(
        SimParams(nodes=500, hostile=0.05, lookups=50, name_lookups=200, seed=13)
    )
    assert figures["hostile"] == 25
    assert figures["name_success_rate"] >= 0.99
    refused = figures["refused"]
    assert isinstance(refused, dict) and refused.get("bad-signature", 0) > 0  # junk was seen


def test_runs_are_reproducible() -> None:
    params = SimParams(nodes=150, churn=0.2, hostile=0.05, lookups=30, seed=5)
    first, second = run_simulation(params), run_simulation(params)
    for key in TIMING:
        first.pop(key), second.pop(key)
    assert first == second
