"""Stream carriers built in one event loop, for tests that run one body against every
kind of path a stream can take (net/carrier.py `StreamCarrier`): a direct link, and a
circuit through a relay.

Theory of operation. A `KitNode` is the least a node needs to carry streams: an
identity, an onion key, a real `CircuitRouter`, and the `LinkOwner` callbacks that feed
it (cells, pauses, closes). Nodes reach each other through `connect_links` (the
in-memory transports of kit/network.py), so every byte crosses real LinkProtocols and,
on a circuit, the real router, relay core and onion layers. Streams that arrive at a
node (on a link, or on a circuit ending there) go to its `Acceptor`, which rejects an
unknown service with UNKNOWN_SERVICE and otherwise accepts with a fresh `Sink`.

A `Sink` is a StreamSink that records everything and consumes what it receives at once
(as StreamPipe does once its socket took the bytes); `send_all` writes through a carrier
honouring its backpressure (a False from `send` waits for `on_writable` or unpause).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from kit.network import connect_links
from vx6.core.circuit.client import HopSpec
from vx6.core.circuit.limits import RelayLimits
from vx6.core.link_config import LinkConfig
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import StreamError
from vx6.net.carrier import StreamCarrier
from vx6.net.link import LinkProtocol
from vx6.net.ports import SYSTEM_CLOCK
from vx6.net.router import CircuitRouter
from vx6.wire.cells import Endpoint

WAIT = 10.0  # no single step of these tests may take longer
SEND_CHUNK = 64 * 1024


class Sink:
    def __init__(self, carrier: StreamCarrier | None = None, sid: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self.carrier, self.sid = carrier, sid
        self.data = bytearray()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.open_failed: asyncio.Future[tuple[int, str]] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.reset: asyncio.Future[int] = loop.create_future()
        self._grew = asyncio.Event()
        self._wake = asyncio.Event()  # credit came back, or the carrier resumed

    def on_opened(self) -> None:
        self.opened.set_result(None)

    def on_open_failed(self, code: int, reason: str) -> None:
        self.open_failed.set_result((code, reason))

    def on_data(self, data: bytes | memoryview) -> None:
        self.data += data
        self._grew.set()
        assert self.carrier is not None
        self.carrier.consumed(self.sid, len(data))

    def on_end(self) -> None:
        self.ended.set_result(None)

    def on_reset(self, code: int) -> None:
        self.reset.set_result(code)

    def on_writable(self) -> None:
        self._wake.set()

    def on_link_paused(self, paused: bool) -> None:
        if not paused:
            self._wake.set()

    async def received(self, n: int) -> bytes:
        """Wait until at least n bytes arrived; all of them."""
        async with asyncio.timeout(WAIT):
            while len(self.data) < n:
                self._grew.clear()
                await self._grew.wait()
        return bytes(self.data)


async def send_all(carrier: StreamCarrier, sink: Sink, data: bytes) -> None:
    """Write `data` on the sink's stream; whenever `send` says stop, wait until the
    carrier takes more (an empty send answers whether the stream's credit is back)."""
    view = memoryview(data)
    for pos in range(0, len(view), SEND_CHUNK):
        if carrier.send(sink.sid, view[pos : pos + SEND_CHUNK]):
            continue
        async with asyncio.timeout(WAIT):
            while True:
                sink._wake.clear()  # before the check: a wake-up during it is kept
                if sink.reset.done() or (not carrier.paused and carrier.send(sink.sid, b"")):
                    break
                await sink._wake.wait()


class Acceptor:
    """The accepting end's application: one queue of accepted streams' sinks."""

    def __init__(self, services: Sequence[str]) -> None:
        self.services = set(services)
        self.accepted: asyncio.Queue[Sink] = asyncio.Queue()
        self.carriers: list[StreamCarrier] = []

    def stream_requested(self, carrier: StreamCarrier, sid: int, service: str, flags: int) -> None:
        if service not in self.services:
            carrier.reject_stream(sid, StreamError.UNKNOWN_SERVICE, f"no service {service!r}")
            return
        sink = Sink(carrier, sid)
        carrier.attach(sid, sink)
        carrier.accept_stream(sid)
        self.carriers.append(carrier)
        self.accepted.put_nowait(sink)

    async def next(self) -> Sink:
        async with asyncio.timeout(WAIT):
            return await self.accepted.get()


@dataclass
class _Config:
    relay: bool
    circuit_idle_timeout: float = 300.0


@dataclass
class KitNode:
    """A node in one event loop: links, a circuit router, an acceptor for streams."""

    name: str
    world: KitWorld
    relay: bool = False
    identity: Identity = field(default_factory=lambda: Identity(os.urandom(32)))
    onion: StaticKey = field(default_factory=lambda: StaticKey(os.urandom(32)))
    acceptor: Acceptor = field(default_factory=lambda: Acceptor(()))
    links: dict[bytes, LinkProtocol] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.onion_keys = [self.onion]
        self.config = _Config(self.relay)
        self.owner = self.acceptor  # the old router reads node.owner.stream_requested
        self.router = make_router(self)

    def spec(self) -> HopSpec:
        return HopSpec(self.identity.public, self.onion.public, (Endpoint("::1", 7000),))

    # ---------------------------------------------------------- what the router uses
    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.world.spawn(coro)

    def open_link(self, identity: bytes) -> LinkProtocol | None:
        link = self.links.get(identity)
        return link if link is not None and link.is_open else None

    async def link_to(
        self, identity: bytes, endpoints: Sequence[Endpoint] = (), *, for_peer: bool = False
    ) -> LinkProtocol:
        link = self.open_link(identity)
        if link is None:
            link = await self.world.connect(self, self.world.nodes[identity])
        return link

    # ---------------------------------------------------------- LinkOwner
    def link_established(self, link: LinkProtocol) -> None:
        assert link.peer_identity is not None
        self.links[link.peer_identity] = link

    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        if link.peer_identity is not None and self.links.get(link.peer_identity) is link:
            del self.links[link.peer_identity]
        self.router.link_closed(link)

    def stream_requested(self, link: LinkProtocol, sid: int, service: str, flags: int) -> None:
        self.acceptor.stream_requested(link, sid, service, flags)

    def records_received(self, link: LinkProtocol, records: tuple[bytes, ...]) -> None:
        pass

    def cells_received(self, link: LinkProtocol, chunks: tuple[bytes | memoryview, ...]) -> None:
        self.router.cells_received(link, chunks)

    def link_paused(self, link: LinkProtocol, paused: bool) -> None:
        self.router.link_paused(link, paused)


def make_router(node: KitNode) -> CircuitRouter:
    """The node's real router, handed the kit node's collaborators."""
    return CircuitRouter(
        node.identity,
        node.onion_keys,
        RelayLimits(idle_timeout=node.config.circuit_idle_timeout),
        relay=node.relay,
        links=node,
        on_stream=node.acceptor.stream_requested,
        spawn=node.spawn,
        count=node.count,
        clock=SYSTEM_CLOCK,
        random=os.urandom,
    )


class KitWorld:
    """The nodes of one test, by identity, and the tasks their routers spawned."""

    def __init__(self, config: LinkConfig | None = None) -> None:
        self.nodes: dict[bytes, KitNode] = {}
        self.config = config
        self._tasks: set[asyncio.Task[None]] = set()

    def node(self, name: str, *, relay: bool = False, services: Sequence[str] = ()) -> KitNode:
        node = KitNode(name, self, relay=relay, acceptor=Acceptor(services))
        self.nodes[node.identity.public] = node
        return node

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def connect(self, a: KitNode, b: KitNode) -> LinkProtocol:
        link_a, _ = await connect_links(
            a, b, identity_a=a.identity, identity_b=b.identity, config=self.config
        )
        return link_a

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for node in self.nodes.values():
            for link in list(node.links.values()):
                link.close()


@dataclass
class CarrierPair:
    """An opener's carrier to an acceptor; `window` is its per-stream credit."""

    kind: str
    opener: StreamCarrier
    acceptor: Acceptor
    opener_identity: bytes
    window: int
    world: KitWorld

    def open(self, service: str) -> Sink:
        sink = Sink(self.opener)
        sink.sid = self.opener.open_stream(service, 0, sink)
        return sink


LINK_WINDOW = 256 * 1024  # smaller than the default, so "more than a window" is cheap


async def link_pair(services: Sequence[str]) -> CarrierPair:
    world = KitWorld(LinkConfig(window=LINK_WINDOW))
    client, owner = world.node("client"), world.node("owner", services=services)
    link = await client.link_to(owner.identity.public)
    return CarrierPair("link", link, owner.acceptor, client.identity.public, LINK_WINDOW, world)


async def circuit_pair(services: Sequence[str]) -> CarrierPair:
    from vx6.core.circuit.session import CIRCUIT_WINDOW

    world = KitWorld()
    client = world.node("client")
    relay = world.node("relay", relay=True)
    owner = world.node("owner", services=services)
    async with asyncio.timeout(WAIT):
        path = await client.router.build(owner.spec(), [relay.spec()])
    return CarrierPair(
        "circuit", path, owner.acceptor, client.identity.public, CIRCUIT_WINDOW, world
    )


PAIRS: dict[str, Callable[[Sequence[str]], Awaitable[CarrierPair]]] = {
    "link": link_pair,
    "circuit": circuit_pair,
}
