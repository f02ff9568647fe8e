"""The resolver role in-process: a real registry in tmp_path, a fake DHT lookup and the
kit's fake clock. Each claim-and-pin outcome comes with the provenance that says where
the key came from; a registry miss asks the DHT once; node records expire by the wall
clock; remembered answers are dropped when the registry changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kit.clock import FakeClock
from kit.roles import FakeLookup, put_signed
from vx6.core.dht.keys import name_key
from vx6.core.names import parse_service_address
from vx6.crypto.keys import Identity, fingerprint, key_to_text, node_id
from vx6.errors import StreamError, StreamFailed
from vx6.node.resolver import Provenance, Resolution, Resolver
from vx6.store.registry import Registry
from vx6.wire.records import Endpoint, NameClaimBody, NodeBody, RotationBody

ALICE, THIEF, ALICE_NEW = (Identity(bytes([n]) * 32) for n in (1, 2, 3))
ALICE_SSH = parse_service_address("alice.ssh")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "registry.db")
    yield reg  # type: ignore[misc]
    reg.close()


@pytest.fixture
def lookup() -> FakeLookup:
    return FakeLookup()


@pytest.fixture
def resolver(registry: Registry, lookup: FakeLookup, clock: FakeClock) -> Resolver:
    return Resolver(registry, lookup, clock)


def claim(registry: Registry, clock: FakeClock, who: Identity, source: str, seq: int = 1) -> None:
    put_signed(registry, who, NameClaimBody("alice"), seq, clock.wall(), source=source)


def test_an_address_with_a_key_needs_no_registry(resolver: Resolver, lookup: FakeLookup) -> None:
    addr = parse_service_address(f"{key_to_text(ALICE.public)}.ssh")
    assert resolver.owner_key(addr) == Resolution(ALICE.public, Provenance.ADDRESS)
    assert asyncio.run(resolver.resolve(addr)).provenance is Provenance.ADDRESS
    assert lookup.targets == []


@pytest.mark.parametrize(
    ("source", "provenance"),
    [
        ("dht", Provenance.DHT),
        ("peer [::1]:4242", Provenance.PEER),
        ("self", Provenance.REGISTRY),
    ],
)
def test_one_claim_wins_and_says_where_it_came_from(
    resolver: Resolver, registry: Registry, clock: FakeClock, source: str, provenance: Provenance
) -> None:
    claim(registry, clock, ALICE, source)
    assert resolver.owner_key(ALICE_SSH) == Resolution(ALICE.public, provenance)


def test_the_pin_decides_and_a_thief_is_refused(
    resolver: Resolver, registry: Registry, clock: FakeClock
) -> None:
    claim(registry, clock, ALICE, "dht")
    registry.set_pin("alice", ALICE.public, clock.wall())
    claim(registry, clock, THIEF, "dht")
    assert resolver.owner_key(ALICE_SSH) == Resolution(ALICE.public, Provenance.PINNED)


def test_a_pinned_name_claimed_only_by_another_key_is_a_mismatch(
    resolver: Resolver, registry: Registry, clock: FakeClock
) -> None:
    registry.set_pin("alice", ALICE.public, clock.wall())
    claim(registry, clock, THIEF, "dht")
    with pytest.raises(StreamFailed) as failed:
        resolver.owner_key(ALICE_SSH)
    assert failed.value.code is StreamError.KEY_MISMATCH


def test_two_claims_without_a_pin_are_ambiguous_until_a_fingerprint_picks_one(
    resolver: Resolver, registry: Registry, clock: FakeClock
) -> None:
    claim(registry, clock, ALICE, "dht")
    claim(registry, clock, THIEF, "peer [::1]:4242")
    with pytest.raises(StreamFailed) as failed:
        resolver.owner_key(ALICE_SSH)
    assert failed.value.code is StreamError.UNKNOWN_NAME and "ambiguous" in str(failed.value)
    picked = parse_service_address(f"alice#{fingerprint(THIEF.public)}.ssh")
    assert resolver.owner_key(picked) == Resolution(THIEF.public, Provenance.PEER)


def test_a_registry_miss_asks_the_dht_once(
    resolver: Resolver, registry: Registry, lookup: FakeLookup, clock: FakeClock
) -> None:
    lookup.found[name_key("alice")] = lambda: claim(registry, clock, ALICE, "dht")
    found = asyncio.run(resolver.resolve(ALICE_SSH))
    assert found == Resolution(ALICE.public, Provenance.DHT, looked_up=True)
    assert lookup.targets == [name_key("alice")]
    # Held now: the next resolve does not ask again.
    assert asyncio.run(resolver.resolve(ALICE_SSH)).looked_up is False
    assert lookup.targets == [name_key("alice")]


def test_a_name_nobody_claims_fails_after_one_lookup(
    resolver: Resolver, lookup: FakeLookup
) -> None:
    with pytest.raises(StreamFailed) as failed:
        asyncio.run(resolver.resolve(ALICE_SSH))
    assert failed.value.code is StreamError.UNKNOWN_NAME
    assert lookup.targets == [name_key("alice")]


def test_a_lookup_that_finds_records_but_no_claim_still_fails_unknown_name(
    resolver: Resolver, registry: Registry, lookup: FakeLookup, clock: FakeClock
) -> None:
    # The DHT answered (something for another name), yet nothing claims "alice".
    def other() -> None:
        put_signed(registry, THIEF, NameClaimBody("mallory"), 1, clock.wall())

    lookup.found[name_key("alice")] = other
    with pytest.raises(StreamFailed) as failed:
        asyncio.run(resolver.resolve(ALICE_SSH))
    assert failed.value.code is StreamError.UNKNOWN_NAME
    assert lookup.targets == [name_key("alice")]


def rotate(registry: Registry, clock: FakeClock) -> None:
    """Alice was pinned; she moved her name to a new key, signed by the old one."""
    claim(registry, clock, ALICE, "dht")
    registry.set_pin("alice", ALICE.public, clock.wall())
    claim(registry, clock, ALICE_NEW, "dht")
    put_signed(registry, ALICE, RotationBody("alice", ALICE_NEW.public), 2, clock.wall())


def test_a_rotation_moves_the_pin_when_following_it(
    resolver: Resolver, registry: Registry, clock: FakeClock
) -> None:
    rotate(registry, clock)
    assert resolver.owner_key(ALICE_SSH) == Resolution(ALICE_NEW.public, Provenance.DHT)
    assert registry.get_pin("alice") == ALICE_NEW.public
    # The pin moved: from now on the pin decides.
    assert resolver.owner_key(ALICE_SSH) == Resolution(ALICE_NEW.public, Provenance.PINNED)


def test_a_question_that_must_not_change_pins_leaves_the_pin(
    resolver: Resolver, registry: Registry, clock: FakeClock
) -> None:
    rotate(registry, clock)
    assert resolver.owner_key(ALICE_SSH, follow_pin=False).key == ALICE_NEW.public
    assert registry.get_pin("alice") == ALICE.public


def test_node_records_expire_by_the_wall_clock(
    resolver: Resolver, registry: Registry, lookup: FakeLookup, clock: FakeClock
) -> None:
    body = NodeBody(bytes(32), bytes(32), (Endpoint("::1", 4242),), 0)
    put_signed(registry, ALICE, body, 1, clock.wall(), lifetime=100)
    assert resolver.node_record(ALICE.public) == body
    clock.advance(99.5)
    assert resolver.node_record(ALICE.public) == body
    clock.advance(0.5)
    assert resolver.node_record(ALICE.public) is None
    # A fresh one asks the DHT for the node's own key.
    assert asyncio.run(resolver.fresh_node_record(ALICE.public)) is None
    assert lookup.targets == [node_id(ALICE.public)]


def test_node_record_or_lookup_asks_only_without_an_address(
    resolver: Resolver, registry: Registry, lookup: FakeLookup, clock: FakeClock
) -> None:
    moved = NodeBody(bytes(32), bytes(32), (Endpoint("127.0.0.2", 4243),), 0)
    put_signed(registry, ALICE, NodeBody(bytes(32), bytes(32), (), 0), 1, clock.wall())
    lookup.found[node_id(ALICE.public)] = lambda: put_signed(
        registry, ALICE, moved, 2, clock.wall()
    )
    assert asyncio.run(resolver.node_record_or_lookup(ALICE.public)) == moved
    assert asyncio.run(resolver.node_record_or_lookup(ALICE.public)) == moved
    assert lookup.targets == [node_id(ALICE.public)]


def test_remembered_answers_are_dropped_when_the_registry_changes(
    resolver: Resolver, registry: Registry, clock: FakeClock
) -> None:
    claim(registry, clock, ALICE, "dht")
    assert resolver.owner_key(ALICE_SSH).provenance is Provenance.DHT
    registry.set_pin("alice", ALICE.public, clock.wall())
    assert resolver.owner_key(ALICE_SSH).provenance is Provenance.PINNED
    claim(registry, clock, THIEF, "dht")  # pinned: the thief changes nothing...
    assert resolver.owner_key(ALICE_SSH).key == ALICE.public
    registry.set_pin("alice", THIEF.public, clock.wall())  # ...until the user pins it
    assert resolver.owner_key(ALICE_SSH) == Resolution(THIEF.public, Provenance.PINNED)


def test_answers_are_remembered_while_the_registry_stands_still(
    resolver: Resolver, registry: Registry, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim(registry, clock, ALICE, "dht")
    reads: list[object] = []
    records = registry.records

    def counted(*args: object, **kwargs: object) -> object:
        reads.append(kwargs.get("kind"))
        return records(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "records", counted)
    for _ in range(3):
        assert resolver.owner_key(ALICE_SSH).key == ALICE.public
    assert len(reads) == 2  # claims and rotations, read once
    registry.set_pin("alice", ALICE.public, clock.wall())
    assert resolver.owner_key(ALICE_SSH).provenance is Provenance.PINNED
    assert len(reads) == 4


def test_a_remembered_answer_lapses_with_its_claim(
    resolver: Resolver, registry: Registry, clock: FakeClock
) -> None:
    put_signed(registry, ALICE, NameClaimBody("alice"), 1, clock.wall(), lifetime=60)
    assert resolver.owner_key(ALICE_SSH).key == ALICE.public
    clock.advance(60)
    with pytest.raises(StreamFailed) as failed:
        resolver.owner_key(ALICE_SSH)
    assert failed.value.code is StreamError.UNKNOWN_NAME


def test_a_pin_set_by_another_process_is_seen_at_once(
    resolver: Resolver, registry: Registry, clock: FakeClock, tmp_path: Path
) -> None:
    # The CLI writes the same file through its own connection (`vx6 pin`).
    claim(registry, clock, ALICE, "dht")
    claim(registry, clock, THIEF, "dht")
    with pytest.raises(StreamFailed):
        resolver.owner_key(ALICE_SSH)
    with Registry(tmp_path / "registry.db") as cli:
        cli.set_pin("alice", THIEF.public, clock.wall())
    assert resolver.owner_key(ALICE_SSH) == Resolution(THIEF.public, Provenance.PINNED)
