"""Finding relays through the DHT's relay directory (core/dht/directory.py).

Theory of operation. A node that joined by `--bootstrap` alone learns no relay by peer
sync, so it looks up the relay directory keys: one lookup per bucket key, all at once.
What the lookups find reaches the registry through RecordHub (`on_dht_event`, the one
place DHT records are accepted, which takes at most `directory.ACCEPT_PER_LOOKUP`
entries per lookup, `directory.PER_PREFIX` per network); route planning then sees them
like relays learnt by sync.

When: `run` looks soon after start and again after `FEW_FIRST` seconds, doubling up
to `FEW_MAX`, while fewer than `WANTED` relays are known or the last round found relays
the ones before had not (holders answer with a random few and a lookup may end at
holders that miss an entry, so one round rarely sees a whole directory); after
`QUIET_ROUNDS` rounds in a row found nothing new with enough known, every
`REFRESH_EVERY` (new relays, fresh onion keys). A hostile directory cannot keep a node
looking fast: the delay doubles every round either way. `on_demand()`, called by the circuit
pool when a route finds too few usable relays, looks at once unless a look ended less
than `DEMAND_GAP` ago. Only one look runs at a time; a caller that comes during one
waits for it. So the DHT traffic is bounded: at most one round of
RELAY_DIRECTORY_BUCKETS lookups per DEMAND_GAP, whatever asks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from vx6.core.dht.directory import RELAY_DIRECTORY_KEYS
from vx6.net.ports import Clock

log = logging.getLogger("vx6.relays")

WANTED = 8  # relays known before the directory is looked at only now and then
FEW_FIRST = 2.0
FEW_MAX = 300.0
REFRESH_EVERY = 1800.0
DEMAND_GAP = 5.0
QUIET_ROUNDS = 2  # rounds in a row that found no new relay before looking only now and then


class RelayDirectory:
    def __init__(
        self,
        *,
        lookup: Callable[[bytes], Awaitable[bool]],
        known: Callable[[], int],
        clock: Clock,
    ) -> None:
        self.lookup = lookup  # RecordHub.lookup: the records found are accepted there
        self.known = known  # relays route planning can choose from, this node not counted
        self.clock = clock
        self.rounds = 0
        self._running: asyncio.Task[None] | None = None
        self._last_end: float | None = None

    async def refresh(self) -> None:
        """Look up every directory key (joining a look already under way)."""
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._look())
        await asyncio.shield(self._running)

    async def _look(self) -> None:
        before = self.known()
        try:
            await asyncio.gather(*(self.lookup(key) for key in RELAY_DIRECTORY_KEYS))
        finally:
            self._last_end = self.clock.monotonic()
            self.rounds += 1
        after = self.known()
        if after != before:
            log.info("relay directory: %d relays known (was %d)", after, before)

    async def on_demand(self) -> None:
        """Look now, unless a look ended less than DEMAND_GAP ago (then join one under
        way, if any)."""
        recent = self._last_end is not None and (
            self.clock.monotonic() - self._last_end < DEMAND_GAP
        )
        if not recent or (self._running is not None and not self._running.done()):
            await self.refresh()

    async def run(self) -> None:
        delay = FEW_FIRST
        quiet = 0
        while True:
            before = self.known()
            try:
                await self.refresh()
            except Exception:  # a failed round must not end the loop; the next may work
                log.exception("relay directory lookup failed")
            after = self.known()
            quiet = quiet + 1 if after <= before else 0
            if after >= WANTED and quiet >= QUIET_ROUNDS:
                delay = FEW_FIRST
                await self.clock.sleep(REFRESH_EVERY)  # periodic timer, not synchronisation
            else:
                await self.clock.sleep(delay)  # periodic timer, not synchronisation
                delay = min(FEW_MAX, delay * 2)
