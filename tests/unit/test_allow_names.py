"""Allow-list entries (issue 11, defect c): checked when given, pinned on first use so a
later claim by another key never takes an allowed name over, and an unresolved name
chased through the DHT until it resolves, the chase cut short at most once per window."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from kit.clock import FakeClock
from vx6.core.dht.keys import name_key
from vx6.core.names import validate_allow_entry
from vx6.core.records import make_record
from vx6.crypto.keys import Identity, fingerprint, key_to_text
from vx6.errors import StreamError, UsageError
from vx6.node.allow_names import AllowNameChaser
from vx6.node.owner import OwnerSide
from vx6.node.resolver import Resolver
from vx6.store.config import NodeConfig, ServiceConfig, service_config
from vx6.store.registry import Registry
from vx6.wire.records import Body, NameClaimBody

BOB = Identity(bytes(range(64, 96)))
THIEF = Identity(bytes(range(96, 128)))
BOUND = 10.0


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry.sqlite") as registry:
        yield registry


def store(reg: Registry, identity: Identity, body: Body, now: float, lifetime: int) -> None:
    rec, raw = make_record(identity, body, int(now * 1000), now, lifetime)
    assert reg.put_record(
        rec.kind, rec.signer, rec.subject, rec.seq, rec.issued, rec.expires, raw, "test", now
    )


class NoPublisher:
    def publish_service(self, name: str, public: bool, withdrawn: bool = False) -> None:
        pass


async def no_lookup(target: bytes) -> bool:
    return False


def owner_side(reg: Registry, clock: FakeClock, spawn: Any = None) -> OwnerSide:
    return OwnerSide(
        {},
        NodeConfig().owner_limits,
        registry=reg,
        resolver=Resolver(reg, no_lookup, clock),
        publisher=NoPublisher(),
        count=lambda what, n=1: None,
        clock=clock,
        spawn=spawn or (lambda coro: coro.close()),
    )


# ------------------------------------------------------------------ checked when given
@pytest.mark.parametrize(
    ("entry", "canonical"),
    [
        ("bob", "bob"),
        ("Bob", "bob"),
        (f"bob#{fingerprint(BOB.public)}", f"bob#{fingerprint(BOB.public)}"),
        (key_to_text(BOB.public).upper(), key_to_text(BOB.public)),
    ],
)
def test_good_entries_are_kept_in_canonical_form(entry: str, canonical: str) -> None:
    assert validate_allow_entry(entry) == canonical


@pytest.mark.parametrize(
    "entry",
    [
        "bad key!",
        "a.b",
        "",
        "-bob",
        "bob#short",
        "b" * 40,
        f"{key_to_text(BOB.public)}#{fingerprint(THIEF.public)}",
        "bob\n",
    ],
)
def test_bad_entries_are_refused_naming_the_entry(entry: str) -> None:
    with pytest.raises(UsageError) as err:
        service_config("ssh", "127.0.0.1:22", ["bob", entry], False, False)
    message = str(err.value)
    assert "\n" not in message and repr(entry) in message


# ------------------------------------------------------------------ claim and pin
def test_a_later_claim_by_another_key_does_not_take_an_allowed_name(reg: Registry) -> None:
    clock = FakeClock()
    owner = owner_side(reg, clock)
    svc = ServiceConfig("ssh", "127.0.0.1", 22, allow=("bob",))
    store(reg, BOB, NameClaimBody("bob"), clock.wall(), lifetime=60)
    assert owner.allowed_keys(svc) == {BOB.public}
    clock.advance(120)  # bob's claim lapses (he is offline); a thief claims the name
    store(reg, THIEF, NameClaimBody("bob"), clock.wall(), lifetime=3600)
    assert owner.allowed_keys(svc) == {BOB.public}
    (entry,) = owner.describe(svc)["allow_status"]  # type: ignore[misc]
    assert entry["state"] == "pinned" and fingerprint(THIEF.public) in entry["detail"]


def test_a_name_with_a_fingerprint_allows_only_that_key(reg: Registry) -> None:
    clock = FakeClock()
    owner = owner_side(reg, clock)
    svc = ServiceConfig("ssh", "127.0.0.1", 22, allow=(f"bob#{fingerprint(BOB.public)}",))
    store(reg, THIEF, NameClaimBody("bob"), clock.wall(), lifetime=3600)
    assert owner.allowed_keys(svc) == frozenset()
    store(reg, BOB, NameClaimBody("bob"), clock.wall(), lifetime=3600)
    assert owner.allowed_keys(svc) == {BOB.public}


# ------------------------------------------------------------------ the chase
def test_an_unresolved_name_is_chased_until_its_claim_is_found(reg: Registry) -> None:
    clock = FakeClock()
    svc = ServiceConfig("ssh", "127.0.0.1", 22, allow=("bob",))

    async def scenario() -> None:
        tasks: list[asyncio.Task[None]] = []

        def spawn(coro: Coroutine[Any, Any, None]) -> None:
            tasks.append(asyncio.ensure_future(coro))

        owner = owner_side(reg, clock, spawn)
        calls: list[bytes] = []

        async def lookup(target: bytes) -> bool:
            calls.append(target)
            if len(calls) == 3:  # the DHT has it only from the third try on
                store(reg, BOB, NameClaimBody("bob"), clock.wall(), lifetime=3600)
                return True
            return False

        owner.chaser = AllowNameChaser(
            lookup, owner.unresolved_names, spawn, clock, first_delay=0.001, max_delay=0.004
        )
        owner.expose(svc)
        async with asyncio.timeout(BOUND):
            await asyncio.gather(*tasks)
        assert len(calls) == 3 and len(set(calls)) == 1
        assert owner.allowed_keys(svc) == {BOB.public}
        assert owner.chaser.chasing == set()

    asyncio.run(scenario())


def test_a_nudge_is_rate_limited(reg: Registry) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        chaser = AllowNameChaser(no_lookup, lambda: set(), lambda coro: coro.close(), clock)
        assert chaser.nudge()
        assert not chaser.nudge()  # a refused peer cannot make us flood the DHT
        clock.advance(chaser.nudge_every)
        assert chaser.nudge()

    asyncio.run(scenario())


class RefusedCarrier:
    """Just what a refusal touches: the proven key and reject_stream."""

    def __init__(self, peer: bytes) -> None:
        self.peer_identity = peer
        self.rejected: list[StreamError] = []

    def reject_stream(self, sid: int, code: StreamError, reason: str) -> None:
        self.rejected.append(code)


def test_a_refused_stream_nudges_the_chase_but_is_refused(reg: Registry) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        owner = owner_side(reg, clock)
        counted: list[str] = []
        owner.count = lambda what, n=1: counted.append(what)
        owner.services["ssh"] = ServiceConfig("ssh", "127.0.0.1", 22, allow=("bob",))
        link = RefusedCarrier(THIEF.public)
        for sid in (1, 3):
            owner.stream_requested(link, sid, "ssh", 0)  # type: ignore[arg-type]
        assert link.rejected == [StreamError.NOT_ALLOWED] * 2
        assert counted.count("allow_names_nudged") == 1  # once per window
        assert counted.count("streams_refused_not_allowed") == 2

    asyncio.run(scenario())


def test_the_chase_lookups_are_counted_apart(reg: Registry) -> None:
    """`allow_names_lookups` counts the chaser's DHT lookups alone (the hostile suite's
    allow-nudge row bounds them; `dht_lookups` also counts relay directory rounds)."""
    clock = FakeClock()

    async def scenario() -> None:
        tasks: list[asyncio.Task[None]] = []
        owner = owner_side(reg, clock, lambda coro: tasks.append(asyncio.ensure_future(coro)))
        counted: list[str] = []
        owner.count = lambda what, n=1: counted.append(what)
        looked: list[bytes] = []

        async def lookup(target: bytes) -> bool:
            looked.append(target)
            return False

        owner.resolver.lookup = lookup
        owner.services["ssh"] = ServiceConfig("ssh", "127.0.0.1", 22, allow=("bob",))
        owner.chaser.want()
        async with asyncio.timeout(BOUND):
            while not looked:
                await asyncio.sleep(0)  # bounded polling: the chase's first lookup
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert looked == [name_key("bob")]
        assert counted.count("allow_names_lookups") == 1

    asyncio.run(scenario())
