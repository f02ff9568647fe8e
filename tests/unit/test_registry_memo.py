"""The memo of registry-derived answers: the client's name resolution and the owner's
allow-list are remembered between streams, and forgotten as soon as the registry changes
(a new claim, a rotation, a pin, a purge, another process's commit) or a record expires."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import pytest

from vx6.core.names import parse_service_address
from vx6.core.records import make_record
from vx6.crypto.keys import Identity
from vx6.errors import StreamFailed
from vx6.net.ports import SYSTEM_CLOCK
from vx6.node.link_table import TrustedKeys
from vx6.node.owner import OwnerSide
from vx6.node.resolver import Resolver
from vx6.store.config import NodeConfig, ServiceConfig
from vx6.store.memo import RegistryMemo
from vx6.store.registry import Registry
from vx6.wire.records import Body, NameClaimBody, RotationBody

OLD = Identity(bytes(range(32)))
NEW = Identity(bytes(range(32, 64)))
BOB = Identity(bytes(range(64, 96)))
LIFETIME = 3600


@pytest.fixture
def reg(tmp_path: Path) -> Any:
    with Registry(tmp_path / "registry.sqlite") as registry:
        yield registry


def store(reg: Registry, identity: Identity, body: Body, lifetime: int = LIFETIME) -> None:
    now = time.time()
    rec, raw = make_record(identity, body, int(now * 1000), now, lifetime)
    assert reg.put_record(
        rec.kind, rec.signer, rec.subject, rec.seq, rec.issued, rec.expires, raw, "test", now
    )


def count_queries(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the registry's record lookups (the work the memo saves)."""
    seen: list[str] = []
    records = reg.records

    def counting(**kwargs: Any) -> Any:
        seen.append(str(kwargs.get("subject")))
        return records(**kwargs)

    monkeypatch.setattr(reg, "records", counting)
    return seen


class NoPublisher:
    def publish_service(self, name: str, public: bool, withdrawn: bool = False) -> None:
        pass


async def no_lookup(target: bytes) -> bool:
    return False


def sides(reg: Registry) -> tuple[Resolver, OwnerSide]:
    resolver = Resolver(reg, no_lookup, SYSTEM_CLOCK)
    owner = OwnerSide(
        {},
        NodeConfig().owner_limits,
        registry=reg,
        resolver=resolver,
        publisher=NoPublisher(),
        count=lambda what, n=1: None,
        clock=SYSTEM_CLOCK,
        spawn=lambda coro: coro.close(),
    )
    return resolver, owner


# ------------------------------------------------------------------ the memo itself
def test_memo_keeps_an_answer_while_the_registry_stands_still(reg: Registry) -> None:
    store(reg, OLD, NameClaimBody("alice"))
    memo: RegistryMemo[str, int] = RegistryMemo(reg)
    now = time.time()
    assert memo.get("k", now) is None
    memo.put("k", 1)
    assert memo.get("k", now + 1) == 1
    reg.upsert_peer("::1", 4242, now)  # peers and meta say nothing about names
    reg.set_meta("name", "x")
    assert memo.get("k", now + 2) == 1


@pytest.mark.parametrize(
    "change",
    [
        lambda reg: store(reg, NEW, NameClaimBody("alice")),
        lambda reg: reg.set_pin("alice", OLD.public, time.time()),
        lambda reg: reg.purge_expired(time.time() + 2 * LIFETIME),
    ],
    ids=["record stored", "pin set", "records purged"],
)
def test_memo_forgets_on_every_change(reg: Registry, change: Any) -> None:
    store(reg, OLD, NameClaimBody("alice"))
    memo: RegistryMemo[str, int] = RegistryMemo(reg)
    now = time.time()
    memo.get("k", now)
    memo.put("k", 1)
    change(reg)
    assert memo.get("k", now) is None


def test_memo_ignores_a_record_that_was_not_stored(reg: Registry) -> None:
    store(reg, OLD, NameClaimBody("alice"))
    held = reg.records(subject="alice")[0]
    memo: RegistryMemo[str, int] = RegistryMemo(reg)
    memo.get("k", time.time())
    memo.put("k", 1)
    replay = (held.kind, held.signer, held.subject, held.seq, held.issued, held.expires)
    assert not reg.put_record(*replay, held.raw, "replay", time.time())  # seq not higher
    assert memo.get("k", time.time()) == 1


def test_memo_forgets_when_another_process_commits(reg: Registry, tmp_path: Path) -> None:
    memo: RegistryMemo[str, int] = RegistryMemo(reg)
    memo.get("k", time.time())
    memo.put("k", 1)
    with Registry(tmp_path / "registry.sqlite") as other:  # e.g. the CLI on the same file
        other.set_pin("alice", OLD.public, time.time())
    assert memo.get("k", time.time()) is None


