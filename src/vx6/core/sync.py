"""Peer sync bookkeeping, sans-IO: what to send a neighbour next, and how much.

Theory of operation. Records spread between sync neighbours in three ways: a full dump
when a sync link comes up (both directions), an immediate push of every newly accepted
record to the other neighbours, and a periodic reconcile that sends each neighbour what
changed since the last one, which repairs pushes that were lost (a link that was down,
a push that was over budget). Both directions are bounded by token buckets per
neighbour, so a flood from one peer costs us a bounded amount of work and a burst of
changes here costs each neighbour a bounded amount of bandwidth; what does not fit now
waits for the next reconcile rather than growing a queue.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORDS_PER_SECOND = 200.0
RECORDS_BURST = 4000.0
RECONCILE_EVERY = 30.0
RECONCILE_BATCH = 1000


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
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


@dataclass
class Neighbour:
    """Sync state for one neighbour link."""

    inbound: RateBudget
    outbound: RateBudget
    cursor: float  # registry `received_at` up to which the neighbour has been sent everything

    @classmethod
    def new(cls, now: float) -> Neighbour:
        return cls(
            RateBudget.full(RECORDS_PER_SECOND, RECORDS_BURST, now),
            RateBudget.full(RECORDS_PER_SECOND, RECORDS_BURST, now),
            now,
        )

    def accept_inbound(self, count: int, now: float) -> bool:
        """May we process `count` records from this neighbour now?"""
        return self.inbound.take(count, now)

    def may_push(self, count: int, now: float) -> bool:
        """May we push `count` records to this neighbour now? If not, the next reconcile
        carries them (the cursor is not advanced by pushes)."""
        return self.outbound.take(count, now)
