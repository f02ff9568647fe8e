"""Exponential backoff with jitter for redialling peers (sans-IO).

Theory of operation. One `Backoff` per thing we keep trying (a sync peer, a bootstrap
address). Each failure at `now` schedules the next try `delay` seconds later, where the
plain delay is `start * factor**(attempts - 1)` capped at `cap`, and the jitter multiplies
it by a factor in [1 - jitter, 1 + jitter] drawn from the `rand` float the caller passes
(in [0, 1)), so a crowd of nodes that lost the same peer at once does not come back in
lock step. A success resets the count, so the next failure is retried after about
`start` again. The clock and the randomness are arguments: the same inputs give the
same schedule (tests inject both).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    start: float = 1.0  # seconds before the first retry
    cap: float = 60.0  # the plain delay stops growing here
    factor: float = 2.0
    jitter: float = 0.2  # +-20 %

    def __post_init__(self) -> None:
        if not (0 < self.start <= self.cap):
            raise ValueError("retry schedule: need 0 < start <= cap")
        if self.factor < 1 or not (0 <= self.jitter < 1):
            raise ValueError("retry schedule: need factor >= 1 and 0 <= jitter < 1")

    def plain_delay(self, attempts: int) -> float:
        """The delay after the `attempts`-th failure in a row, before jitter."""
        if attempts <= 0:
            return 0.0
        delay = self.start
        for _ in range(attempts - 1):  # a loop, not a power: no overflow after many tries
            delay *= self.factor
            if delay >= self.cap:
                return self.cap
        return min(delay, self.cap)


class Backoff:
    def __init__(self, schedule: RetrySchedule | None = None) -> None:
        self.schedule = schedule or RetrySchedule()
        self.attempts = 0  # failures since the last success
        self.next_at: float | None = None  # None: try at once (nothing failed yet)
        self.last_delay = 0.0

    def failed(self, now: float, rand: float) -> float:
        """One more failure at `now`; `rand` in [0, 1). Returns when to try again."""
        self.attempts += 1
        s = self.schedule
        rand = min(max(rand, 0.0), 1.0)
        self.last_delay = s.plain_delay(self.attempts) * (1 - s.jitter + 2 * s.jitter * rand)
        self.next_at = now + self.last_delay
        return self.next_at

    def succeeded(self) -> None:
        self.attempts = 0
        self.next_at = None
        self.last_delay = 0.0

    def due(self, now: float) -> bool:
        return self.next_at is None or now >= self.next_at
