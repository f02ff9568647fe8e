"""The owner side in-process: stream requests arrive over a real link pair joined by the
kit's in-memory transports, and are refused or served against a real registry and a
real target on loopback. Unknown service and a key not on the allow-list are refused
with their own codes and counted; a key allowed directly, a name allowed through the
resolver, and a public service are served. Exposing and withdrawing a service persist
to the registry and are announced through the publisher."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from kit.carriers import WAIT, Sink
from kit.clock import FakeClock
from kit.net import RawPeer
from kit.network import connect_links
from kit.roles import FakeLookup, put_signed
from vx6.crypto.keys import Identity, key_to_text
from vx6.errors import StreamError
from vx6.net.link import LinkProtocol
from vx6.node.owner import OwnerSide
from vx6.node.resolver import Resolver
from vx6.store.config import OwnerLimits, ServiceConfig
from vx6.store.registry import Registry
from vx6.wire.records import NameClaimBody

CLIENT, STRANGER, OWNER = (Identity(bytes([n]) * 32) for n in (1, 2, 9))


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, bool, bool]] = []

    def publish_service(self, name: str, public: bool, withdrawn: bool = False) -> None:
        self.published.append((name, public, withdrawn))


class Counters(dict[str, int]):
    def __call__(self, what: str, n: int = 1) -> None:
        self[what] = self.get(what, 0) + n


class OwnerPeer(RawPeer):
    """The owner's end of the link: stream requests go to the owner side."""

    def __init__(self, side: OwnerSide) -> None:
        super().__init__()
        self.side = side

    def stream_requested(self, link: LinkProtocol, sid: int, service: str, flags: int) -> None:
        self.side.stream_requested(link, sid, service, flags)


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.registry = Registry(tmp_path / "registry.db")
        self.publisher = RecordingPublisher()
        self.counters = Counters()
        self.resolver = Resolver(self.registry, FakeLookup(), self.clock)
        self.side = self.new_side()

    def new_side(self) -> OwnerSide:
        return OwnerSide(
            {},
            OwnerLimits(),
            registry=self.registry,
            resolver=self.resolver,
            publisher=self.publisher,
            count=self.counters,
            spawn=lambda coro: coro.close(),  # no name on these allow-lists needs chasing
            clock=self.clock,
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    yield w  # type: ignore[misc]
    w.registry.close()


Outcome = tuple[str, int | None]


def open_as(world: World, client: Identity, service: str, setup: Callable[[int], None]) -> Outcome:
    """Serve a loopback target, let `setup(port)` configure the owner side, then open
    `service` over a fresh link as `client`: ("opened", None) with the target's echo
    checked, or ("refused", code)."""

    async def main() -> Outcome:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        setup(port)
        a, _b = await connect_links(
            RawPeer(), OwnerPeer(world.side), identity_a=client, identity_b=OWNER
        )
        try:
            sink = Sink(a)
            sink.sid = a.open_stream(service, 0, sink)
            done = await first(sink.opened, sink.open_failed)
            if done is sink.open_failed:
                return ("refused", sink.open_failed.result()[0])
            a.send(sink.sid, b"hello")
            assert await sink.received(5) == b"hello"
            return ("opened", None)
        finally:
            a.close()
            server.close()

    return asyncio.run(main())


async def first(*futures: asyncio.Future[object]) -> asyncio.Future[object]:
    done, _ = await asyncio.wait(futures, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    assert done, "neither outcome in time"
    return done.pop()


def service(port: int, **kwargs: object) -> ServiceConfig:
    return ServiceConfig("ssh", "127.0.0.1", port, **kwargs)  # type: ignore[arg-type]


def test_an_unknown_service_is_refused_and_counted(world: World) -> None:
    assert open_as(world, CLIENT, "web", lambda port: world.side.expose(service(port))) == (
        "refused",
        StreamError.UNKNOWN_SERVICE,
    )
    assert world.counters == {"streams_refused_unknown_service": 1}


def test_a_key_not_on_the_allow_list_is_refused_and_counted(world: World) -> None:
    def setup(port: int) -> None:
        world.side.expose(service(port, allow=(key_to_text(CLIENT.public),)))

    assert open_as(world, STRANGER, "ssh", setup) == ("refused", StreamError.NOT_ALLOWED)
    assert world.counters == {"streams_refused_not_allowed": 1}


def test_a_key_on_the_allow_list_is_served(world: World) -> None:
    def setup(port: int) -> None:
        world.side.expose(service(port, allow=(key_to_text(CLIENT.public),)))

    assert open_as(world, CLIENT, "ssh", setup) == ("opened", None)
    assert "streams_refused_not_allowed" not in world.counters


def test_a_name_on_the_allow_list_is_resolved_to_its_key(world: World) -> None:
    def setup(port: int) -> None:
        put_signed(world.registry, CLIENT, NameClaimBody("carol"), 1, world.clock.wall())
        world.side.expose(service(port, allow=("carol",)))

    assert open_as(world, CLIENT, "ssh", setup) == ("opened", None)
    assert world.side.allowed_keys(world.side.services["ssh"]) == {CLIENT.public}


def test_a_name_nobody_claims_allows_nobody(world: World) -> None:
    def setup(port: int) -> None:
        world.side.expose(service(port, allow=("carol",)))

    assert open_as(world, CLIENT, "ssh", setup) == ("refused", StreamError.NOT_ALLOWED)
    # The claim arrives later: the remembered allow-list is dropped with the change.
    put_signed(world.registry, CLIENT, NameClaimBody("carol"), 1, world.clock.wall())
    assert world.side.allowed_keys(world.side.services["ssh"]) == {CLIENT.public}


def test_a_public_service_serves_anyone(world: World) -> None:
    def setup(port: int) -> None:
        world.side.expose(service(port, public=True))

    assert open_as(world, STRANGER, "ssh", setup) == ("opened", None)
    assert world.side.allow_lists() == []  # a public service trusts no key for links


def test_expose_and_unexpose_persist_and_are_announced(world: World) -> None:
    allow = (key_to_text(CLIENT.public),)
    world.side.expose(service(4000, allow=allow))
    world.side.expose(ServiceConfig("web", "127.0.0.1", 8080, public=True))
    assert [s.name for s in world.registry.services()] == ["ssh", "web"]
    assert world.side.allow_lists() == [frozenset({CLIENT.public})]
    # A restarted node brings them back from the registry.
    again = world.new_side()
    again.load_services({})
    assert set(again.services) == {"ssh", "web"} and again.services["ssh"].allow == allow
    assert world.side.unexpose("ssh") is True
    assert world.side.unexpose("nothing") is False
    assert [s.name for s in world.registry.services()] == ["web"]
    assert world.publisher.published == [
        ("ssh", False, False),
        ("web", True, False),
        ("ssh", False, True),
    ]
