"""The dialler and link-event hub (node/links.py) in-process: real `Links`, real
LinkProtocols and real admission tables on both ends, joined by the kit's in-memory
network (kit/roles.py `MemoryLoop` points `loop.create_connection`, which the real
`vx6.net.link.dial` calls, at it). Node records come from a recording fake; the peers
are `Links` of their own, listening in memory.

What is checked: an open link is reused and concurrent callers share one dial; a
node's addresses are tried in order, each proved to be that node; when all fail a fresh
node record is asked for and its new address dialled; a link that died of an idle
timeout sends the next dial to a fresh lookup first; a relay's dial (for_peer) never
reaches loopback from a node listening elsewhere; link events reach the handlers the
roles registered, and a link the admission table refuses reaches none of them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kit.carriers import Sink
from kit.clock import FakeClock
from kit.network import MemoryNetwork
from kit.roles import run_on
from vx6.core.admission import AdmissionLimits
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import CloseCode, StreamError, StreamFailed
from vx6.net.link import LinkProtocol
from vx6.node.link_table import LinkTable
from vx6.node.links import Links
from vx6.wire.cells import CELL_SIZE
from vx6.wire.cells import Endpoint as CellEndpoint
from vx6.wire.records import Endpoint, NodeBody

WAIT = 5.0
DEAD = ("127.0.0.9", 4242)  # nothing listens there


class FakeNodeRecords:
    """NodeRecords (the resolver) with answers set by the test, and every question kept."""

    def __init__(self) -> None:
        self.held: dict[bytes, NodeBody] = {}
        self.fresh: dict[bytes, NodeBody] = {}  # what the DHT would bring
        self.asked: list[tuple[str, bytes]] = []

    def node_record(self, key: bytes) -> NodeBody | None:
        self.asked.append(("held", key))
        return self.held.get(key)

    async def fresh_node_record(self, key: bytes) -> NodeBody | None:
        self.asked.append(("fresh", key))
        if key in self.fresh:
            self.held[key] = self.fresh[key]
        return self.held.get(key)


class PeerBook:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, bytes | None]] = []

    def upsert_peer(self, host: str, port: int, now: float, *, key: bytes | None = None) -> None:
        self.seen.append((host, port, key))


class Counters(dict[str, int]):
    def __call__(self, what: str, n: int = 1) -> None:
        self[what] = self.get(what, 0) + n


_numbers = itertools.count(1)


class Node:
    """One node's `Links` with its own table, and what reached its handlers."""

    def __init__(
        self,
        network: MemoryNetwork,
        clock: FakeClock,
        *,
        listen: list[tuple[str, int]] | None = None,
        limits: AdmissionLimits | None = None,
        trusted: Callable[[bytes], bool] = lambda key: True,
    ) -> None:
        n = next(_numbers)
        self.network = network
        self.identity = Identity(bytes([n]) * 32)
        self.link_key = StaticKey(bytes([n + 100]) * 32)
        self.records = FakeNodeRecords()
        self.peers = PeerBook()
        self.counters = Counters()
        self.listen = list(listen or [])
        table = LinkTable(limits or AdmissionLimits(), self.counters, trusted, clock)
        self.links = Links(
            self.identity,
            self.link_key,
            table,
            node_records=self.records,
            peers=self.peers,
            count=self.counters,
            clock=clock,
            listen_addresses=self.listen,
        )
        self.events: list[tuple[Any, ...]] = []
        self._sources = itertools.count(30000)
        for host, port in self.listen:
            network.listen(host, port, self._accept)

    def _accept(self) -> LinkProtocol:
        link = self.links.admit(None, ("127.0.0.1", next(self._sources)))  # type: ignore[arg-type]
        assert link is not None, "the test's listener refused at the door"
        return link

    def listen_on(self, host: str, port: int) -> None:
        self.listen.append((host, port))
        self.network.listen(host, port, self._accept)

    def record(self, *addresses: tuple[str, int]) -> NodeBody:
        return NodeBody(
            self.link_key.public, bytes(32), tuple(Endpoint(h, p) for h, p in addresses), 0
        )

    def register_all(self) -> None:
        self.links.on_stream(lambda link, sid, service, flags: self._got("stream", link, service))
        self.links.on_cells(lambda link, chunks: self._got("cells", link, len(chunks)))
        self.links.on_records(lambda link, records: self._got("records", link, records))
        self.links.on_closed(lambda link, code, reason, by_peer: self._got("closed", link, code))
        self.links.on_paused(lambda link, paused: self._got("paused", link, paused))

    def _got(self, what: str, link: LinkProtocol, detail: object) -> None:
        self.events.append((what, link.peer_identity, detail))

    async def wait_for(self, count: int) -> None:
        await until(lambda: len(self.events) >= count)


