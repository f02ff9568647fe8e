"""The narrow interfaces the adapters and the node's roles are handed.

Every role is given exactly the collaborators it uses, as these protocols (or plain
callables), by the composition root (`vx6.node.wiring`); none of them sees the node as a
whole. The clock is one of them: every timer, rate budget and age in the node layer
reads one injected `Clock`, and every periodic timer sleeps on it, so a test can drive
a role with the kit's fake clock.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from vx6.net.link import LinkProtocol
from vx6.wire.cells import Endpoint


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: every timer, rate and age."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch: only for what is signed or stored with a date
        (record issue and expiry times, when a peer was last seen)."""
        ...

    def sleep(self, seconds: float) -> Awaitable[None]:
        """Wait this long on the monotonic clock: every periodic timer and backoff."""
        ...


class SystemClock:
    # The C functions themselves, not methods wrapping them: the link reads the clock on
    # every read, and a Python frame there costs more than the clock.
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)
    sleep = staticmethod(asyncio.sleep)


SYSTEM_CLOCK = SystemClock()


# n bytes from a cryptographically secure source.
Random = Callable[[int], bytes]
SYSTEM_RANDOM: Random = os.urandom


class Count(Protocol):
    def __call__(self, what: str, n: int = 1) -> None: ...


class Spawn(Protocol):
    def __call__(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task under the node's TaskGroup; a failure is logged."""
        ...


class LinkSource(Protocol):
    """The one dialler, as the router and the roles see it."""

    def open_link(self, identity: bytes) -> LinkProtocol | None:
        """The open link to this node, if there is one (no dial)."""
        ...

    async def link_to(
        self, identity: bytes, endpoints: Sequence[Endpoint] = (), *, for_peer: bool = False
    ) -> LinkProtocol:
        """An open link to this node: the one we have, or a dial (its identity proved).
        `for_peer`: dialled on a peer's behalf (a circuit), so never to our loopback."""
        ...
