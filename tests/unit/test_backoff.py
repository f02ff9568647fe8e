"""The retry schedule (vx6.core.backoff): bounded, growing to the cap, reset by a success,
and the same for the same injected randomness."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vx6.core.backoff import Backoff, RetrySchedule

schedules = st.builds(
    RetrySchedule,
    start=st.floats(0.01, 10.0),
    cap=st.floats(10.0, 600.0),
    factor=st.floats(1.0, 4.0),
    jitter=st.floats(0.0, 0.9),
)
rands = st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=60)


@given(schedules, rands, st.floats(0.0, 1e9))
def test_delays_never_exceed_cap_plus_jitter(
    schedule: RetrySchedule, draws: list[float], start_at: float
) -> None:
    backoff = Backoff(schedule)
    now = start_at
    for rand in draws:
        next_at = backoff.failed(now, rand)
        delay = backoff.last_delay  # next_at - now loses bits when now is large
        assert next_at == now + delay
        assert 0 < delay <= schedule.cap * (1 + schedule.jitter) * (1 + 1e-9)
        assert delay >= min(schedule.start, schedule.cap) * (1 - schedule.jitter) * (1 - 1e-9)
        now = next_at


@given(schedules, st.integers(1, 80))
def test_plain_delay_grows_until_the_cap_then_stays(schedule: RetrySchedule, n: int) -> None:
    delays = [schedule.plain_delay(i) for i in range(1, n + 1)]
    assert delays[0] == pytest.approx(min(schedule.start, schedule.cap))
    for before, after in itertools.pairwise(delays):
        assert after >= before
        assert after == schedule.cap or after == pytest.approx(before * schedule.factor)
    assert max(delays) <= schedule.cap


def test_reaches_the_cap_and_stays_there() -> None:
    backoff = Backoff(RetrySchedule(start=1.0, cap=60.0, jitter=0.0))
    delays = []
    now = 0.0
    for _ in range(12):
        nxt = backoff.failed(now, 0.5)
        delays.append(nxt - now)
        now = nxt
    assert delays[:7] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert set(delays[6:]) == {60.0}


@given(schedules, rands, rands)
def test_success_resets_the_schedule(
    schedule: RetrySchedule, before: list[float], after: list[float]
) -> None:
    fresh, used = Backoff(schedule), Backoff(schedule)
    for rand in before:
        used.failed(0.0, rand)
    used.succeeded()
    assert used.attempts == 0 and used.next_at is None and used.due(0.0)
    for rand in after:  # from here on both are the same schedule
        assert used.failed(5.0, rand) == fresh.failed(5.0, rand)
        assert used.attempts == fresh.attempts


@given(schedules, rands)
def test_deterministic_for_the_same_randomness(schedule: RetrySchedule, draws: list[float]) -> None:
    a, b = Backoff(schedule), Backoff(schedule)
    assert [a.failed(1.0, r) for r in draws] == [b.failed(1.0, r) for r in draws]


def test_due_only_once_the_delay_has_passed() -> None:
    backoff = Backoff(RetrySchedule(start=2.0, cap=8.0, jitter=0.0))
    assert backoff.due(100.0)  # nothing failed yet: try at once
    assert backoff.failed(100.0, 0.3) == 102.0
    assert not backoff.due(101.9)
    assert backoff.due(102.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"start": 0.0}, {"start": 5.0, "cap": 1.0}, {"jitter": 1.0}, {"factor": 0.5}],
)
def test_nonsense_schedules_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetrySchedule(**kwargs)
