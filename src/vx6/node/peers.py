"""Keepers that never give up on configured peers: sync links and DHT bootstrap.

Theory of operation. A node may start before the peers it was told about (a whole site
booting at once), and peers go away and come back. Each keeper retries forever on the
schedule of `vx6.core.backoff` (about 1 s, doubling to a cap of about 60 s, with jitter;
reset after a success), and `describe()` says for `vx6 status` what it is doing.

* `PeerKeeper` holds one sync link to a `--peer`: it dials through the `connect`
  collaborator (which returns the link's close future), waits for the link to close and
  dials again. A link counts as a success once it has held for `stable_after` seconds,
  so a peer that accepts and at once drops us is not redialled every second.
* `BootstrapKeeper` fills the DHT routing table from the `--bootstrap` addresses (and the
  sync peers): while the table holds fewer than `enough` contacts it pings every address
  that is not in the table yet and is due, through the `ping` collaborator (the DHT's
  bootstrap; the first answer starts the join lookup). A ping has no failure report of its
  own: an address that did not make it into the table (`contacts`) by its next due time
  failed. An answered address whose contact later leaves the table, or a table that
  empties, starts the rounds again from a reset schedule, so the node re-bootstraps.

The keepers take narrow collaborators (callables for the dial, the DHT and the clock, a
float source for the jitter), never the node, so they are tested on their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vx6.core.backoff import Backoff, RetrySchedule
from vx6.core.dht.contacts import Address, normalize_host
from vx6.errors import VX6Error
from vx6.net.addresses import format_endpoint

log = logging.getLogger("vx6.node")

STABLE_AFTER = 10.0  # seconds a sync link must hold to reset its peer's backoff
ENOUGH_CONTACTS = 3  # the DHT keeper stops pinging once the table holds this many
WATCH_EVERY = 5.0  # how often an idle bootstrap keeper looks at the table again

Clock = Callable[[], float]
Rand = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def _next_retry(backoff: Backoff, now: float) -> float | None:
    return None if backoff.next_at is None else round(max(0.0, backoff.next_at - now), 1)


class PeerKeeper:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect: Callable[[str, int], Awaitable[asyncio.Future[None]]],
        now: Clock,
        rand: Rand,
        sleep: Sleep = asyncio.sleep,
        schedule: RetrySchedule | None = None,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self.host, self.port = host, port
        self._connect = connect
        self._now = now
        self._rand = rand
        self._sleep = sleep
        self.backoff = Backoff(schedule)
        self.stable_after = stable_after
        self.state = "starting"
        self.last_error: str | None = None
        self.connected_at: float | None = None

    async def run(self) -> None:
        while True:
            self.state = "dialling"
            try:
                closed = await self._connect(self.host, self.port)
            except (OSError, VX6Error, TimeoutError) as exc:
                self._failed(str(exc) or type(exc).__name__)
                log.info("peer %s unreachable: %s", self.address, self.last_error)
            else:
                await self._hold(closed)
            delay = 0.0 if self.backoff.next_at is None else self.backoff.next_at - self._now()
            await self._sleep(max(0.0, delay))  # the backoff itself, not synchronisation

    async def _hold(self, closed: asyncio.Future[None]) -> None:
        self.state, self.connected_at = "connected", self._now()
        done, _ = await asyncio.wait([closed], timeout=self.stable_after)
        if not done:
            self.backoff.succeeded()  # it held: the next loss is retried from the start
            self.last_error = None
            await closed
        self.connected_at = None
        self._failed("link closed")

    def _failed(self, error: str) -> None:
        self.last_error = error
        self.backoff.failed(self._now(), self._rand())
        self.state = "retrying"

    @property
    def address(self) -> str:
        return format_endpoint(self.host, self.port)

    def describe(self) -> dict[str, Any]:
        now = self._now()
        connected = self.state == "connected"
        return {
            "address": self.address,
            "state": self.state,
            "attempts": self.backoff.attempts,
            "next_retry_s": None if connected else _next_retry(self.backoff, now),
            "last_error": self.last_error,
        }


@dataclass(slots=True)
class _Target:
    address: Address
    host: str | None  # canonical IP text; None: not an IP literal, the DHT cannot ping it
    backoff: Backoff
    state: str = "starting"
    last_error: str | None = None
    pinged: bool = field(default=False)  # a ping is out and not yet judged


class BootstrapKeeper:
    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        ping: Callable[[list[Address]], object],
        contacts: Callable[[], Iterable[Address]],
        now: Clock,
        rand: Rand,
        sleep: Sleep = asyncio.sleep,
        schedule: RetrySchedule | None = None,
        enough: int = ENOUGH_CONTACTS,
        watch_every: float = WATCH_EVERY,
    ) -> None:
        self._ping = ping
        self._contacts = contacts
        self._now = now
        self._rand = rand
        self._sleep = sleep
        self.enough = enough
        self.watch_every = watch_every
        self.targets: list[_Target] = []
        for address in dict.fromkeys(addresses):  # once each, in the given order
            host = normalize_host(address[0])
            target = _Target(address, host, Backoff(schedule))
            if host is None:
                target.state, target.last_error = "unusable", "not an IP address"
            self.targets.append(target)

    async def run(self) -> None:
        while True:
            wake = self.step()
            await self._sleep(max(0.0, wake - self._now()))  # the schedule, not sync

    def step(self) -> float:
        """Judge the pings that are out, ping what is due; returns when to step again."""
        now = self._now()
        known = self._refresh()
        wake = now + self.watch_every
        if len(known) >= self.enough:
            return wake
        due: list[_Target] = []
        for t in self.targets:
            if t.host is None or t.state == "answered":
                continue
            if t.backoff.due(now):
                if t.pinged:
                    t.last_error = "no answer"
                due.append(t)
                t.backoff.failed(now, self._rand())  # judged at the next due time
                t.pinged, t.state = True, "retrying"
            assert t.backoff.next_at is not None
            wake = min(wake, t.backoff.next_at)
        if due:
            self._ping([t.address for t in due])
        return wake

    def _refresh(self) -> set[Address]:
        """Mark the targets the table now holds; with enough contacts stop and reset."""
        known = {(normalize_host(h), p) for h, p in self._contacts()}
        full = len(known) >= self.enough
        for t in self.targets:
            if t.host is None:
                continue
            if (t.host, t.address[1]) in known:
                if t.state != "answered":
                    log.info("DHT bootstrap %s answered", format_endpoint(*t.address))
                t.state, t.last_error, t.pinged = "answered", None, False
                t.backoff.succeeded()
            elif full or t.state == "answered":
                # Not needed now (the table is full), or its contact left the table: the
                # next time the table runs short, start again from a reset schedule.
                t.state, t.pinged = ("idle" if full else "retrying"), False
                t.backoff.succeeded()
        return {(h, p) for h, p in known if h is not None}

    def describe(self) -> list[dict[str, Any]]:
        self._refresh()
        now = self._now()
        return [
            {
                "address": format_endpoint(*t.address),
                "state": t.state,
                "attempts": t.backoff.attempts,
                "next_retry_s": _next_retry(t.backoff, now) if t.state == "retrying" else None,
                "last_error": t.last_error,
            }
            for t in self.targets
        ]
