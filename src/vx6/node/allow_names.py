"""Chasing the names on allow-lists that do not resolve yet, through the DHT.

Theory of operation. An allow-list entry that is a name allows the key the name resolves
to, and a name resolves from the registry alone (node/resolver.py). A name the registry
knows no claim for (its owner never synced with us, or does not exist yet) would allow
nobody until a claim happened to arrive by sync; so every such name is chased here: one
task per name asks the DHT for the name's claim, then waits, with a doubling delay up to
`max_delay`, and asks again, until the name resolves or leaves every allow-list. A claim
that arrives by sync meanwhile needs nothing from here: it moves the registry's
generation, which drops the owner's remembered allowed keys (store/memo.py), and the
next chase round sees the name resolved and stops.

`nudge` (a refused stream while names are unresolved) cuts the current waits short, at
most once per `nudge_every` seconds, so a peer cannot make us flood the DHT. The number
of names chased at once is bounded (`max_names`); the rest are chased as earlier ones
finish (every `want` call, i.e. every expose and every refused stream, tops them up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from vx6.core.dht.keys import name_key
from vx6.net.ports import Clock, Spawn
from vx6.node.resolver import Lookup

log = logging.getLogger("vx6.owner")

FIRST_DELAY = 2.0
MAX_DELAY = 300.0
NUDGE_EVERY = 10.0
MAX_NAMES = 256


class AllowNameChaser:
    def __init__(
        self,
        lookup: Lookup,
        unresolved: Callable[[], set[str]],
        spawn: Spawn,
        clock: Clock,
        *,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        nudge_every: float = NUDGE_EVERY,
        max_names: int = MAX_NAMES,
    ) -> None:
        self.lookup = lookup
        self.unresolved = unresolved  # the allow-list names that resolve to no key now
        self.spawn = spawn
        self.clock = clock
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.nudge_every = nudge_every
        self.max_names = max_names
        self._chasing: dict[str, asyncio.Event] = {}  # name -> wakes its wait early
        self._tried: dict[str, asyncio.Event] = {}  # name -> set after its first lookup
        self._last_nudge = -float("inf")
        self.lookups = 0

    def want(self, names: Iterable[str] | None = None) -> None:
        """Start chasing these names (default: every unresolved one) not chased yet."""
        for name in sorted(self.unresolved() if names is None else set(names)):
            if name in self._chasing or len(self._chasing) >= self.max_names:
                continue
            self._chasing[name] = asyncio.Event()
            self._tried[name] = asyncio.Event()
            self.spawn(self._chase(name))

    def nudge(self) -> bool:
        """Look the unresolved names up again now (rate-limited); True if it did."""
        now = self.clock.monotonic()
        if now - self._last_nudge < self.nudge_every:
            return False
        self._last_nudge = now
        self.want()
        for wake in self._chasing.values():
            wake.set()
        return True

    async def first_round(self, names: Iterable[str], timeout: float) -> None:
        """Wait, at most `timeout` seconds, for one lookup of each of these names."""
        waits = [self._tried[n].wait() for n in set(names) if n in self._tried]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), timeout)

    @property
    def chasing(self) -> set[str]:
        return set(self._chasing)

    async def _chase(self, name: str) -> None:
        delay = self.first_delay
        try:
            while name in self.unresolved():
                self.lookups += 1
                try:
                    await self.lookup(name_key(name))
                finally:
                    self._tried[name].set()
                if name not in self.unresolved():
                    log.info("allow-list name %s resolved", name)
                    break
                wake = self._chasing[name]
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    # The backoff itself, cut short by a nudge: not synchronisation.
                    await asyncio.wait_for(wake.wait(), delay)
                delay = min(delay * 2, self.max_delay)
        finally:
            self._tried.pop(name, None)
            self._chasing.pop(name, None)