async def until(ok: Callable[[], bool]) -> None:
    """Bounded polling on loop turns (the in-memory network needs no real time)."""
    async with asyncio.timeout(WAIT):
        while not ok():
            await asyncio.sleep(0)


def dialled() -> list[tuple[str, int]]:
    return asyncio.get_running_loop().dialled  # type: ignore[attr-defined,no-any-return]


def run(body: Callable[[MemoryNetwork, FakeClock], Awaitable[None]]) -> None:
    network, clock = MemoryNetwork(), FakeClock()
    run_on(network, lambda: body(network, clock))


def test_an_open_link_is_reused() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        a, b = Node(net, clock), Node(net, clock, listen=[("127.0.0.1", 4001)])
        a.records.held[b.identity.public] = b.record(("127.0.0.1", 4001))
        first = await a.links.link_to(b.identity.public)
        assert first.is_open and first.peer_identity == b.identity.public
        assert await a.links.link_to(b.identity.public) is first
        assert a.links.open_link(b.identity.public) is first
        assert dialled() == [("127.0.0.1", 4001)]
        assert a.peers.seen == [("127.0.0.1", 4001, b.identity.public)]

    run(body)


def test_concurrent_callers_share_one_dial() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        a, b = Node(net, clock), Node(net, clock, listen=[("127.0.0.1", 4001)])
        a.records.held[b.identity.public] = b.record(("127.0.0.1", 4001))
        links = await asyncio.gather(*(a.links.link_to(b.identity.public) for _ in range(5)))
        assert len({id(link) for link in links}) == 1
        assert dialled() == [("127.0.0.1", 4001)]

    run(body)


def test_addresses_are_tried_in_order_until_one_is_that_node() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        a, b = Node(net, clock), Node(net, clock, listen=[("127.0.0.1", 4002)])
        a.records.held[b.identity.public] = b.record(DEAD, ("127.0.0.1", 4002))
        link = await a.links.link_to(b.identity.public)
        assert link.peer_identity == b.identity.public and link.dialled == ("127.0.0.1", 4002)
        assert dialled() == [DEAD, ("127.0.0.1", 4002)]

    run(body)


def test_a_recorded_address_now_held_by_another_node_is_skipped() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        a, b = Node(net, clock), Node(net, clock, listen=[("127.0.0.1", 4013)])
        other = Node(net, clock, listen=[("127.0.0.1", 4014)])
        # B's record says B's link key: the other node cannot answer that handshake.
        a.records.held[b.identity.public] = b.record(("127.0.0.1", 4014), ("127.0.0.1", 4013))
        link = await a.links.link_to(b.identity.public)
        assert link.peer_identity == b.identity.public
        assert dialled() == [("127.0.0.1", 4014), ("127.0.0.1", 4013)]
        assert other.links.by_key == {} and a.links.open_link(other.identity.public) is None

    run(body)


