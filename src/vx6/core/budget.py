"""Token buckets, sans-IO: the one rate limit that every core uses.

Theory of operation. A `RateBudget` holds up to `burst` tokens and gains `rate` a second;
spending takes tokens if there are enough, else spends nothing and says no. Time comes
in as `now`; a clock that steps back mints nothing (the refill only counts forward).
`SourceLimiter` keeps one budget per source (an address, a network, a key) for a
bounded number of sources: when the table is full the source heard from least recently
is forgotten, and a forgotten source starts again with a full bucket, so the table costs
at most `max_sources` entries and lets through at most `max_sources x burst` at once.

Users: a link's control frames (core/link.py), peer sync in both directions
(core/sync.py), circuit creations per source (core/circuit/limits.py) and DHT datagrams
per source address (core/dht/guards.py).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class RateBudget:
    """A token bucket: `rate` tokens per second, at most `burst` saved up."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> RateBudget:
        return cls(rate, burst, burst, now)

    def take(self, n: float, now: float) -> bool:
        """Spend `n` tokens if there are that many; refill for the time since last use."""
        if not self.can_take(n, now):
            return False
        self.tokens -= n
        return True

    def can_take(self, n: float, now: float) -> bool:
        """Whether `n` tokens are there now (refilled, none spent)."""
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        return n <= self.tokens


class SourceLimiter:
    """One RateBudget per source, at most `max_sources` of them (least recently heard
    from forgotten first)."""

    def __init__(self, rate: float, burst: float, max_sources: int) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max(1, max_sources)
        self._buckets: dict[Hashable, RateBudget] = {}

    def allow(self, source: Hashable, now: float) -> bool:
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            if len(self._buckets) >= self._max:
                del self._buckets[next(iter(self._buckets))]
            bucket = RateBudget.full(self._rate, self._burst, now)
        self._buckets[source] = bucket  # re-insert: dict order tracks recent use
        return bucket.take(1, now)

    def __len__(self) -> int:
        return len(self._buckets)
