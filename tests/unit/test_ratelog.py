"""The rate-limited log: a burst per interval, one summary line, exact counters."""

from __future__ import annotations

import logging

import pytest

from vx6.net.ratelog import RateLog


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_summary_and_exact_counts(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    rl = RateLog(burst=3, interval=60.0, clock=clock)
    log = logging.getLogger("vx6.test.ratelog")
    with caplog.at_level(logging.INFO, logger="vx6.test.ratelog"):
        written = [rl.warning(log, "junk", "junk from %s", i) for i in range(1000)]
        assert written.count(True) == 3
        assert len(caplog.records) == 3
        clock.now = 61.0
        rl.flush()
    assert rl.count("junk") == 1000
    assert len(caplog.records) == 4
    assert "junk: 997 more suppressed" in caplog.records[-1].getMessage()


def test_next_interval_writes_summary_then_a_fresh_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    rl = RateLog(burst=1, interval=10.0, clock=clock)
    log = logging.getLogger("vx6.test.ratelog")
    with caplog.at_level(logging.INFO, logger="vx6.test.ratelog"):
        for _ in range(5):
            rl.info(log, "a", "line")
        clock.now = 10.0
        rl.info(log, "a", "line")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["line", "a: 4 more suppressed in the last 10 s", "line"]
    assert rl.count("a") == 6


def test_categories_are_independent_and_bounded() -> None:
    clock = FakeClock()
    rl = RateLog(burst=1, interval=10.0, clock=clock)
    log = logging.getLogger("vx6.test.ratelog")
    assert rl.warning(log, "a", "x") and rl.warning(log, "b", "x")
    assert not rl.warning(log, "a", "x")
    for i in range(2000):
        rl.warning(log, f"cat{i}", "x")
    assert len(rl._windows) <= 512