def test_an_address_where_another_node_answers_fails_with_identity_mismatch() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        a, b = Node(net, clock), Node(net, clock)
        other = Node(net, clock, listen=[("127.0.0.1", 4003)])
        with pytest.raises(StreamFailed) as failed:
            await a.links.link_to(b.identity.public, [CellEndpoint("127.0.0.1", 4003)])
        assert failed.value.code is StreamError.OWNER_UNREACHABLE
        assert "127.0.0.1:4003: IDENTITY_MISMATCH" in str(failed.value)
        # No record held and the address given failed: the DHT was asked once, after.
        assert a.records.asked == [("held", b.identity.public), ("fresh", b.identity.public)]
        assert a.links.open_link(other.identity.public) is None

    run(body)


def test_after_every_address_failed_a_fresh_record_is_dialled() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        a, b = Node(net, clock), Node(net, clock, listen=[("127.0.0.1", 4004)])
        key = b.identity.public
        a.records.held[key] = b.record(DEAD)
        a.records.fresh[key] = b.record(DEAD, ("127.0.0.1", 4004))  # it moved
        link = await a.links.link_to(key)
        assert link.dialled == ("127.0.0.1", 4004)
        assert dialled() == [DEAD, ("127.0.0.1", 4004)]  # the dead one is not tried twice
        assert a.records.asked == [("held", key), ("fresh", key)]

    run(body)


def test_when_nothing_answers_the_error_lists_every_address() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        a, b = Node(net, clock), Node(net, clock)
        a.records.held[b.identity.public] = b.record(DEAD, ("::1", 4999))
        with pytest.raises(StreamFailed) as failed:
            await a.links.link_to(b.identity.public)
        assert failed.value.code is StreamError.OWNER_UNREACHABLE
        assert "127.0.0.9:4242" in str(failed.value) and "[::1]:4999" in str(failed.value)

    run(body)


def test_an_idle_timeout_sends_the_next_dial_to_a_fresh_lookup_first() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        a, b = Node(net, clock), Node(net, clock, listen=[("127.0.0.1", 4005)])
        key = b.identity.public
        a.records.held[key] = b.record(("127.0.0.1", 4005))
        link = await a.links.link_to(key)
        link.close(CloseCode.IDLE_TIMEOUT, "nothing heard")  # as the core does on idle
        await link.closed_future
        assert a.links.open_link(key) is None
        a.records.asked.clear()
        again = await a.links.link_to(key)
        assert again is not link and again.is_open
        assert a.records.asked == [("fresh", key)]
        # A normal close does not make the peer a suspect.
        again.close(CloseCode.NORMAL, "done")
        await again.closed_future
        a.records.asked.clear()
        await a.links.link_to(key)
        assert a.records.asked == [("held", key)]

    run(body)


def test_a_peer_that_moved_has_its_stale_link_closed_and_the_new_address_dialled() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        a, b = Node(net, clock), Node(net, clock, listen=[("127.0.0.1", 4015)])
        key = b.identity.public
        a.records.held[key] = b.record(("127.0.0.1", 4015))
        old = await a.links.link_to(key)
        b.listen_on("127.0.0.1", 4016)
        moved = b.record(("127.0.0.1", 4016))
        a.links.peer_moved(key, b.record(("127.0.0.1", 4015), ("127.0.0.1", 4016)))
        assert old.is_open  # still one of its addresses
        a.records.held[key] = moved
        a.links.peer_moved(key, moved)
        await old.closed_future
        assert (await a.links.link_to(key)).dialled == ("127.0.0.1", 4016)

    run(body)


def test_a_relay_dial_never_reaches_loopback_from_a_node_listening_elsewhere() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        relay = Node(net, clock)
        relay.listen.append(("::", 4242))  # a wildcard: not a loopback-only test node
        b = Node(net, clock, listen=[("127.0.0.1", 4006)])
        given = [CellEndpoint("127.0.0.1", 4006)]
        with pytest.raises(StreamFailed) as failed:
            await relay.links.link_to(b.identity.public, given, for_peer=True)
        assert "not dialled (address not allowed)" in str(failed.value)
        assert dialled() == []
        # Our own dial (a forward, the pool's first hop) may.
        assert (await relay.links.link_to(b.identity.public, given)).is_open

    run(body)


