"""Hidden-service descriptors as DHT records (docs/hidden.md section 3): the record kind,
its replica keys, what a storer accepts and refuses, the datagrams that carry it, the
node-layer directory that publishes and fetches it, and that peer sync leaves it alone.

Any fresh `Identity` stands in for a period's blinded key: to a storer A' is just an
Ed25519 public key."""

from __future__ import annotations

import asyncio
import hashlib
import random
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kit.clock import FakeClock
from kit.dht import CFG, NOW, identity, node_record
from vx6.core.dht import DhtNode, credentials_for
from vx6.core.dht import events as ev
from vx6.core.dht.keys import (
    hidden_descriptor_key,
    hidden_descriptor_keys,
    record_key,
    record_keys,
    service_key,
)
from vx6.core.dht.values import Outcome, RecordStore
from vx6.core.records import MAX_DESCRIPTOR_LIFETIME, make_record
from vx6.crypto.keys import Identity
from vx6.errors import DecodeError
from vx6.node.hidden_dht import DescriptorDirectory
from vx6.node.records import RecordHub
from vx6.sim.network import SimNetwork
from vx6.store.registry import Registry
from vx6.wire import dht as w
from vx6.wire.records import (
    DESCRIPTOR_BODY_SIZE,
    MAX_RECORD_SIZE,
    SIGNING_DOMAIN,
    HiddenDescriptorBody,
    Kind,
    decode_body,
    decode_record,
    encode_body,
)

BLINDED = Identity(bytes(range(40, 72)))  # a period's blinded key A', as a storer sees it
OTHER = Identity(bytes(range(80, 112)))
LIFETIME = 3 * 3600
BLOB = bytes(range(256)) * 3 + bytes(128)


def descriptor(
    signer: Identity = BLINDED,
    revision: int = 1_700_000_000_000,
    *,
    blob: bytes = BLOB,
    issued: float = NOW,
    lifetime: int = LIFETIME,
) -> bytes:
    return make_record(signer, HiddenDescriptorBody(blob), revision, issued, lifetime)[1]


def by_hand(signer: Identity, revision: int, issued: int, expires: int, body: bytes) -> bytes:
    """A correctly signed envelope of kind 4 that the codec would refuse to build."""
    unsigned = struct.pack(
        ">4sBB32sQQQH", b"VX6R", 1, 4, signer.public, revision, issued, expires, len(body)
    )
    unsigned += body
    return unsigned + signer.sign(SIGNING_DOMAIN + unsigned)


def tally(counts: Counter[str]) -> Callable[..., None]:
    """A `Count` (net/ports.py) into `counts`."""

    def count(what: str, n: int = 1) -> None:
        counts[what] += n

    return count


# --- the record and its keys ----------------------------------------------------------


def test_a_descriptor_fills_one_record_exactly_and_is_laid_out_by_hand() -> None:
    raw = descriptor()
    assert DESCRIPTOR_BODY_SIZE == 896
    assert len(raw) == MAX_RECORD_SIZE == 1024
    assert raw == by_hand(BLINDED, 1_700_000_000_000, int(NOW), int(NOW) + LIFETIME, BLOB)
    record = decode_record(raw)
    assert (record.kind, record.signer, record.subject) == (4, BLINDED.public, "")
    assert record.parsed_body() == HiddenDescriptorBody(BLOB)


@pytest.mark.parametrize("size", [0, 1, 895, 897])
def test_only_bodies_of_exactly_896_bytes_decode(size: int) -> None:
    with pytest.raises(DecodeError, match="body of"):
        decode_body(Kind.HIDDEN_DESCRIPTOR, bytes(size))
    with pytest.raises(ValueError):
        encode_body(HiddenDescriptorBody(bytes(size)))


@given(st.binary(min_size=DESCRIPTOR_BODY_SIZE, max_size=DESCRIPTOR_BODY_SIZE))
def test_any_896_bytes_round_trip(blob: bytes) -> None:
    body = decode_body(Kind.HIDDEN_DESCRIPTOR, blob)
    assert body == HiddenDescriptorBody(blob) and encode_body(body) == blob


