"""One stream contract, checked on every carrier (net/carrier.py `StreamCarrier`): a
direct link, and a circuit through one relay to the owner. Each test body runs against
both, in one event loop, over real LinkProtocols joined in memory (kit/network.py) and,
for the circuit, the real router, relay core and onion layers (kit/carriers.py).

The contract: an opened stream carries bytes both ways intact, in any size (also more
than one window, so credit must come back); either side may end its half while the
other goes on sending; a reset reaches the other side; many concurrent streams each
stay intact; a stream to a service the far end does not have fails with
UNKNOWN_SERVICE and the far end's reason; the far end knows who opened it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from kit.carriers import PAIRS, WAIT, CarrierPair, send_all
from vx6.core.circuit.session import CIRCUIT_MAX_STREAMS
from vx6.errors import StreamError

SERVICES = ("svc",)
Body = Callable[[CarrierPair], Awaitable[None]]


def pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(params=sorted(PAIRS))
def run(request: pytest.FixtureRequest) -> Callable[[Body], None]:
    """Run one test body against one carrier kind, in a fresh event loop."""

    def runner(body: Body) -> None:
        async def main() -> None:
            pair = await PAIRS[request.param](SERVICES)
            try:
                await body(pair)
            finally:
                pair.world.close()

        asyncio.run(main())

    return runner


@pytest.mark.parametrize("size", [1, 1000, 100_000, "window+"])
def test_bytes_both_ways_intact(run: Callable[[Body], None], size: int | str) -> None:
    async def body(pair: CarrierPair) -> None:
        n = pair.window + 100_003 if size == "window+" else int(size)
        up, down = pattern(1, n), pattern(2, n)
        opener = pair.open("svc")
        await send_all(pair.opener, opener, up)
        acceptor = await pair.acceptor.next()
        await send_all(acceptor.carrier, acceptor, down)  # type: ignore[arg-type]
        assert await acceptor.received(n) == up
        assert await opener.received(n) == down
        async with asyncio.timeout(WAIT):
            await opener.opened
        assert acceptor.carrier is not None
        assert acceptor.carrier.peer_identity == pair.opener_identity

    run(body)


@pytest.mark.parametrize("first", ["opener", "acceptor"])
def test_half_close_one_way_while_the_other_still_sends(
    run: Callable[[Body], None], first: str
) -> None:
    async def body(pair: CarrierPair) -> None:
        opener = pair.open("svc")
        acceptor = await pair.acceptor.next()
        ender, talker = (opener, acceptor) if first == "opener" else (acceptor, opener)
        assert ender.carrier is not None and talker.carrier is not None
        ender.carrier.finish(ender.sid)
        async with asyncio.timeout(WAIT):
            await talker.ended
        after = pattern(3, 50_000)  # the half that is still open carries on
        await send_all(talker.carrier, talker, after)
        assert await ender.received(len(after)) == after
        assert not ender.ended.done() and not ender.reset.done()
        talker.carrier.finish(talker.sid)
        async with asyncio.timeout(WAIT):
            await ender.ended
        assert not talker.reset.done() and not ender.reset.done()

    run(body)


@pytest.mark.parametrize("by", ["opener", "acceptor"])
def test_reset_reaches_the_other_side(run: Callable[[Body], None], by: str) -> None:
    async def body(pair: CarrierPair) -> None:
        opener = pair.open("svc")
        acceptor = await pair.acceptor.next()
        await send_all(pair.opener, opener, b"before the reset")
        assert await acceptor.received(16) == b"before the reset"
        resetter, other = (opener, acceptor) if by == "opener" else (acceptor, opener)
        assert resetter.carrier is not None
        resetter.carrier.reset(resetter.sid, StreamError.CANCELLED)
        async with asyncio.timeout(WAIT):
            assert await other.reset == StreamError.CANCELLED
        # The carrier goes on: a new stream after the reset works.
        again = pair.open("svc")
        await send_all(pair.opener, again, b"after")
        assert await (await pair.acceptor.next()).received(5) == b"after"

    run(body)


def test_many_concurrent_streams_each_intact(run: Callable[[Body], None]) -> None:
    streams = CIRCUIT_MAX_STREAMS  # what a circuit allows; a link allows more
    size = 120_000

    async def body(pair: CarrierPair) -> None:
        openers = [pair.open("svc") for _ in range(streams)]
        acceptors = {}
        for _ in range(streams):
            sink = await pair.acceptor.next()
            acceptors[sink.sid] = sink
        assert sorted(acceptors) == sorted(o.sid for o in openers)

        async def one(i: int) -> None:
            opener = openers[i]
            acceptor = acceptors[opener.sid]
            assert acceptor.carrier is not None
            await asyncio.gather(
                send_all(pair.opener, opener, pattern(100 + i, size)),
                send_all(acceptor.carrier, acceptor, pattern(200 + i, size)),
            )

        await asyncio.gather(*(one(i) for i in range(streams)))
        for i, opener in enumerate(openers):
            assert await acceptors[opener.sid].received(size) == pattern(100 + i, size)
            assert await opener.received(size) == pattern(200 + i, size)

    run(body)


def test_open_to_an_unknown_service_fails_with_unknown_service(
    run: Callable[[Body], None],
) -> None:
    async def body(pair: CarrierPair) -> None:
        sink = pair.open("nosuch")
        async with asyncio.timeout(WAIT):
            code, reason = await sink.open_failed
        assert code == StreamError.UNKNOWN_SERVICE
        assert reason == "no service 'nosuch'"
        assert not sink.opened.done() and pair.acceptor.accepted.empty()
        # The carrier is still good for a service that exists.
        ok = pair.open("svc")
        await send_all(pair.opener, ok, b"fine")
        assert await (await pair.acceptor.next()).received(4) == b"fine"

    run(body)
