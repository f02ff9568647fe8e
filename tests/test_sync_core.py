"""Peer-sync budgets (sans-IO): token buckets bound inbound work and outbound pushes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vx6.core.sync import RECORDS_BURST, RECORDS_PER_SECOND, Neighbour, RateBudget


def test_budget_refills_with_time_and_caps_at_burst() -> None:
    budget = RateBudget.full(rate=10, burst=20, now=0.0)
    assert budget.take(20, 0.0)
    assert not budget.take(1, 0.0)
    assert budget.take(10, 1.0)  # one second refilled 10
    assert not budget.take(1, 1.0)
    assert budget.take(20, 100.0)  # long idle refills only up to the burst
    assert not budget.take(1, 100.0)


def test_a_flooding_neighbour_is_cut_off_and_recovers() -> None:
    neighbour = Neighbour.new(0.0)
    assert neighbour.accept_inbound(int(RECORDS_BURST), 0.0)
    assert not neighbour.accept_inbound(1, 0.0)
    assert neighbour.accept_inbound(int(RECORDS_PER_SECOND), 1.0)


@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 500)), max_size=60))
def test_budget_never_grants_more_than_rate_times_time_plus_burst(
    steps: list[tuple[float, int]],
) -> None:
    budget = RateBudget.full(rate=100, burst=300, now=0.0)
    now = granted = 0.0
    for dt, n in steps:
        now += dt
        if budget.take(n, now):
            granted += n
    assert granted <= 300 + 100 * now + 1e-6