def test_replica_keys_are_the_spec_hash_and_both_fit_the_record() -> None:
    a = BLINDED.public
    spelled = [hashlib.sha256(b"vx6-hidden-key\x00" + a + bytes([r])).digest() for r in (0, 1)]
    assert [hidden_descriptor_key(a, 0), hidden_descriptor_key(a, 1)] == spelled
    assert hidden_descriptor_keys(a) == tuple(spelled)
    record = decode_record(descriptor())
    assert record_keys(record) == tuple(spelled)
    assert record_key(record) == spelled[0]
    with pytest.raises(ValueError):
        hidden_descriptor_key(a, 2)
    # Golden (computed apart with sha256sum), so a change of domain or layout shows.
    assert a.hex() == "88e47695444940bc3c6a2ac6ff52ea08fabebcd87c59d58ad4b930d607a760d1"
    assert spelled[0].hex() == "58c540b66f2a9269369282261aa13f3c5a7484fb280484078d90372253d1d957"
    assert spelled[1].hex() == "ad82aba69d0a51089b6456b202cd710a710e69fe13debf55f0fa8640cd134a96"


def test_signing_takes_any_signer_with_public_and_sign() -> None:
    class BlindedKey:  # what crypto/hidden.py hands out: the same two attributes
        def __init__(self, inner: Identity) -> None:
            self.public = inner.public
            self._inner = inner

        def sign(self, message: bytes) -> bytes:
            return self._inner.sign(message)

    _, raw = make_record(BlindedKey(BLINDED), HiddenDescriptorBody(BLOB), 7, NOW, LIFETIME)
    assert raw == descriptor(revision=7)


def test_the_codec_refuses_to_sign_a_descriptor_for_more_than_6_hours() -> None:
    descriptor(lifetime=MAX_DESCRIPTOR_LIFETIME)
    with pytest.raises(ValueError, match="lifetime"):
        descriptor(lifetime=MAX_DESCRIPTOR_LIFETIME + 1)


# --- a storer -------------------------------------------------------------------------

KEY0, KEY1 = hidden_descriptor_keys(BLINDED.public)


def store() -> RecordStore:
    return RecordStore(max_records=100, max_slots_per_target=16)


def test_a_storer_keeps_a_valid_descriptor_under_either_replica_key() -> None:
    s, raw = store(), descriptor()
    assert s.offer(raw, KEY0, NOW).outcome is Outcome.NEW
    assert s.offer(raw, KEY1, NOW).outcome is Outcome.NEW
    assert s.live(KEY0, NOW) == [raw] == s.live(KEY1, NOW)
    assert s.offer(raw, KEY0, NOW + 1).outcome is Outcome.SAME
    assert len(s) == 2


def _tampered() -> bytes:
    raw = bytearray(descriptor())
    raw[500] ^= 1  # inside the body: still 896 opaque bytes, the signature breaks
    return bytes(raw)


REFUSALS: list[tuple[str, Callable[[], bytes], bytes, str]] = [
    ("another key", descriptor, service_key(BLINDED.public, "ssh"), "wrong-key"),
    ("another signer's key", lambda: descriptor(OTHER), KEY0, "wrong-key"),
    ("tampered", _tampered, KEY0, "bad-signature"),
    (
        "895-byte body",
        lambda: by_hand(BLINDED, 1, int(NOW), int(NOW) + LIFETIME, bytes(895)),
        KEY0,
        "malformed",
    ),
    (
        "897-byte body",
        lambda: by_hand(BLINDED, 1, int(NOW), int(NOW) + LIFETIME, bytes(897)),
        KEY0,
        "too-large",
    ),
    (
        "lifetime over 6 h",
        lambda: by_hand(BLINDED, 1, int(NOW), int(NOW) + MAX_DESCRIPTOR_LIFETIME + 1, BLOB),
        KEY1,
        "descriptor-lifetime",
    ),
    ("expired", lambda: descriptor(issued=NOW - LIFETIME - 1), KEY0, "expired"),
    ("not yet valid", lambda: descriptor(issued=NOW + 3600), KEY0, "not-yet-valid"),
]


