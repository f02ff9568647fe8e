"""The publisher in-process: a real registry in tmp_path, recording stand-ins for the
sync push and the DHT, and the kit's fake clock. `publish_all` signs the node record,
the name claim and one record per service, each of which passes the record rules a
peer applies; sequence numbers keep rising when the wall clock is set back, also across
a restart; a registry that refuses writes sets `unsaved` while every record still goes
to the sync neighbours and the DHT."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kit.clock import FakeClock
from vx6.core.names import NAME_POW_BITS
from vx6.core.records import check_claim_policy, check_record
from vx6.crypto.keys import Identity, StaticKey
from vx6.node.publisher import NodeKeys, Publisher
from vx6.store.config import NodeConfig, ServiceConfig
from vx6.store.registry import Registry
from vx6.wire.records import (
    Capability,
    Endpoint,
    Kind,
    Mode,
    NameClaimBody,
    NodeBody,
    ServiceBody,
    decode_record,
)

KEYS = NodeKeys(Identity(bytes([1]) * 32), StaticKey(bytes([2]) * 32), StaticKey(bytes([3]) * 32))
LISTEN = [("127.0.0.1", 4001), ("::1", 4002)]  # not wildcards: no host address is read


class RecordingPush:
    def __init__(self) -> None:
        self.pushed: list[bytes] = []

    def push(self, fresh: list[bytes]) -> None:
        self.pushed += fresh


class RecordingDht:
    def __init__(self) -> None:
        self.published: list[tuple[bytes, bytes]] = []

    def publish(self, raw: bytes, slot: bytes) -> None:
        self.published.append((raw, slot))


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "registry.db"
        self.clock = FakeClock()
        self.registry = Registry(self.path)
        self.push = RecordingPush()
        self.dht = RecordingDht()
        self.moved: list[set[str]] = []
        self.services = {
            "ssh": ServiceConfig("ssh", "127.0.0.1", 22, allow=("bob",)),
            "web": ServiceConfig("web", "127.0.0.1", 80, public=True),
        }
        self.publisher = self.new_publisher()

    def new_publisher(self, name: str | None = "alice") -> Publisher:
        return Publisher(
            KEYS,
            name,
            NodeConfig(relay=True),
            services=self.services,
            listen_addresses=LISTEN,
            registry=self.registry,
            records=self.push,
            dht=self.dht,
            addresses_changed=self.moved.append,
            clock=self.clock,
        )

    def seqs(self) -> list[int]:
        return [decode_record(raw).seq for raw in self.push.pushed]


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    yield w  # type: ignore[misc]
    w.registry.close()


def test_publish_all_signs_node_record_name_claim_and_services(world: World) -> None:
    world.publisher.publish_all()
    now = world.clock.wall()
    records = [check_record(raw, now, None) for raw in world.push.pushed]
    for rec in records:
        check_claim_policy(rec, NAME_POW_BITS)  # the claim carries its proof of work
        assert rec.signer == KEYS.identity.public
    bodies = [rec.parsed_body() for rec in records]
    node = NodeBody(
        KEYS.link_key.public,
        KEYS.onion_key.public,
        (Endpoint("::1", 4002), Endpoint("127.0.0.1", 4001)),  # IPv6 first
        int(Capability.RELAY),
    )
    assert bodies[0] == node
    assert isinstance(bodies[1], NameClaimBody) and bodies[1].name == "alice"
    assert bodies[2:] == [
        ServiceBody("ssh", int(Mode.DIRECT), False),
        ServiceBody("web", int(Mode.DIRECT), True),
    ]
    # The same records went into the registry (ours: source "self") and the DHT.
    held = world.registry.records(signer=KEYS.identity.public, now=now)
    assert sorted(r.raw for r in held) == sorted(world.push.pushed)
    assert {r.source for r in held} == {"self"}
    assert [raw for raw, _ in world.dht.published] == world.push.pushed
    assert [slot for _, slot in world.dht.published] == [
        bytes([Kind.NODE]),
        bytes([Kind.NAME_CLAIM]) + b"alice",
        bytes([Kind.SERVICE]) + b"ssh",
        bytes([Kind.SERVICE]) + b"web",
    ]
    assert world.publisher.unsaved is False


def test_a_withdrawn_service_outranks_its_old_record(world: World) -> None:
    world.publisher.publish_service("ssh", False)
    world.publisher.publish_service("ssh", False, withdrawn=True)
    (held,) = world.registry.records(kind=int(Kind.SERVICE), subject="ssh")
    assert decode_record(held.raw).parsed_body() == ServiceBody("ssh", 0, False)


def test_a_node_without_a_name_claims_none(world: World) -> None:
    world.new_publisher(name=None).publish_all()
    kinds = [decode_record(raw).kind for raw in world.push.pushed]
    assert kinds == [Kind.NODE, Kind.SERVICE, Kind.SERVICE]


def test_sequence_numbers_rise_when_the_wall_clock_goes_back(world: World) -> None:
    world.publisher.publish_all()
    world.clock.step_wall(-3600)  # set back an hour
    world.publisher.publish_all()
    world.clock.advance(1)
    world.publisher.publish_node()
    seqs = world.seqs()
    assert seqs == sorted(set(seqs)) and len(seqs) == 9


def test_sequence_numbers_rise_across_a_restart_with_the_clock_set_back(world: World) -> None:
    world.publisher.publish_all()
    last = max(world.seqs())
    world.registry.close()
    world.registry = Registry(world.path)
    world.clock.step_wall(-86400)
    world.push.pushed.clear()
    world.new_publisher().publish_all()
    assert min(world.seqs()) > last


def refuse_writes(registry: Registry) -> None:
    # SQLite itself refuses every write from now on ("attempt to write a readonly
    # database"), as for a file that became read-only.
    registry._db().execute("PRAGMA query_only = ON")


def test_an_unwritable_registry_marks_unsaved_and_still_publishes(world: World) -> None:
    world.publisher.publish_all()
    saved = max(world.seqs())
    refuse_writes(world.registry)
    world.clock.step_wall(-60)
    world.push.pushed.clear()
    world.dht.published.clear()
    world.publisher.publish_all()
    assert world.publisher.unsaved is True
    assert len(world.push.pushed) == 4
    assert [raw for raw, _ in world.dht.published] == world.push.pushed
    # Above every number used before, though the registry kept none of them.
    seqs = world.seqs()
    assert min(seqs) > saved and seqs == sorted(set(seqs))
    with pytest.raises(sqlite3.Error):
        world.registry._db().execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
    # Writable again: the next full publish lands and clears the mark.
    world.registry._db().execute("PRAGMA query_only = OFF")
    world.publisher.publish_all()
    assert world.publisher.unsaved is False
    assert max(r.seq for r in world.registry.records(signer=KEYS.identity.public)) == max(
        world.seqs()
    )
