"""The test kit itself: the fake clock wakes sleepers in deadline order, and two real
LinkProtocols joined by the in-memory transports (kit/network.py) handshake and carry a
stream's bytes both ways intact, with backpressure and a clean close."""

from __future__ import annotations

import asyncio
import random

import pytest

from kit.carriers import PAIRS, CarrierPair, KitNode, Sink, send_all
from kit.clock import EPOCH, FakeClock
from kit.net import RawPeer
from kit.network import MemoryNetwork, connect_links
from vx6.core.link_config import LinkConfig
from vx6.crypto.keys import Identity
from vx6.errors import CloseCode
from vx6.net.link import LinkProtocol


def test_fake_clock_moves_only_when_advanced_and_wall_follows() -> None:
    clock = FakeClock(start=5.0)
    assert (clock.monotonic(), clock.wall()) == (5.0, EPOCH)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.wall()) == (7.5, EPOCH + 2.5)
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_fake_clock_sleepers_wake_in_deadline_order_once_advanced_past() -> None:
    async def main() -> list[str]:
        clock = FakeClock()
        woke: list[str] = []

        async def sleeper(name: str, sleep: asyncio.Future[None]) -> None:
            await sleep
            woke.append(name)

        late = asyncio.create_task(sleeper("late", clock.sleep(10)))
        early = asyncio.create_task(sleeper("early", clock.sleep(3)))
        cancelled = clock.sleep(1)
        cancelled.cancel()
        assert clock.sleep(0).done()
        clock.advance(2.9)
        await asyncio.sleep(0)  # one loop turn: nothing is due, nothing ran
        assert woke == []
        clock.advance(0.1)
        await early
        assert woke == ["early"] and not late.done()
        clock.advance(7)
        await late
        return woke

    assert asyncio.run(main()) == ["early", "late"]


class Peer(RawPeer):
    """Accepts every stream into a Sink."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted: asyncio.Queue[Sink] = asyncio.Queue()

    def stream_requested(self, link: LinkProtocol, sid: int, service: str, flags: int) -> None:
        sink = Sink(link, sid)
        link.attach(sid, sink)
        link.accept_stream(sid)
        self.accepted.put_nowait(sink)


def test_two_links_in_memory_handshake_and_carry_bytes_both_ways() -> None:
    up = random.Random(1).randbytes(700_000)  # more than the window: credit must return
    down = random.Random(2).randbytes(300_000)

    async def main() -> None:
        a_owner, b_owner = Peer(), Peer()
        id_a, id_b = Identity(bytes([1]) * 32), Identity(bytes([2]) * 32)
        config = LinkConfig(window=128 * 1024)
        a, b = await connect_links(
            a_owner, b_owner, identity_a=id_a, identity_b=id_b, config=config
        )
        assert (a.peer_identity, b.peer_identity) == (id_b.public, id_a.public)
        assert a.peer_address is not None and b.peer_address is not None
        opener = Sink(a)
        opener.sid = a.open_stream("svc", 0, opener)
        await send_all(a, opener, up)
        a.finish(opener.sid)
        async with asyncio.timeout(10):
            acceptor = await b_owner.accepted.get()
            await opener.opened
        await send_all(b, acceptor, down)
        b.finish(acceptor.sid)
        assert await acceptor.received(len(up)) == up
        assert await opener.received(len(down)) == down
        async with asyncio.timeout(10):
            await acceptor.ended
            await opener.ended
        a.close(CloseCode.NORMAL, "done")
        async with asyncio.timeout(10):
            await a.closed_future
            await b.closed_future
        assert b_owner.closes == [(CloseCode.NORMAL, "done", True)]

    asyncio.run(main())


def test_a_reader_that_pauses_makes_the_writer_pause_until_it_reads_again() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        got: list[bytes] = []

        class Reader(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport
                assert isinstance(transport, asyncio.Transport)
                transport.pause_reading()

            def data_received(self, data: bytes) -> None:
                got.append(data)

        class Writer(asyncio.Protocol):
            def __init__(self) -> None:
                self.paused: list[bool] = []

            def pause_writing(self) -> None:
                self.paused.append(True)

            def resume_writing(self) -> None:
                self.paused.append(False)

        readers: list[Reader] = []

        def accept() -> Reader:
            readers.append(Reader())
            return readers[-1]

        net.listen("::1", 9, accept)
        with pytest.raises(ConnectionRefusedError):
            net.connect(Writer, "::1", 10)
        transport, writer = net.connect(Writer, "::1", 9)
        assert isinstance(writer, Writer)
        transport.set_write_buffer_limits(high=1000, low=100)
        transport.write(b"x" * 5000)
        await asyncio.sleep(0)  # a loop turn: nothing may be delivered to a paused reader
        assert writer.paused == [True] and got == []
        readers[0].transport.resume_reading()  # type: ignore[attr-defined]
        async with asyncio.timeout(10):
            while writer.paused != [True, False]:
                await asyncio.sleep(0)
        assert b"".join(got) == b"x" * 5000

    asyncio.run(main())


def test_the_circuit_pair_runs_through_its_relay_and_the_link_pair_does_not() -> None:
    async def main() -> None:
        for kind, relayed in (("circuit", True), ("link", False)):
            pair = await PAIRS[kind](("svc",))
            nodes = {node.name: node for node in pair.world.nodes.values()}
            opener = pair.open("svc")
            await send_all(pair.opener, opener, b"hello")
            assert await (await pair.acceptor.next()).received(5) == b"hello"
            client_peers = {peer.name for peer in _peers(pair, nodes["client"])}
            if relayed:
                assert client_peers == {"relay"}
                assert len(nodes["relay"].router.core) == 1 and nodes["relay"].router.cells_in
                assert nodes["owner"].counters == {"circuits_exit": 1}
            else:
                assert client_peers == {"owner"} and "relay" not in nodes
            pair.world.close()

    asyncio.run(main())


def _peers(pair: CarrierPair, node: KitNode) -> list[KitNode]:
    return [pair.world.nodes[identity] for identity in node.links]
