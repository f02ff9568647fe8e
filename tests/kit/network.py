"""A fake network for in-process asyncio tests: pairs of in-memory transports, so real
`LinkProtocol`s (net/link.py) talk to each other in one event loop without the OS.

Theory of operation. A `MemoryTransport` is one end of a connection. `write` appends
to the end's outgoing buffer and schedules a delivery on the next loop turn (as a
socket transport would: a write never calls the peer back synchronously). A delivery
hands the peer's protocol up to `READ_SIZE` bytes per step, through `get_buffer` and
`buffer_updated` for a BufferedProtocol or `data_received` for a plain Protocol, and
stops while the peer has paused reading. Bytes not yet delivered are this end's write
buffer: past the high-water mark the writer's protocol gets `pause_writing`, below the
low-water mark `resume_writing`, so backpressure behaves as with TCP. `close` delivers
what is buffered, then the peer sees `eof_received` (and, as a socket transport does
when it returns False, its end closes too) and both protocols get `connection_lost`;
`abort` drops the buffer and ends both at once.

`MemoryNetwork` registers listeners by (host, port); `connect` returns a connected
(transport, protocol) like `loop.create_connection`, or raises ConnectionRefusedError.
`connect_links` builds two LinkProtocols joined by a transport pair and waits for their
handshake. Addresses are only names here: nothing is bound or dialled.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from typing import Any

from vx6.core.link_config import LinkConfig
from vx6.crypto.keys import Identity, StaticKey
from vx6.net.link import LinkOwner, LinkProtocol

READ_SIZE = 256 * 1024  # what one delivery step hands over, like one socket read
DEFAULT_HIGH_WATER = 64 * 1024  # asyncio's defaults for a socket transport
Address = tuple[str, int]


class MemoryTransport(asyncio.Transport):
    def __init__(
        self, protocol: asyncio.BaseProtocol, sockname: Address, peername: Address
    ) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._protocol = protocol
        self._extra: dict[str, Any] = {"sockname": sockname, "peername": peername}
        self.peer: MemoryTransport | None = None
        self._out = bytearray()  # written, not yet delivered to the peer
        self._high, self._low = DEFAULT_HIGH_WATER, DEFAULT_HIGH_WATER // 4
        self._writing_paused = False
        self._reading_paused = False
        self._closing = False  # close() or abort() called, or the peer's EOF arrived
        self._lost = False  # connection_lost delivered
        self._delivery_scheduled = False

    # ---------------------------------------------------------------- asyncio API
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)  # no "socket": there is none

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self.peer is not None:
                self.peer._schedule_delivery()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = DEFAULT_HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low
        self._check_pause()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        return len(self._out)

    def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        if self._closing or not data:
            return
        self._out += data
        self._schedule_delivery()
        self._check_pause()

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._schedule_delivery()  # what is buffered goes out first, then the EOF

    def abort(self) -> None:
        self._closing = True
        self._out.clear()
        peer = self.peer
        self._connection_lost(None)
        if peer is not None:
            peer._closing = True
            peer._out.clear()
            peer._connection_lost(ConnectionResetError("connection reset by peer"))

    # ---------------------------------------------------------------- delivery
    def _schedule_delivery(self) -> None:
        if not self._delivery_scheduled and not self._lost:
            self._delivery_scheduled = True
            self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._delivery_scheduled = False
        peer = self.peer
        if self._lost or peer is None:
            return
        if peer._lost:  # nobody reads any more: what is left is lost with us
            self._out.clear()
            self._connection_lost(None)
            return
        if self._out and not peer._reading_paused:
            self._hand_over(peer, READ_SIZE)  # one read per turn: others run in between
        self._check_pause()
        if self._out and not peer._reading_paused:
            self._schedule_delivery()
        elif not self._out and self._closing:
            self._finish_close(peer)

    def _hand_over(self, peer: MemoryTransport, limit: int) -> None:
        protocol = peer._protocol
        if isinstance(protocol, asyncio.BufferedProtocol):
            buffer = memoryview(protocol.get_buffer(min(limit, len(self._out))))
            n = min(len(buffer), len(self._out), limit)
            buffer[:n] = self._out[:n]
            del self._out[:n]
            protocol.buffer_updated(n)
        else:
            assert isinstance(protocol, asyncio.Protocol)
            n = min(limit, len(self._out))
            data = bytes(self._out[:n])
            del self._out[:n]
            protocol.data_received(data)

    def _finish_close(self, peer: MemoryTransport) -> None:
        """Our output is delivered: the peer reads EOF, and the connection ends."""
        if not peer._lost and not peer._closing:
            protocol = peer._protocol
            keep_open = isinstance(protocol, asyncio.Protocol | asyncio.BufferedProtocol) and bool(
                protocol.eof_received()
            )
            if not keep_open:
                peer.close()  # as a socket transport does: its output, then the end
        self._connection_lost(None)
        if not peer._out:
            peer._connection_lost(None)

    def _check_pause(self) -> None:
        size = len(self._out)
        protocol = self._protocol
        assert isinstance(protocol, asyncio.BaseProtocol)
        if not self._writing_paused and size > self._high and not self._lost:
            self._writing_paused = True
            protocol.pause_writing()
        elif self._writing_paused and size <= self._low and not self._lost:
            self._writing_paused = False
            protocol.resume_writing()

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._loop.call_soon(self._protocol.connection_lost, exc)


def transport_pair(
    protocol_a: asyncio.BaseProtocol,
    protocol_b: asyncio.BaseProtocol,
    address_a: Address = ("::1", 40001),
    address_b: Address = ("::1", 40002),
) -> tuple[MemoryTransport, MemoryTransport]:
    """Two joined ends; each protocol gets connection_made (a first, then b)."""
    a = MemoryTransport(protocol_a, address_a, address_b)
    b = MemoryTransport(protocol_b, address_b, address_a)
    a.peer, b.peer = b, a
    protocol_a.connection_made(a)
    protocol_b.connection_made(b)
    return a, b


class MemoryNetwork:
    """Listeners by (host, port), and connections to them made in memory."""

    def __init__(self) -> None:
        self.listeners: dict[Address, Callable[[], asyncio.BaseProtocol]] = {}
        self._ports = itertools.count(50000)

    def listen(self, host: str, port: int, factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self.listeners[(host, port)] = factory

    def connect(
        self, factory: Callable[[], asyncio.BaseProtocol], host: str, port: int
    ) -> tuple[MemoryTransport, asyncio.BaseProtocol]:
        accept = self.listeners.get((host, port))
        if accept is None:
            raise ConnectionRefusedError(f"nothing listens on [{host}]:{port}")
        dialler = factory()
        transport, _ = transport_pair(dialler, accept(), (host, next(self._ports)), (host, port))
        return transport, dialler


async def connect_links(
    owner_a: LinkOwner,
    owner_b: LinkOwner,
    *,
    identity_a: Identity | None = None,
    identity_b: Identity | None = None,
    config: LinkConfig | None = None,
    timeout: float = 5.0,
) -> tuple[LinkProtocol, LinkProtocol]:
    """Two LinkProtocols joined in memory (a dials, b accepts), handshake done."""
    identity_a = identity_a or Identity(os.urandom(32))
    identity_b = identity_b or Identity(os.urandom(32))
    a = LinkProtocol(
        owner_a,
        initiator=True,
        identity=identity_a,
        link_key=StaticKey(os.urandom(32)),
        expected_identity=identity_b.public,
        config=config,
    )
    b = LinkProtocol(
        owner_b,
        initiator=False,
        identity=identity_b,
        link_key=StaticKey(os.urandom(32)),
        config=config,
    )
    transport_pair(a, b)
    async with asyncio.timeout(timeout):
        await asyncio.gather(a.established, b.established)
    return a, b
