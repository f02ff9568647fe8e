"""The token buckets every core shares (core/budget.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vx6.core.budget import RateBudget, SourceLimiter


def test_a_clock_that_steps_back_mints_nothing() -> None:
    budget = RateBudget.full(rate=10, burst=5, now=100.0)
    assert all(budget.take(1, 100.0) for _ in range(5))
    assert not budget.take(1, 50.0)  # an earlier time: no refill
    assert budget.take(1, 100.2)  # 0.2 s forward: two tokens back


@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.floats(0, 0.2, allow_nan=False)),
        max_size=300,
    )
)
def test_each_source_gets_at_most_its_burst_plus_its_rate(
    requests: list[tuple[int, float]],
) -> None:
    rate, burst = 5.0, 3.0
    limiter = SourceLimiter(rate, burst, max_sources=100)
    now = 0.0
    allowed: dict[int, int] = {}
    for source, gap in requests:
        now += gap
        if limiter.allow(source, now):
            allowed[source] = allowed.get(source, 0) + 1
    for count in allowed.values():
        assert count <= burst + now * rate + 1e-6
    assert len(limiter) <= 10


def test_the_table_forgets_the_source_heard_from_least_recently() -> None:
    limiter = SourceLimiter(rate=0.0, burst=1.0, max_sources=2)
    assert limiter.allow("a", 0.0) and limiter.allow("b", 0.0)
    assert not limiter.allow("a", 0.0)  # a is now the most recent, b the least
    assert limiter.allow("c", 0.0)  # the table is full: b is forgotten
    assert len(limiter) == 2
    assert not limiter.allow("a", 0.0)  # a was kept, with its empty bucket
    assert limiter.allow("b", 0.0)  # b starts again with a full bucket
