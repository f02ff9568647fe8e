"""The circuit pool in-process: a real registry (node records of relays and of the
owner), a real resolver, a recording fake builder whose circuits the test opens streams
on and closes, and the kit's fake clock. The pool keeps SPARE circuits ready, retires a
circuit `circuit_lifetime` after its first stream (closing it once its last stream
ends), avoids a relay that did not answer a build for AVOID_SECONDS and then forgets,
and takes its relays from node records advertising the relay capability."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kit.clock import FakeClock
from kit.roles import FakeLookup, put_signed
from vx6.core.circuit.client import HopSpec
from vx6.crypto.keys import Identity
from vx6.errors import StreamError, StreamFailed
from vx6.net.router import BuildFailed
from vx6.node.pool import AVOID_SECONDS, SPARE, CircuitPool
from vx6.node.resolver import Resolver
from vx6.store.registry import Registry
from vx6.wire.cells import Endpoint as CellEndpoint
from vx6.wire.records import Capability, Endpoint, NodeBody

ME, OWNER, R1, R2, PLAIN, MUTE = (Identity(bytes([n]) * 32) for n in range(1, 7))
LIFETIME = 600.0
MAX_STREAMS = 4


class FakePath:
    """What the pool reads of a ClientPath; the test opens and ends its streams."""

    def __init__(self, circuit_id: int, relays: list[HopSpec], clock: FakeClock) -> None:
        self.circuit_id = circuit_id
        self.relays = [r.identity for r in relays]
        self.clock = clock
        self.is_open = True
        self.first_stream_at: float | None = None
        self.active_streams = 0
        self.session = SimpleNamespace(streams=SimpleNamespace(max_streams=MAX_STREAMS))

    def stream_opened(self) -> None:
        self.active_streams += 1
        if self.first_stream_at is None:
            self.first_stream_at = self.clock.monotonic()

    def close(self) -> None:
        self.is_open = False

    def describe(self) -> dict[str, object]:
        return {"id": self.circuit_id}


class FakeBuilder:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.builds: list[tuple[HopSpec, list[HopSpec]]] = []
        self.failures: list[BuildFailed] = []  # raised by the next builds, in order

    async def build(self, owner: HopSpec, relays: list[HopSpec]) -> FakePath:
        self.builds.append((owner, relays))
        if self.failures:
            raise self.failures.pop(0)
        return FakePath(len(self.builds), relays, self.clock)


class NoLinks:
    def __init__(self) -> None:
        self.rtts: dict[bytes, float] = {}

    def open_link(self, identity: bytes) -> Any:
        rtt = self.rtts.get(identity)
        return None if rtt is None else SimpleNamespace(rtt=rtt)

    async def link_to(self, identity: bytes, endpoints: Any = (), *, for_peer: bool = False) -> Any:
        raise AssertionError("the pool dials nothing itself")


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.registry = Registry(tmp_path / "registry.db")
        self.builder = FakeBuilder(self.clock)
        self.links = NoLinks()
        self.tasks: list[asyncio.Task[None]] = []
        self.pool = CircuitPool(
            ME.public,
            LIFETIME,
            builder=self.builder,
            resolver=Resolver(self.registry, FakeLookup(), self.clock),
            links=self.links,
            registry=self.registry,
            spawn=self.spawn,
            clock=self.clock,
            rng=random.Random(7).random,  # seeded: route choice is repeatable
        )
        self.node(OWNER, 1, relay=False)

    def node(self, who: Identity, n: int, *, relay: bool, addresses: bool = True) -> None:
        hosts = (Endpoint(f"127.0.0.{n}", 4242),) if addresses else ()
        caps = Capability.RELAY if relay else Capability(0)
        body = NodeBody(bytes(32), bytes([n]) * 32, hosts, int(caps))
        put_signed(self.registry, who, body, 1, self.clock.wall())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    async def settle(self) -> None:
        """Wait for every background build the pool started (and those they start)."""
        while self.tasks:
            tasks, self.tasks = self.tasks, []
            await asyncio.gather(*tasks)

    def paths(self, hops: int = 1) -> list[FakePath]:
        return self.pool.paths.get((OWNER.public, hops), [])  # type: ignore[return-value]


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    yield w  # type: ignore[misc]
    w.registry.close()


def run(world: World, body: Any) -> None:
    async def main() -> None:
        await body()
        await world.settle()

    asyncio.run(main())


def test_the_first_get_builds_and_spares_are_kept_ready(world: World) -> None:
    world.node(R1, 2, relay=True)

    async def body() -> None:
        first = await world.pool.get(OWNER.public, 1)
        owner, relays = world.builder.builds[0]
        assert owner.identity == OWNER.public and owner.endpoints == (
            CellEndpoint("127.0.0.1", 4242),
        )
        assert [r.identity for r in relays] == [R1.public]
        await world.settle()
        assert len(world.paths()) == SPARE and len(world.builder.builds) == SPARE
        # Ready circuits are handed out, least loaded first, without a new build.
        first.stream_opened()  # type: ignore[attr-defined]
        second = await world.pool.get(OWNER.public, 1)
        assert second is not first and second in world.paths()
        await world.settle()
        assert len(world.builder.builds) == SPARE

    run(world, body)


def test_a_circuit_retires_after_its_lifetime_and_closes_when_idle(world: World) -> None:
    world.node(R1, 2, relay=True)

    async def body() -> None:
        used = await world.pool.get(OWNER.public, 1)
        await world.settle()
        used.stream_opened()  # type: ignore[attr-defined]
        world.clock.advance(LIFETIME - 1)
        assert used in world.pool.ready((OWNER.public, 1))
        world.clock.advance(1)
        assert used not in world.pool.ready((OWNER.public, 1))
        assert used.is_open and used in world.paths()  # its connection goes on
        described = world.pool.describe_circuits((OWNER.public, 1))
        assert {c["id"]: c["retiring"] for c in described}[used.circuit_id] is True
        fresh = await world.pool.get(OWNER.public, 1)
        assert fresh is not used
        used.active_streams = 0  # its last connection ended
        world.pool.ready((OWNER.public, 1))
        assert not used.is_open and used not in world.paths()
        await world.settle()
        assert len(world.pool.ready((OWNER.public, 1))) == SPARE

    run(world, body)


def test_a_spare_that_never_carried_a_stream_does_not_age(world: World) -> None:
    world.node(R1, 2, relay=True)

    async def body() -> None:
        await world.pool.get(OWNER.public, 1)
        await world.settle()
        world.clock.advance(10 * LIFETIME)
        assert len(world.pool.ready((OWNER.public, 1))) == SPARE

    run(world, body)


def test_a_relay_that_did_not_answer_is_avoided_then_forgotten(world: World) -> None:
    world.node(R1, 2, relay=True)

    async def body() -> None:
        world.builder.failures = [BuildFailed("no answer from the first hop", hops_keyed=0)]
        with pytest.raises(StreamFailed) as failed:
            await world.pool.build(OWNER.public, 1)
        # The only relay is avoided: the retries found no route without it.
        assert failed.value.code is StreamError.NO_ROUTE
        assert len(world.builder.builds) == 1
        world.clock.advance(AVOID_SECONDS - 1)
        with pytest.raises(StreamFailed):
            world.pool.plan(OWNER.public, 1)
        world.clock.advance(1)
        assert [r.identity for r in world.pool.plan(OWNER.public, 1)] == [R1.public]
        await world.pool.build(OWNER.public, 1)

    run(world, body)


def test_a_failed_build_is_retried_on_another_relay(world: World) -> None:
    world.node(R1, 2, relay=True)
    world.node(R2, 3, relay=True)

    async def body() -> None:
        world.builder.failures = [BuildFailed("no answer", hops_keyed=0)]
        path = await world.pool.build(OWNER.public, 1)
        (_, failed_on), (_, built_on) = world.builder.builds
        assert failed_on[0].identity != built_on[0].identity
        assert path.relays == [built_on[0].identity]  # type: ignore[attr-defined]

    run(world, body)


def test_the_owner_is_never_blamed(world: World) -> None:
    world.node(R1, 2, relay=True)

    async def body() -> None:
        # Every relay keyed: the owner did not answer. Retried on the same route.
        world.builder.failures = [BuildFailed("owner silent", hops_keyed=1)] * 3
        with pytest.raises(BuildFailed):
            await world.pool.build(OWNER.public, 1)
        assert [r[0].identity for _, r in world.builder.builds] == [R1.public] * 3
        assert [r.identity for r in world.pool.plan(OWNER.public, 1)] == [R1.public]

    run(world, body)


def test_an_owner_without_a_node_record_is_unreachable(world: World) -> None:
    world.node(R1, 2, relay=True)

    async def body() -> None:
        with pytest.raises(StreamFailed) as failed:
            await world.pool.get(MUTE.public, 1)
        assert failed.value.code is StreamError.OWNER_UNREACHABLE
        assert world.builder.builds == []

    run(world, body)


def test_relay_candidates_are_relays_with_addresses_from_node_records(world: World) -> None:
    world.node(R1, 2, relay=True)
    world.node(R2, 3, relay=True)
    world.node(PLAIN, 4, relay=False)
    world.node(MUTE, 5, relay=True, addresses=False)
    start = world.clock.wall()
    world.registry.upsert_peer("127.0.0.2", 4242, start, key=R1.public, rtt_ms=80.0)
    world.registry.upsert_peer("127.0.0.2", 4242, start + 3600, key=R1.public)
    world.links.rtts[R2.public] = 0.02  # an open link measured it
    found = {c.identity: c for c in world.pool.relay_candidates()}
    assert set(found) == {R1.public, R2.public}
    r1, r2 = found[R1.public], found[R2.public]
    assert r1.onion_key == bytes([2]) * 32 and r1.endpoints == (CellEndpoint("127.0.0.2", 4242),)
    assert (r1.uptime, r1.rtt) == (3600.0, 0.08)
    assert (r2.uptime, r2.rtt) == (0.0, 0.02)
    # Neither we nor the owner are ever a relay on our own circuit.
    world.node(ME, 6, relay=True)
    assert {r.identity for r in world.pool.plan(OWNER.public, 2)} == {R1.public, R2.public}
