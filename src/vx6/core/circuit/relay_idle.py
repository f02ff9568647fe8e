"""Idle circuits at a relay, sans-IO: expiry after `idle_timeout`, and eviction of the
longest-idle circuit when the table is full.

`RelayCore` (core/circuit/relay.py) inherits these operations. Theory of operation:

* Activity costs the data path nothing: every cell through this hop advances one of the
  circuit's two layer counters, so a circuit is active if their sum changed since it was
  last looked at (`_observe`), and `active_at` is the time of the look that saw the
  change. `handle_timer` looks at every circuit (the router calls it every 10 s; 8192
  circuits cost a few ms), so `active_at` is never earlier than the real last cell and
  at most one timer period later: a circuit is never thought idler than it is.
* One heap of (active_at, serial), one entry per circuit, oldest first. Looking at the
  top: a circuit that ended is dropped from the heap; one that was active since its
  entry goes back in under its new time; otherwise the top is the circuit idle longest,
  and if it is idle for `idle_timeout` it is destroyed (`handle_timer`), or, with the
  table full, evicted for a new CREATE if it is idle for `evictable_after`
  (`_evictable`). Each entry is re-pushed at most once per activity seen, and the heap
  is rebuilt when stale entries outnumber live ones, so it stays O(circuits).
* Why eviction cannot be turned against honest circuits: only circuits idle for
  `evictable_after` (60 s) can go, the longest idle first. A circuit that carries
  traffic, or a client circuit that sends KEEPALIVE after 20 s without a cell (at most
  ~30 s between cells at the router's 10 s tick), is never that idle, so an attacker who
  creates circuits at the cap evicts only circuits nobody uses (its own included).
  Holding the table instead costs it a cell per circuit per minute, on at most
  `max_circuits_per_link` circuits per link, `max_circuits_per_source` per source and
  `creations_per_second` per source.
"""

from __future__ import annotations

import heapq

from vx6.core.circuit.events import CircuitEvent
from vx6.core.circuit.limits import RelayLimits
from vx6.core.circuit.relay_circuit import RelayedCircuit
from vx6.errors import DestroyReason


class RelayIdle:
    """Mixin: idle handling of `RelayCore`. The attributes below are set by `RelayCore`."""

    limits: RelayLimits
    _by_serial: dict[int, RelayedCircuit]
    _idle_heap: list[tuple[float, int]]
    counts: dict[str, int]

    def _remove(
        self,
        circuit: RelayedCircuit,
        reason: DestroyReason,
        detail: str,
        *,
        notify_prev: bool = True,
        notify_next: bool = True,
        local: bool = True,
        lost_link: int | None = None,
    ) -> list[CircuitEvent]:
        raise NotImplementedError

    def _track(self, circuit: RelayedCircuit) -> None:
        heapq.heappush(self._idle_heap, (circuit.active_at, circuit.serial))
        if len(self._idle_heap) > 2 * len(self._by_serial) + 64:
            self._idle_heap = [(c.active_at, c.serial) for c in self._by_serial.values()]
            heapq.heapify(self._idle_heap)

    @staticmethod
    def _observe(circuit: RelayedCircuit, now: float) -> None:
        counted = circuit.cells_counted()
        if counted != circuit.seen:
            circuit.seen = counted
            circuit.active_at = max(circuit.active_at, now)

    def _idlest(self, now: float) -> RelayedCircuit | None:
        """The circuit idle longest (heap top after bringing it up to date)."""
        heap = self._idle_heap
        while heap:
            stamp, serial = heap[0]
            circuit = self._by_serial.get(serial)
            if circuit is None:
                heapq.heappop(heap)
                continue
            self._observe(circuit, now)
            if circuit.active_at != stamp:
                heapq.heapreplace(heap, (circuit.active_at, serial))
                continue
            return circuit
        return None

    def _evictable(self, now: float) -> RelayedCircuit | None:
        """With the table full: the circuit a new CREATE may replace, if any."""
        circuit = self._idlest(now)
        if circuit is None or now - circuit.active_at < self.limits.evictable_after:
            return None
        return circuit

    def next_deadline(self) -> float | None:
        """When `handle_timer` may have a circuit to expire (None: no circuits)."""
        # The top's stamp is at most any circuit's active_at: a lower bound, never late.
        while self._idle_heap:
            stamp, serial = self._idle_heap[0]
            if serial in self._by_serial:
                return stamp + self.limits.idle_timeout
            heapq.heappop(self._idle_heap)
        return None

    def handle_timer(self, now: float) -> list[CircuitEvent]:
        """Destroy the circuits idle for `idle_timeout`: DESTROY(IDLE) both ways."""
        out: list[CircuitEvent] = []
        for each in self._by_serial.values():
            self._observe(each, now)
        timeout = self.limits.idle_timeout
        while (idlest := self._idlest(now)) is not None and now - idlest.active_at >= timeout:
            heapq.heappop(self._idle_heap)
            self.counts["expired_idle"] += 1
            idle = now - idlest.active_at
            out += self._remove(idlest, DestroyReason.IDLE, f"no cell for {idle:.0f} s")
        return out
