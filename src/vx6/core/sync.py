"""Peer sync bookkeeping, sans-IO: what to send a neighbour next, and how much.

Theory of operation. Records spread between sync neighbours in three ways: a full dump
when a sync link comes up (both directions), an immediate push of every newly accepted
record to the other neighbours, and a periodic reconcile that sends each neighbour what
changed since the last one, which repairs pushes that were lost (a link that was down,
a push that was over budget). Both directions are bounded by token buckets per
neighbour, so a flood from one peer costs us a bounded amount of work and a burst of
changes here costs each neighbour a bounded amount of bandwidth; what does not fit now
waits for the next reconcile rather than growing a queue.

Fresh keys are free, so a per-neighbour bucket alone bounds nothing: an attacker opens
link after link, each with a full bucket. Every record from a neighbour the node has no
reason to trust (not a configured peer, pinned owner or allow-listed client) also spends
from one bucket all strangers share (`STRANGER_RECORDS_PER_SECOND`), so checking
signatures and writing the registry costs a bounded share of the node's CPU whatever the
number of links. What is over budget is dropped before it is decoded; peer sync repairs
honest losses (reconcile, republish) and the DHT is the fallback.

A full dump is the expensive answer (up to SYNC_DUMP_LIMIT records for a 2-byte
request), so `DumpLimiter` grants one per peer key per DUMP_INTERVAL and at most
DUMPS_BURST at once for all keys together (refilled at DUMPS_PER_SECOND). A key that had
a dump recently gets none (it is still a neighbour: pushes, and reconciles from the time
of its last dump); one that only found the shared budget spent waits for a later
reconcile (`Neighbour.dump_wanted`). A granted dump is sent in batches of DUMP_BATCH
records; `Neighbour.dump_left` and `dump_after` say where it stands while the link is
paused.

Not every record kind is synced: a hidden-service descriptor lives on its DHT replicas
alone (docs/hidden.md section 3), so `synced_kind` keeps it out of the registry, and
so out of every dump, push and reconcile (`synced_only` filters a push too).
"""

from __future__ import annotations

from dataclasses import dataclass

from vx6.core.budget import RateBudget
from vx6.errors import DecodeError
from vx6.wire.records import Kind, decode_record

RECORDS_PER_SECOND = 200.0
RECORDS_BURST = 4000.0
RECONCILE_EVERY = 30.0
RECONCILE_BATCH = 1000
SYNC_DUMP_LIMIT = 2000  # records in one full dump
DUMP_BATCH = 60  # records sent between two checks of the link's backpressure
DUMP_INTERVAL = 60.0  # one dump per peer key per this many seconds
DUMPS_BURST = 30.0  # dumps for all peers together: at most this many at once,
DUMPS_PER_SECOND = 0.5  # refilled at this rate
MAX_DUMP_KEYS = 4096  # peer keys remembered for DUMP_INTERVAL
# All untrusted neighbours together: ~150 us of signature check and registry write per
# record, so at most ~6 % of a core at the full rate.
STRANGER_RECORDS_PER_SECOND = 400.0
STRANGER_RECORDS_BURST = 2000.0  # one neighbour's full dump fits


SYNCED_KINDS = frozenset({Kind.NODE, Kind.NAME_CLAIM, Kind.SERVICE, Kind.ROTATION})


def synced_kind(kind: int) -> bool:
    """Do records of `kind` spread between sync neighbours (and live in the registry)?"""
    return kind in SYNCED_KINDS


def synced_only(records: list[bytes]) -> list[bytes]:
    """The records of `records` that sync may carry, in order (malformed ones dropped)."""
    kept = []
    for raw in records:
        try:
            kind = decode_record(raw).kind
        except DecodeError:
            continue
        if synced_kind(kind):
            kept.append(raw)
    return kept


@dataclass
class Neighbour:
    """Sync state for one neighbour link."""

    inbound: RateBudget
    outbound: RateBudget
    cursor: float  # registry `received_at` up to which the neighbour has been sent everything
    dump_left: int = 0  # records of the full dump still to send (0: none under way)
    dump_after: int = 0  # registry rowid after which the dump goes on
    dump_wanted: bool = False  # owed a dump that the shared budget could not pay yet

    @classmethod
    def new(cls, now: float) -> Neighbour:
        return cls(
            RateBudget.full(RECORDS_PER_SECOND, RECORDS_BURST, now),
            RateBudget.full(RECORDS_PER_SECOND, RECORDS_BURST, now),
            now,
        )

    def accept_inbound(self, count: int, now: float, strangers: RateBudget | None = None) -> bool:
        """May we process `count` records from this neighbour now? `strangers` is the
        budget all untrusted neighbours share (None for a trusted one); both must allow
        it, and neither is spent unless both do."""
        if strangers is not None and not strangers.can_take(count, now):
            return False
        if not self.inbound.take(count, now):
            return False
        if strangers is not None:
            strangers.take(count, now)
        return True

    def may_push(self, count: int, now: float) -> bool:
        """May we push `count` records to this neighbour now? If not, the next reconcile
        carries them (the cursor is not advanced by pushes)."""
        return self.outbound.take(count, now)


@dataclass
class DumpLimiter:
    """Who may have a full dump now: one per key per `interval`, a global bucket on top."""

    interval: float
    budget: RateBudget
    last: dict[bytes, float]

    @classmethod
    def new(cls, now: float) -> DumpLimiter:
        return cls(DUMP_INTERVAL, RateBudget.full(DUMPS_PER_SECOND, DUMPS_BURST, now), {})

    def recent(self, key: bytes, now: float) -> bool:
        """Did `key` have a dump less than `interval` ago?"""
        last = self.last.get(key)
        return last is not None and 0 <= now - last < self.interval

    def grant(self, key: bytes, now: float) -> bool:
        """True if `key` may have a full dump now (and the grant is recorded)."""
        if self.recent(key, now):
            return False
        if len(self.last) >= MAX_DUMP_KEYS:
            self.last = {k: t for k, t in self.last.items() if 0 <= now - t < self.interval}
            if len(self.last) >= MAX_DUMP_KEYS:
                return False  # that many keys in one interval: the budget below is spent too
        if not self.budget.take(1, now):
            return False
        self.last[key] = now
        return True