@pytest.mark.parametrize(
    ("raw_of", "target", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_a_storer_refuses_a_descriptor_that_breaks_a_rule(
    raw_of: Callable[[], bytes], target: bytes, reason: str
) -> None:
    s = store()
    checked = s.offer(raw_of(), target, NOW)
    assert (checked.outcome, checked.reason) == (Outcome.REFUSED, reason)
    assert len(s) == 0


def test_a_descriptor_for_exactly_6_hours_is_stored() -> None:
    raw = by_hand(BLINDED, 1, int(NOW), int(NOW) + MAX_DESCRIPTOR_LIFETIME, BLOB)
    assert store().offer(raw, KEY0, NOW).outcome is Outcome.NEW


def test_older_revisions_are_stale_and_equal_revisions_with_other_bytes_conflict() -> None:
    s = store()
    assert s.offer(descriptor(revision=5), KEY0, NOW).outcome is Outcome.NEW
    older = s.offer(descriptor(revision=4), KEY0, NOW)
    assert (older.outcome, older.reason) == (Outcome.STALE, "stale-sequence")
    other_bytes = descriptor(revision=5, blob=bytes(DESCRIPTOR_BODY_SIZE))
    conflict = s.offer(other_bytes, KEY0, NOW)
    assert (conflict.outcome, conflict.reason) == (Outcome.CONFLICT, "same-seq-conflict")
    newer = descriptor(revision=6, blob=bytes(DESCRIPTOR_BODY_SIZE))
    assert s.offer(newer, KEY0, NOW).outcome is Outcome.NEW
    assert s.live(KEY0, NOW) == [newer]  # one slot per blinded key: the newest replaces


def test_a_storer_drops_a_descriptor_when_it_expires() -> None:
    s = store()
    s.offer(descriptor(), KEY0, NOW)
    assert s.expire(NOW + LIFETIME - 1) == 0
    assert s.expire(NOW + LIFETIME) == 1 and s.live(KEY0, NOW + LIFETIME) == []


# --- datagrams ------------------------------------------------------------------------

ME = identity(1)


def test_store_and_values_with_one_descriptor_fit_a_datagram() -> None:
    raw = descriptor()
    store_msg = w.Store(1, ME.public, KEY0, bytes(range(1, 17)), raw)
    values_msg = w.Values(2, ME.public, bytes(range(1, 17)), (raw,))
    for message in (store_msg, values_msg):
        data = w.encode_message(message, ME.sign)
        assert len(data) <= w.MAX_DATAGRAM
        assert w.decode_message(data).message == message
    assert len(w.encode_message(values_msg, ME.sign)) == 106 + 16 + 1 + 2 + 1024
    with pytest.raises(ValueError, match="exceeds"):
        w.encode_message(w.Values(3, ME.public, bytes(16), (raw, raw)), ME.sign)


def test_a_holder_of_two_descriptors_answers_with_as_many_as_fit() -> None:
    """Under one key only A' fits (one slot), but a holder must never fail to answer:
    two 1024-byte records go out one per VALUES, not as a datagram too large to send."""
    server = DhtNode(credentials_for(identity(2)), entropy=random.Random(2).randbytes, now=NOW)
    first, second = descriptor(revision=1), descriptor(OTHER, revision=1)
    held = decode_record(first), decode_record(second)
    server.store.put(first, KEY0, held[0], (Kind.HIDDEN_DESCRIPTOR, BLINDED.public, ""), NOW)
    server.store.put(second, KEY0, held[1], (Kind.HIDDEN_DESCRIPTOR, OTHER.public, ""), NOW)
    source = ("2001:db8::5", 4242)
    # Prove the source address: echo the token of a first answer.
    server.datagram_received(w.encode_message(w.FindNode(1, ME.public, KEY0), ME.sign), source, NOW)
    ((_, answer),) = server.datagrams_to_send()
    token = w.decode_message(answer).message.token  # type: ignore[union-attr]
    ask = w.FindValue(2, ME.public, KEY0, token)
    server.datagram_received(w.encode_message(ask, ME.sign), source, NOW)
    ((_, answer),) = server.datagrams_to_send()
    assert len(answer) <= w.MAX_DATAGRAM
    values = w.decode_message(answer).message
    assert isinstance(values, w.Values) and len(values.records) == 1
    assert values.records[0] in (first, second)


# --- an in-process DHT ----------------------------------------------------------------


class SimDht:
    """`DescriptorDht` over a simulated network: each call runs the network until the
    node's work is done (simulated seconds, no real time)."""

    def __init__(self, net: SimNetwork, nodes: list[DhtNode], index: int) -> None:
        self.net, self.nodes, self.index = net, nodes, index
        self.events: list[ev.Event] = []

    def _do(self, action: Callable[[DhtNode, float], object]) -> object:
        out: list[object] = []
        self.net.touch(
            self.index, lambda node, now: out.append(action(self.nodes[self.index], now))
        )
        self.net.run(until=self.net.now + 15)
        return out[0]

    async def store(self, raw: bytes) -> int:
        ids = self._do(lambda node, now: node.publish_under_each_key(raw, now))
        assert isinstance(ids, tuple)
        done = [e for e in self.events if isinstance(e, ev.PublishFinished) and e.lookup_id in ids]
        assert len(done) == len(ids) == 2
        return sum(e.stored for e in done)

    async def lookup(self, target: bytes) -> ev.RecordFound | ev.LookupFinished:
        lookup_id = self._do(lambda node, now: node.find_value(target, now))
        for e in self.events:
            if isinstance(e, ev.RecordFound | ev.LookupFinished) and e.lookup_id == lookup_id:
                return e
        raise TimeoutError


def sim_network(count: int) -> tuple[SimNetwork, list[DhtNode], list[SimDht]]:
    rng = random.Random(11)
    net = SimNetwork(rng, NOW)
    nodes = [
        DhtNode(credentials_for(identity(500 + i)), entropy=rng.randbytes, now=NOW)
        for i in range(count)
    ]
    ports = [SimDht(net, nodes, i) for i in range(count)]
    net.sink = lambda index, event: ports[index].events.append(event)
    for i, node in enumerate(nodes):
        net.add(node, (f"2001:db8:{i + 1:x}::1", 4242))
    for i in range(1, count):
        via = net.addresses[rng.randrange(i)]
        net.call_at(
            NOW + i * 0.05,
            lambda i=i, via=via: net.touch(i, lambda node, now: node.bootstrap([via], now)),
        )
    net.run(until=NOW + count * 0.05 + 10)
    return net, nodes, ports


def test_one_node_publishes_under_both_replicas_and_another_fetches_it_back() -> None:
    net, nodes, ports = sim_network(40)
    counts: Counter[str] = Counter()
    clock = FakeClock()
    publisher = DescriptorDirectory(ports[3], clock=clock, count=tally(counts))
    fetcher = DescriptorDirectory(ports[31], clock=clock, count=tally(counts))
    raw = descriptor()
    stored = asyncio.run(publisher.publish(raw))
    assert stored >= 2 * (CFG.k - 2)
    for key in (KEY0, KEY1):
        holders = [n for n in nodes if n.store.live(key, net.now)]
        assert len(holders) >= CFG.k - 2
    found = asyncio.run(fetcher.fetch(BLINDED.public))
    assert [r.seq for r in found] == [decode_record(raw).seq]
    # One replica set gone: the other still answers.
    for node in nodes:
        node.store._by_target.pop(KEY0, None)  # replica 0's holders all lost it
    assert [r.signer for r in asyncio.run(fetcher.fetch(BLINDED.public))] == [BLINDED.public]
    assert asyncio.run(fetcher.fetch(OTHER.public)) == []
    assert counts["hidden_descriptor_fetches_empty"] == 1


# --- the directory's own checks --------------------------------------------------------


class CannedDht:
    def __init__(self, answers: dict[bytes, tuple[bytes, ...] | None]) -> None:
        self.answers = answers
        self.asked: list[bytes] = []

    async def store(self, raw: bytes) -> int:
        return 0

    async def lookup(self, target: bytes) -> ev.RecordFound | ev.LookupFinished:
        self.asked.append(target)
        records = self.answers.get(target)
        if records is None:
            raise TimeoutError
        return ev.LookupFinished(1, target, bool(records), records, (), 1, 1)


def test_fetch_keeps_valid_descriptors_by_that_key_newest_first_each_once() -> None:
    newest, older = descriptor(revision=9), descriptor(revision=8)
    dht = CannedDht(
        {
            KEY0: (older, descriptor(OTHER), node_record(BLINDED, 1), _tampered()),
            KEY1: (newest, older, descriptor(revision=3, issued=NOW - LIFETIME - 5)),
        }
    )
    counts: Counter[str] = Counter()
    directory = DescriptorDirectory(dht, clock=FakeClock(), count=tally(counts))
    found = asyncio.run(directory.fetch(BLINDED.public))
    assert [r.seq for r in found] == [9, 8]
    assert sorted(dht.asked) == sorted([KEY0, KEY1])
    assert counts["hidden_descriptors_refused_wrong-signer"] == 1
    assert counts["hidden_descriptors_refused_bad-signature"] == 1
    assert counts["hidden_descriptors_refused_expired"] == 1
    assert counts["hidden_descriptors_refused_size"] == 1  # the node record


def test_fetch_survives_one_replica_timing_out() -> None:
    dht = CannedDht({KEY0: None, KEY1: (descriptor(),)})
    counts: Counter[str] = Counter()
    directory = DescriptorDirectory(dht, clock=FakeClock(), count=tally(counts))
    assert len(asyncio.run(directory.fetch(BLINDED.public))) == 1
    assert counts["hidden_descriptor_lookups_timed_out"] == 1


# --- peer sync leaves descriptors alone -----------------------------------------------


class _Core:
    initiator = False


class FakeLink:
    def __init__(self, peer: Identity, port: int) -> None:
        self.peer_identity = peer.public
        self.peer_address = ("2001:db8::9", port)
        self.core = _Core()
        self.paused = False
        self.is_open = True
        self.sent: list[bytes] = []

    def send_records(self, records: list[bytes]) -> bool:
        self.sent.extend(records)
        return True


def test_sync_neither_stores_nor_spreads_descriptors(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    counts: Counter[str] = Counter()
    hub = RecordHub(
        registry,
        None,  # type: ignore[arg-type]  # no lookups here
        trusted=lambda key: True,
        count=tally(counts),
        clock=FakeClock(),
    )
    a, b = FakeLink(identity(7), 1), FakeLink(identity(8), 2)
    for link in (a, b):
        hub.start_sync(link)  # type: ignore[arg-type]
    node = node_record(identity(9), 1)
    hub.received(a, (descriptor(), node))  # type: ignore[arg-type]
    assert b.sent == [node]  # pushed on: the node record, not the descriptor
    hub.on_dht_event(ev.LookupFinished(1, KEY0, True, (descriptor(revision=2),), (), 1, 1))
    hub.push([descriptor(revision=3)])
    hub.reconcile_once()
    assert descriptor() not in a.sent + b.sent
    assert all(decode_record(raw).kind != Kind.HIDDEN_DESCRIPTOR for raw in a.sent + b.sent)
    assert registry.records(kind=int(Kind.HIDDEN_DESCRIPTOR)) == []
    assert counts["records_not_synced_hidden_descriptor"] == 2
    fresh = FakeLink(identity(10), 3)
    hub.start_sync(fresh)  # type: ignore[arg-type]  # its full dump
    assert fresh.sent == [node]
    registry.close()


# --- the real DHT service over loopback -----------------------------------------------


def test_the_dht_service_stores_under_both_replicas_and_counts_the_acks() -> None:
    from vx6.net.dht import DhtService

    async def until(predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                await asyncio.sleep(0.01)  # polling a condition, with a bound

    async def main() -> None:
        services = [DhtService(identity(900 + i), on_event=lambda event: None) for i in range(4)]
        try:
            addresses = [await s.start("127.0.0.1", 0) for s in services]
            for s in services[1:]:
                s.bootstrap([addresses[0]])
            await until(lambda: all(len(s.node.table) >= 3 for s in services))
            counts: Counter[str] = Counter()
            clock = FakeClock(epoch=NOW)  # the descriptor's time window, not the DHT's
            publisher = DescriptorDirectory(services[1], clock=clock, count=tally(counts))
            raw = descriptor(issued=services[1]._now())
            stored = await publisher.publish(raw)
            assert stored == 2 * 3  # both replica keys on each of the three others
            for s in services:
                now = s._now()
                assert s.node.store.live(KEY0, now) == [raw] == s.node.store.live(KEY1, now)
            fetcher = DescriptorDirectory(
                services[3], clock=FakeClock(epoch=services[3]._now()), count=tally(counts)
            )
            assert [r.seq for r in await fetcher.fetch(BLINDED.public)] == [decode_record(raw).seq]
            # Our own node refusing the record (a stale revision) stores nothing.
            assert await services[1].store(descriptor(revision=1, issued=services[1]._now())) == 0
        finally:
            for s in services:
                s.close()

    asyncio.run(main())


def test_a_descriptor_due_for_republishing_does_not_republish_the_node_records() -> None:
    from types import SimpleNamespace

    from vx6.node.wiring import Node

    calls: list[str] = []
    node = SimpleNamespace(publisher=SimpleNamespace(publish_all=lambda: calls.append("all")))
    Node._dht_event(node, ev.RepublishDue(KEY0, descriptor()))  # type: ignore[arg-type]
    assert calls == []
    Node._dht_event(node, ev.RepublishDue(bytes(32), node_record(ME, 1)))  # type: ignore[arg-type]
    assert calls == ["all"]