def test_memo_forgets_when_a_record_expires(reg: Registry) -> None:
    store(reg, OLD, NameClaimBody("alice"), lifetime=100)
    expires = reg.records(subject="alice")[0].expires
    memo: RegistryMemo[str, int] = RegistryMemo(reg)
    memo.get("k", expires - 10)
    memo.put("k", 1)
    assert memo.get("k", expires - 1) == 1
    assert memo.get("k", expires) is None
    memo.put("k", 2)
    assert memo.get("k", expires - 50) is None  # the clock went back: start afresh


def test_memo_drops_an_answer_computed_while_the_registry_changed(reg: Registry) -> None:
    memo: RegistryMemo[str, int] = RegistryMemo(reg)
    memo.get("k", time.time())
    reg.set_pin("alice", OLD.public, time.time())
    memo.put("k", 1)
    assert memo.get("k", time.time()) is None


def test_memo_is_bounded(reg: Registry) -> None:
    memo: RegistryMemo[int, int] = RegistryMemo(reg, max_entries=4)
    now = time.time()
    for i in range(10):
        memo.get(i, now)
        memo.put(i, i)
        assert len(memo) <= 4


# ------------------------------------------------------------------ the client's resolve
def test_resolve_is_remembered_and_follows_a_rotation(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = sides(reg)
    addr = parse_service_address("alice.ssh")
    store(reg, OLD, NameClaimBody("alice"))
    reg.set_pin("alice", OLD.public, time.time())
    queries = count_queries(reg, monkeypatch)
    assert client.owner_key(addr).key == OLD.public
    asked = len(queries)
    assert client.owner_key(addr).key == OLD.public
    assert client.owner_key(parse_service_address("alice.web")).key == OLD.public  # any service
    assert len(queries) == asked, "answered from the memo"

    # The old key hands the name on: the remembered answer must not outlive that.
    store(reg, NEW, NameClaimBody("alice"))
    store(reg, OLD, RotationBody("alice", NEW.public))
    assert client.owner_key(addr).key == NEW.public
    assert reg.get_pin("alice") == NEW.public  # the re-pin still happens
    assert client.owner_key(addr).key == NEW.public


def test_unpin_drops_the_remembered_answers(reg: Registry) -> None:
    # Pinned to OLD while only NEW claims: the pin decides (KEY_MISMATCH), remembered.
    client, _ = sides(reg)
    addr = parse_service_address("alice.ssh")
    store(reg, NEW, NameClaimBody("alice"))
    reg.set_pin("alice", OLD.public, time.time())
    with pytest.raises(StreamFailed, match="pinned to"):
        client.owner_key(addr)
    trusted = TrustedKeys(reg)
    assert trusted(OLD.public)  # a pinned owner is trusted by the link table
    assert reg.remove_pin("alice") is True
    assert client.owner_key(addr).key == NEW.public  # the pin's answer is gone at once
    assert not trusted(OLD.public)
    assert reg.remove_pin("alice") is False


def test_resolve_sees_a_new_claim(reg: Registry) -> None:
    client, _ = sides(reg)
    addr = parse_service_address("alice.ssh")
    store(reg, OLD, NameClaimBody("alice"))
    assert client.owner_key(addr).key == OLD.public
    # A second, unpinned claimant makes the bare name ambiguous: no stale answer.
    store(reg, NEW, NameClaimBody("alice"))
    with pytest.raises(StreamFailed, match="ambiguous"):
        client.owner_key(addr)


# ------------------------------------------------------------------ the owner's allow-list
def test_allow_list_is_remembered_until_the_name_is_claimed(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, owner = sides(reg)
    svc = ServiceConfig("ssh", "127.0.0.1", 22, allow=("bob",))
    assert owner.allowed_keys(svc) == frozenset()  # bob unknown yet: allows nobody
    store(reg, BOB, NameClaimBody("bob"))
    assert owner.allowed_keys(svc) == {BOB.public}
    queries = count_queries(reg, monkeypatch)
    for _ in range(3):
        assert owner.allowed_keys(svc) == {BOB.public}
    assert queries == [], "answered from the memo"
    # A changed allow-list is a different question, not a stale answer.
    changed = ServiceConfig("ssh", "127.0.0.1", 22, allow=())
    assert owner.allowed_keys(changed) == frozenset()


def test_allow_list_follows_a_rotation_of_an_allowed_name(reg: Registry) -> None:
    _, owner = sides(reg)
    svc = ServiceConfig("ssh", "127.0.0.1", 22, allow=("bob",))
    store(reg, OLD, NameClaimBody("bob"))
    reg.set_pin("bob", OLD.public, time.time())
    assert owner.allowed_keys(svc) == {OLD.public}
    store(reg, NEW, NameClaimBody("bob"))
    store(reg, OLD, RotationBody("bob", NEW.public))
    assert owner.allowed_keys(svc) == {NEW.public}
    assert cast(bytes, reg.get_pin("bob")) == OLD.public  # the owner never re-pins
