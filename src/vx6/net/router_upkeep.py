"""The circuit router's timer and its log discipline (a mixin of `CircuitRouter`).

Theory of operation. While the node has circuits, a timer runs every `TICK` seconds:
the relay core destroys circuits idle for its `idle_timeout` (`RelayCore.handle_timer`)
and every client circuit this node built sends KEEPALIVE if it saw no cell for
`KEEPALIVE_AFTER` (`ClientCircuit.tick`), so relays never take it for idle. A peer
decides how many circuits end at once (one lost link can end thousands), so every
per-circuit destroy line goes through RATELOG (a few per reason and minute, then a
summary), and a mass destroy (a lost link, an expiry pass: more than three at once)
logs one line with its exact count per reason instead. A link the relay core reports
for too many cells on unknown circuits (StrayCellsExceeded) is closed with
PROTOCOL_ERROR.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping

from vx6.core.circuit.events import CircuitDestroyed, CircuitEvent, StrayCellsExceeded
from vx6.core.circuit.relay import RelayCore
from vx6.errors import CloseCode
from vx6.net.circuit import ClientPath
from vx6.net.link import LinkProtocol
from vx6.net.ports import Clock, Count
from vx6.net.ratelog import RATELOG

log = logging.getLogger("vx6.circuits")

TICK = 10.0  # idle expiry and keepalives (KEEPALIVE_AFTER and evictable_after assume it)
SUMMARY_AFTER = 3  # circuits ending at once that still get a line each


class RouterUpkeep:
    """Mixin: the attributes below are set by `CircuitRouter`."""

    clock: Clock
    count: Count
    core: RelayCore
    clients: dict[tuple[int, int], ClientPath]
    _links: Mapping[int, LinkProtocol]
    _timer: asyncio.TimerHandle | None
    _summarising: bool

    def process(self, events: list[CircuitEvent]) -> None:
        raise NotImplementedError

    def _summarised(self, events: list[CircuitEvent], what: str) -> None:
        """Process what may be a mass destroy: a few circuits get their own lines, more
        than `SUMMARY_AFTER` one line for all of them, with the count per reason."""
        reasons = Counter(e.reason.name for e in events if isinstance(e, CircuitDestroyed))
        self._summarising = sum(reasons.values()) > SUMMARY_AFTER
        try:
            self.process(events)
        finally:
            self._summarising = False
        if sum(reasons.values()) > SUMMARY_AFTER:
            counts = ", ".join(f"{name} {n}" for name, n in sorted(reasons.items()))
            total = sum(reasons.values())
            msg = "%s: %d circuits destroyed (%s)"
            RATELOG.warning(log, "circuits-mass-destroy", msg, what, total, counts)

    def _arm_timer(self) -> None:
        if self._timer is not None or not (len(self.core) or self.clients):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a test driving the router by hand): no timer
        self._timer = loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self.clock.monotonic()
        events = self.core.handle_timer(now)
        for path in list(self.clients.values()):
            events += path.core.tick(now)
        self._summarised(events, "idle circuits expired")

    def _stray_limit(self, event: StrayCellsExceeded) -> None:
        link = self._links.get(event.link)
        self.count("links_closed_stray_cells")
        peer = link.peer_address if link is not None else event.link
        RATELOG.warning(log, "stray-cells", "%s: too many cells for unknown circuits", peer)
        if link is not None:
            link.close(CloseCode.PROTOCOL_ERROR, "too many cells for unknown circuits")

    def _log_destroyed(self, event: CircuitDestroyed, quiet: bool, role: str) -> None:
        if self._summarising:
            return  # one summary line instead
        level = logging.INFO if quiet else logging.WARNING
        side = "here" if event.local else "by a neighbour"
        reason = f"{event.reason.name}: {event.detail}"
        category = f"circuit-destroyed-{event.reason.name.lower()}"
        msg = "%s circuit %d destroyed %s: %s"
        RATELOG.log(log, level, category, msg, role, event.circuit_id, side, reason)