def test_a_relay_on_a_loopback_test_network_may_dial_loopback() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        relay = Node(net, clock, listen=[("127.0.0.1", 4007)])
        b = Node(net, clock, listen=[("127.0.0.1", 4008)])
        given = [CellEndpoint("127.0.0.1", 4008)]
        assert (await relay.links.link_to(b.identity.public, given, for_peer=True)).is_open

    run(body)


def test_link_events_reach_the_registered_handlers() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        a, b = Node(net, clock), Node(net, clock, listen=[("127.0.0.1", 4009)])
        b.register_all()
        link = await a.links.dial("127.0.0.1", 4009)
        me = a.identity.public
        link.send_records([b"record"])
        await b.wait_for(1)
        link.send_cells([bytes(CELL_SIZE)])
        await b.wait_for(2)
        link.open_stream("ssh", 0, Sink(link))
        await b.wait_for(3)
        (inbound,) = b.links.by_key.values()
        inbound.pause_writing()  # its transport's buffer filled up
        inbound.resume_writing()
        link.close(CloseCode.NORMAL, "bye")
        await b.wait_for(6)
        assert b.events == [
            ("records", me, (b"record",)),
            ("cells", me, 1),
            ("stream", me, "ssh"),
            ("paused", me, True),
            ("paused", me, False),
            ("closed", me, CloseCode.NORMAL),
        ]
        assert b.counters["links_established"] == 1

    run(body)


def test_without_handlers_streams_are_refused_and_cells_close_the_link() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        a, _b = Node(net, clock), Node(net, clock, listen=[("127.0.0.1", 4010)])
        link = await a.links.dial("127.0.0.1", 4010)
        sink = Sink(link)
        link.open_stream("ssh", 0, sink)
        async with asyncio.timeout(WAIT):
            code, _ = await sink.open_failed
        assert code == StreamError.UNKNOWN_SERVICE
        link.send_cells([bytes(CELL_SIZE)])
        await link.closed_future
        assert "takes no circuits" in link.close_reason

    run(body)


def test_a_link_the_admission_table_refuses_reaches_no_handler() -> None:
    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        # One inbound link per key, and the one held carries a stream: the next link
        # from that key is refused once its handshake says whose it is.
        one_per_key = AdmissionLimits(links_per_key=1)
        a = Node(net, clock)
        b = Node(net, clock, listen=[("127.0.0.1", 4011)], limits=one_per_key)
        b.register_all()
        b.links.on_stream(lambda link, sid, service, flags: link.accept_stream(sid))
        held = await a.links.dial("127.0.0.1", 4011)
        sink = Sink(held)
        held.open_stream("ssh", 0, sink)
        async with asyncio.timeout(WAIT):
            await sink.opened
        before = list(b.events)
        refused = await a.links.dial("127.0.0.1", 4011)
        refused.send_records([b"record"])
        await refused.closed_future
        assert "link refused: links-per-key" in refused.close_reason
        assert b.events == before  # neither its records nor its close reached a role
        assert b.counters["links_refused_links_per_key"] == 1
        assert b.links.by_key == {a.identity.public: b.links.by_key[a.identity.public]}
        assert len(b.links.all) == 1 and held.is_open

    run(body)


def test_a_links_timer_runs_on_the_injected_clock() -> None:
    """The link's timer is armed for the core's deadline on the node's clock; read on
    the event loop's own clock instead, a fake clock behind it made it fire on every
    loop turn (a busy loop that never times anything out)."""

    async def body(net: MemoryNetwork, clock: FakeClock) -> None:
        a, _b = Node(net, clock), Node(net, clock, listen=[("127.0.0.1", 4012)])
        link = await a.links.dial("127.0.0.1", 4012)
        fired: list[float] = []
        handle_timer = link.core.handle_timer

        def counting(now: float) -> None:
            fired.append(now)
            handle_timer(now)

        link.core.handle_timer = counting  # type: ignore[method-assign]
        for _ in range(50):
            await asyncio.sleep(0)
        assert fired == [] and link.is_open

    run(body)
