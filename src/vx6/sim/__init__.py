"""A simulator that drives the sans-IO DHT core on a virtual clock (see docs/dht.md).

python -m vx6.sim --nodes 10000 --churn 0.3 --hostile 0.05 --lookups 1000 --json
"""

from __future__ import annotations

from vx6.sim.scenario import SimParams, run_simulation

__all__ = ["SimParams", "run_simulation"]
