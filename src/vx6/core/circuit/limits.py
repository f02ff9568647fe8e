"""Relay limits: creation rate per source (token buckets, `now` passed in) and the knobs
of the relay core.

Theory of operation. Each source that sends CREATE cells (its /48 or /24, or on loopback
the peer itself: chosen by the adapter, see `circuits.py`) has a token bucket of
`creation_burst` tokens, refilled at `creations_per_second`. A CREATE takes one token;
with none left, the relay refuses the circuit (RATE_LIMITED) before it does any key
exchange, so a flood costs the relay a lookup per cell. The buckets are refilled lazily,
from the time since the bucket was last used. At most `max_sources` buckets are kept:
when a new source arrives with the table full, the least recently used one is forgotten.
A source that is forgotten and comes back starts with a full burst again, so a flood from
many sources is bounded by max_sources x burst, never by the memory of a table that keeps
growing."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RelayLimits:
    max_circuits: int = 8192
    creations_per_second: float = 20.0  # per source
    creation_burst: float = 40.0
    memory_budget: int = 256 * 1024 * 1024  # bytes over all circuits
    circuit_overhead: int = 4096  # bytes charged per circuit besides its queued cells
    # One circuit may hold at most this much queued; more means its next hop stopped
    # reading while the client keeps sending, which the stream windows should prevent.
    max_circuit_buffer: int = 40 * 1024 * 1024
    max_sources: int = 4096  # token buckets remembered at once


class TokenBucket:
    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = now

    def take(self, now: float) -> bool:
        # A clock that steps back must not mint tokens, hence max().
        elapsed = max(0.0, now - self._stamp)
        self._stamp = max(self._stamp, now)
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class SourceLimiter:
    """One bucket per source, at most `max_sources` of them: when full, the bucket used
    least recently is forgotten (a forgotten source starts again with a full burst, which is
    bounded by max_sources x burst anyway)."""

    def __init__(self, rate: float, burst: float, max_sources: int) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max(1, max_sources)
        self._buckets: dict[Hashable, TokenBucket] = {}

    def allow(self, source: Hashable, now: float) -> bool:
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            if len(self._buckets) >= self._max:
                del self._buckets[next(iter(self._buckets))]
            bucket = TokenBucket(self._rate, self._burst, now)
        self._buckets[source] = bucket  # re-insert: dict order tracks recent use
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)
