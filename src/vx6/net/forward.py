"""A forwarded local port: every connection accepted on it becomes one stream.

Theory of operation. The forward listens on a local address (127.0.0.1 unless told
otherwise). Each accepted connection gets a StreamPipe at once, with reading paused;
a task then asks the client side for a stream (resolve, find or dial the link, OPEN)
and binds the pipe to it. Bytes may flow before the owner answers (0-RTT); if the owner
refuses, the local connection is aborted and the reason logged and kept for `status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from vx6.errors import StreamFailed, VX6Error
from vx6.net.addresses import format_endpoint
from vx6.net.pipe import StreamPipe

log = logging.getLogger("vx6.forward")

Opener = Callable[[StreamPipe], Awaitable[None]]


class Forward:
    def __init__(
        self,
        name: str,
        service: str,
        local_host: str,
        local_port: int,
        opener: Opener,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        via: tuple[str, int] | None = None,
        dual_loopback: bool = False,
    ) -> None:
        self.name = name
        self.service = service
        self.local_host = local_host
        self.local_port = local_port
        self.via = via
        self.dual_loopback = dual_loopback
        self.path = "direct"
        self.hops = 0
        self.fallbacks = 0  # connections that took the relay fallback
        self.circuits: Callable[[], list[dict[str, object]]] = list
        self._opener = opener
        self._spawn = spawn
        self._server: asyncio.AbstractServer | None = None
        self._server6: asyncio.AbstractServer | None = None
        self.active: set[StreamPipe] = set()
        self.connections = 0
        self.failures = 0
        self.last_error: str | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.created = time.time()
        self.setup: dict[str, object] = {}  # what the probe at creation found

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, self.local_host, self.local_port, reuse_address=True
        )
        sock = self._server.sockets[0]
        self.local_port = sock.getsockname()[1]
        if self.dual_loopback:
            with contextlib.suppress(OSError):  # a host without IPv6 keeps 127.0.0.1 only
                self._server6 = await loop.create_server(self._accept, "::1", self.local_port)
        log.info("forward %s: %s -> %s", self.name, self.local, self.service)

    @property
    def local(self) -> str:
        return format_endpoint(self.local_host, self.local_port)

    def _accept(self) -> StreamPipe:
        pipe = StreamPipe(on_done=self._done)
        self.active.add(pipe)
        self.connections += 1
        self._spawn(self._attach(pipe))
        return pipe

    async def _attach(self, pipe: StreamPipe) -> None:
        try:
            await self._opener(pipe)
        except (StreamFailed, VX6Error, OSError) as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.warning("forward %s: %s", self.name, exc)
            pipe.close()

    def _done(self, pipe: StreamPipe) -> None:
        self.active.discard(pipe)
        self.bytes_up += pipe.bytes_up
        self.bytes_down += pipe.bytes_down
        if pipe.error and pipe.error not in ("CANCELLED",):
            self.last_error = pipe.error

    def stop_listening(self) -> None:
        """Close the listeners; connections already accepted go on until they end. (No
        `wait_closed`: from Python 3.12 it also waits for those connections.) The port
        can be bound again at once, by both loops: a forward a reload restarts."""
        if self._server6 is not None:
            self._server6.close()
        if self._server is not None:
            self._server.close()

    async def stop(self) -> None:
        if self._server6 is not None:
            self._server6.close()
        if self._server is not None:
            self._server.close()
        for pipe in list(self.active):
            pipe.close()
        if self._server is not None:
            await self._server.wait_closed()

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "service": self.service,
            "local": self.local,
            "via": format_endpoint(*self.via) if self.via else None,
            "path": self.path,
            "hops": self.hops,
            "fallbacks": self.fallbacks,
            "circuits": self.circuits(),
            "active": len(self.active),
            "connections": self.connections,
            "failures": self.failures,
            "last_error": self.last_error,
            "bytes_up": self.bytes_up + sum(p.bytes_up for p in self.active),
            "bytes_down": self.bytes_down + sum(p.bytes_down for p in self.active),
        }
