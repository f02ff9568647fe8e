"""Peer-sync budgets (sans-IO): token buckets bound inbound work and outbound pushes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vx6.core.budget import RateBudget
from vx6.core.sync import (
    DUMP_INTERVAL,
    DUMPS_BURST,
    DUMPS_PER_SECOND,
    MAX_DUMP_KEYS,
    RECORDS_BURST,
    RECORDS_PER_SECOND,
    STRANGER_RECORDS_BURST,
    STRANGER_RECORDS_PER_SECOND,
    DumpLimiter,
    Neighbour,
)


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


def test_one_full_dump_per_key_per_interval_and_a_global_budget() -> None:
    limiter = DumpLimiter.new(0.0)
    assert limiter.grant(b"a", 0.0)
    assert not limiter.grant(b"a", DUMP_INTERVAL - 0.1)
    assert limiter.grant(b"a", DUMP_INTERVAL)  # the interval has passed
    # Fresh keys do not get around it: all keys together share a bucket.
    granted = sum(limiter.grant(bytes([i]) * 32, DUMP_INTERVAL) for i in range(100))
    assert granted == int(DUMPS_BURST) - 1  # the bucket refilled to its burst; "a" took one
    assert not limiter.grant(b"z" * 32, DUMP_INTERVAL)
    assert limiter.grant(b"z" * 32, DUMP_INTERVAL + 1 / DUMPS_PER_SECOND)


@given(st.lists(st.tuples(st.floats(0, 30), st.integers(0, 5000)), max_size=200))
def test_dump_grants_are_bounded_per_key_and_in_total(steps: list[tuple[float, int]]) -> None:
    limiter = DumpLimiter.new(0.0)
    now, grants = 0.0, []
    for dt, key in steps:
        now += dt
        if limiter.grant(key.to_bytes(2, "big"), now):
            grants.append((now, key))
    assert len(grants) <= DUMPS_BURST + now * DUMPS_PER_SECOND + 1e-9
    last: dict[int, float] = {}
    for at, key in grants:
        assert key not in last or at - last[key] >= DUMP_INTERVAL
        last[key] = at
    assert len(limiter.last) <= MAX_DUMP_KEYS


def test_fresh_neighbours_share_one_budget_for_strangers() -> None:
    """A new link is a new neighbour with a full bucket: without the shared budget, 50
    fresh keys on 50 links would get 50 bursts of records checked and written."""
    now = 1000.0
    strangers = RateBudget.full(STRANGER_RECORDS_PER_SECOND, STRANGER_RECORDS_BURST, now)
    accepted = 0
    for _ in range(50):
        neighbour = Neighbour.new(now)
        for _ in range(100):
            if neighbour.accept_inbound(60, now, strangers):
                accepted += 60
    assert accepted <= STRANGER_RECORDS_BURST
    # A trusted neighbour (a configured peer) is held only by its own bucket.
    trusted = Neighbour.new(now)
    assert trusted.accept_inbound(60, now, None)
    # And the strangers' budget refills at its rate.
    later = now + 1.0
    assert Neighbour.new(later).accept_inbound(60, later, strangers)


@given(
    st.lists(
        st.tuples(st.integers(0, 20), st.integers(1, 60), st.floats(0, 0.5)),
        max_size=200,
    )
)
def test_strangers_never_get_more_than_the_shared_rate(
    frames: list[tuple[int, int, float]],
) -> None:
    now = 0.0
    strangers = RateBudget.full(STRANGER_RECORDS_PER_SECOND, STRANGER_RECORDS_BURST, now)
    neighbours: dict[int, Neighbour] = {}
    accepted = 0
    for who, count, gap in frames:
        now += gap
        neighbour = neighbours.setdefault(who, Neighbour.new(now))
        before = (neighbour.inbound.tokens, strangers.tokens)
        if neighbour.accept_inbound(count, now, strangers):
            accepted += count
        else:  # a refusal spends from neither bucket
            assert neighbour.inbound.tokens >= before[0] - 1e-9
    assert accepted <= STRANGER_RECORDS_BURST + now * STRANGER_RECORDS_PER_SECOND + 1e-6
