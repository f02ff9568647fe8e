"""Relay limits: creation rate per source (core/budget.py's buckets), cells for
circuits the core does not hold (`StrayCells`), and the knobs of the relay core.

Theory of operation. Each source that sends CREATE cells (its /48 or /24, or on loopback
the peer itself: chosen by the adapter, see `circuits.py`) has a token bucket of
`creation_burst` tokens, refilled at `creations_per_second`. A CREATE takes one token;
with none left, the relay refuses the circuit (RATE_LIMITED) before it does any key
exchange, so a flood costs the relay a lookup per cell. The buckets are refilled lazily,
from the time since the bucket was last used. At most `max_sources` buckets are kept:
when a new source arrives with the table full, the least recently used one is forgotten.
A source that is forgotten and comes back starts with a full burst again, so a flood from
many sources is bounded by max_sources x burst, never by the memory of a table that keeps
growing.

Stray cells (for a (link, circuit id) the core does not hold) are of two kinds. *Late*
cells are for a circuit that ended here within `late_grace` seconds: its neighbour had
them in flight before our DESTROY reached it (up to a stream window's worth), so they are
counted and dropped, never held against the link. Any other stray is *unknown*: counted,
dropped, and a link that sends more than `stray_limit` of them within `stray_interval`
is reported (`over_limit`) and the router closes it: an honest peer has no reason to
send cells on circuits that never existed. The memory of ended circuits is bounded
(`max_ended`, oldest forgotten first; a forgotten one only makes its late cells count
as unknown)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any


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
    # Idle circuits (relay_idle.py): no cell in either direction for `idle_timeout`
    # destroys a circuit (DESTROY(IDLE) both ways); with the table full, a new CREATE
    # evicts the circuit idle the longest, but only one idle for `evictable_after` at
    # least: clients send KEEPALIVE after 20 s without a cell, so an honest circuit is
    # never that idle and creating circuits never evicts it.
    idle_timeout: float = 300.0
    evictable_after: float = 60.0
    max_circuits_per_link: int = 512  # circuits whose previous hop is one link
    max_circuits_per_source: int = 2048  # ... created from one source (a /48, or a key)
    stray_limit: int = 256  # unknown-circuit cells per link and interval before it closes
    stray_interval: float = 10.0
    late_grace: float = 60.0  # cells for a circuit this recently ended are only "late"


CircuitKey = tuple[int, int]


class Holdings:
    """How many circuits each previous-hop link and each source holds, against the caps:
    one peer cannot hold the table with many links (per source: its /48 or /24, or its
    key on loopback) nor one link with many sources."""

    def __init__(self, per_link: int, per_source: int) -> None:
        self._caps = (per_link, per_source)
        self.by_link: dict[int, int] = {}
        self.by_source: dict[Hashable, int] = {}

    def refusal(self, link: int, source: Hashable) -> str | None:
        if self.by_link.get(link, 0) >= self._caps[0]:
            return "circuits on this link"
        if self.by_source.get(source, 0) >= self._caps[1]:
            return f"circuits from {source!r}"
        return None

    def add(self, link: int, source: Hashable) -> None:
        self.by_link[link] = self.by_link.get(link, 0) + 1
        self.by_source[source] = self.by_source.get(source, 0) + 1

    def remove(self, link: int, source: Hashable) -> None:
        _drop_one(self.by_link, link)
        _drop_one(self.by_source, source)


def _drop_one(table: dict[Any, int], key: Hashable) -> None:
    held = table.get(key, 0) - 1
    if held > 0:
        table[key] = held
    else:
        table.pop(key, None)


class StrayCells:
    """Counts cells for circuits the core does not hold and says when a link is over
    its limit of unknown ones (see the module docstring)."""

    def __init__(self, limit: int, interval: float, grace: float, max_ended: int) -> None:
        self._limit = limit
        self._interval = interval
        self._grace = grace
        self._max_ended = max(1, max_ended)
        self._ended: dict[CircuitKey, float] = {}  # insertion order = time ended
        self._windows: dict[int, tuple[float, int]] = {}  # link -> (window start, unknown)
        self.late = 0
        self.unknown = 0

    def ended(self, key: CircuitKey, now: float) -> None:
        self._ended.pop(key, None)
        self._ended[key] = now
        if len(self._ended) > self._max_ended:
            del self._ended[next(iter(self._ended))]

    def received(self, key: CircuitKey, now: float) -> bool:
        """One stray cell on key's link; True if that link is now over its limit."""
        ended = self._ended.get(key)
        if ended is not None and now - ended <= self._grace:
            self.late += 1
            return False
        self.unknown += 1
        start, count = self._windows.get(key[0], (now, 0))
        if now - start >= self._interval or now < start:
            start, count = now, 0
        self._windows[key[0]] = (start, count + 1)
        return count + 1 > self._limit

    def link_lost(self, link: int) -> None:
        self._windows.pop(link, None)

    def expire(self, now: float) -> None:
        while self._ended:
            key, at = next(iter(self._ended.items()))
            if now - at <= self._grace:
                break
            del self._ended[key]
