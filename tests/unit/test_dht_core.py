"""The sans-IO DHT core (core/dht): routing table, lookups, store rules, the node.

Nodes here use real Ed25519 credentials; the in-memory network is the simulator's
(virtual clock, random latency), so nothing sleeps and nothing touches a socket.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.dht import CFG, NOW, claim, contact, identity, node_record, seeded
from vx6.core.dht import DhtConfig, DhtNode, credentials_for, name_key, record_key
from vx6.core.dht import events as ev
from vx6.core.dht.contacts import Contact, common_prefix_bits, prefix_of
from vx6.core.dht.lookup import Lookup
from vx6.core.dht.routing import Added, RoutingTable
from vx6.core.dht.values import Outcome, check_value
from vx6.crypto.keys import Identity, node_id
from vx6.errors import RecordRejected
from vx6.sim.network import SimNetwork
from vx6.wire import dht as w
from vx6.wire.records import decode_record

# --- routing table ------------------------------------------------------------------


def test_full_bucket_pings_oldest_before_evicting() -> None:
    own = bytes(32)
    table = RoutingTable(own, DhtConfig(k=2), NOW)
    # Ids with the top bit set all land in bucket 0.
    a, b, c, d = (Contact(bytes([0x80 | i]) + bytes(31), (f"2001:db8:{i}::1", 1)) for i in range(4))
    assert table.seen(a, NOW)[0] is Added.ADDED
    assert table.seen(b, NOW)[0] is Added.ADDED
    assert table.seen(c, NOW) == (Added.PROBING, a)
    assert table.seen(d, NOW) == (Added.CACHED, None)  # one probe at a time
    table.seen(a, NOW + 1)  # the oldest answered: it stays, newcomers wait
    assert {x.node_id for x in table.contacts()} == {a.node_id, b.node_id}
    assert table.seen(c, NOW + 2) == (Added.PROBING, b)
    table.failed(b.node_id)  # the probe timed out: evicted, freshest replacement in
    assert {x.node_id for x in table.contacts()} == {a.node_id, c.node_id}


def test_failing_contact_yields_to_replacement_then_is_dropped() -> None:
    table = RoutingTable(bytes(32), DhtConfig(k=1, evict_after_failures=2), NOW)
    a = Contact(b"\x80" + bytes(31), ("2001:db8:1::1", 1))
    b = Contact(b"\x81" + bytes(31), ("2001:db8:2::1", 1))
    table.seen(a, NOW)
    table.seen(b, NOW)  # cached, probe of a starts
    table.seen(a, NOW)  # a answers the probe
    table.failed(a.node_id)
    assert a.node_id in table
    table.failed(a.node_id)
    assert a.node_id not in table and b.node_id in table
    lone = RoutingTable(bytes(32), DhtConfig(drop_after_failures=3), NOW)
    lone.seen(a, NOW)
    for _ in range(3):
        lone.failed(a.node_id)
    assert len(lone) == 0


def test_prefix_cap_per_bucket_with_exemptions() -> None:
    for hosts, kept in [
        (["2001:db8:7::1", "2001:db8:7::2", "2001:db8:7:1::3"], 2),  # one /48
        (["192.0.2.1", "192.0.2.2", "192.0.2.3"], 2),  # one /24
        (["fd76:7836::1", "fd76:7836::2", "fd76:7836::3"], 3),  # test prefix
        (["198.18.0.1", "198.19.0.2", "198.18.5.3"], 3),  # test prefix
        (["127.0.0.1", "127.0.0.2", "127.0.0.3"], 3),
        (["::ffff:192.0.2.1", "192.0.2.2", "192.0.2.3"], 2),  # mapped counts as IPv4
    ]:
        table = RoutingTable(bytes(32), CFG, NOW)
        for i, host in enumerate(hosts):
            table.seen(Contact(bytes([0x80 + i]) + bytes(31), (host, 1)), NOW)
        assert len(table) == kept, hosts


def test_contact_changing_address_keeps_its_place() -> None:
    table = RoutingTable(bytes(32), CFG, NOW)
    a = contact(1)
    table.seen(a, NOW)
    moved = Contact(a.node_id, ("2001:db8:99::1", 5))
    assert table.seen(moved, NOW + 1)[0] is Added.REFRESHED
    assert table.get(a.node_id) == moved


ops = st.lists(
    st.tuples(st.sampled_from(["seen", "failed"]), st.integers(0, 200), st.integers(0, 6)),
    max_size=300,
)


@settings(max_examples=60, deadline=None)
@given(ops, st.binary(min_size=32, max_size=32))
def test_routing_table_invariants(operations: list[tuple[str, int, int]], target: bytes) -> None:
    own = random.Random(-1).randbytes(32)
    cfg = DhtConfig(k=4, replacement_cache=3)
    table = RoutingTable(own, cfg, NOW)
    pool = [
        Contact(random.Random(i).randbytes(32), (f"2001:db8:{i % 7}::{i + 1:x}", 1))
        for i in range(201)
    ]
    pool.append(Contact(own, ("2001:db8::1", 1)))
    for op, i, _ in operations:
        if op == "seen":
            table.seen(pool[i], NOW)
        else:
            table.failed(pool[i].node_id)
    table.seen(pool[-1], NOW)
    own_int = int.from_bytes(own, "big")
    contacts = table.contacts()
    assert own not in {c.node_id for c in contacts}
    assert len({c.node_id for c in contacts}) == len(contacts)
    by_bucket: dict[int, list[Contact]] = {}
    for c in contacts:
        by_bucket.setdefault(common_prefix_bits(own_int, c.id_int), []).append(c)
    for index, members in by_bucket.items():
        assert len(members) <= cfg.k
        assert table.bucket_sizes()[index] == len(members)
        prefixes = [prefix_of(c.address[0]) for c in members]
        assert all(prefixes.count(p) <= cfg.prefix_cap_bucket for p in prefixes)
    t = int.from_bytes(target, "big")
    everyone = sorted(contacts, key=lambda c: c.id_int ^ t)
    assert table.closest(target, 10) == everyone[:10]
    capped = table.closest(target, 10, cap=1)
    assert [c.id_int ^ t for c in capped] == sorted(c.id_int ^ t for c in capped)
    assert len({prefix_of(c.address[0]) for c in capped}) == len(capped)


def test_random_id_in_bucket_lands_in_that_bucket() -> None:
    own = random.Random(5).randbytes(32)
    table = RoutingTable(own, CFG, NOW)
    for index in (0, 1, 7, 100, 255):
        made = table.random_id_in_bucket(index, random.Random(index).randbytes(32))
        assert table.bucket_index(int.from_bytes(made, "big")) == index


# --- one lookup, without a network --------------------------------------------------


def test_lookup_window_caps_prefixes_and_discredits_liars() -> None:
    target = bytes(32)
    near = [
        Contact(bytes([0, 0, i]) + bytes(29), ("2001:db8:1::%x" % (i + 1), 1)) for i in range(5)
    ]
    far = [Contact(bytes([0x40 + i]) + bytes(31), (f"2001:db8:{i + 2:x}::1", 1)) for i in range(5)]
    lookup = Lookup(
        1, target, near + far, k=4, alpha=3, cap=1, want_value=False, held={}, own_id=b"\xff" * 32
    )
    window = lookup.window()
    assert [c.contact for c in window] == [near[0], far[0], far[1], far[2]]
    asked = lookup.next_requests()
    assert asked == [near[0], far[0], far[1]]
    # far[0] answers with fakes; three of them fail, and the rest are no longer asked.
    fakes = [Contact(bytes([0, 1, i]) + bytes(29), (f"2c00:{i:x}::1", 1)) for i in range(6)]
    lookup.answered_nodes(far[0].node_id, fakes, bytes(16))
    for _ in range(3):
        for c in lookup.next_requests():
            if c in fakes:
                lookup.failed(c.node_id)
    assert not any(c.contact in fakes and c.state.value == "new" for c in lookup.window())


# --- an in-memory network of real nodes -------------------------------------------


class Net:
    def __init__(self, count: int, seed: int = 7, config: DhtConfig = CFG) -> None:
        self.rng = random.Random(seed)
        self.net = SimNetwork(self.rng, NOW)
        self.events: list[tuple[int, ev.Event]] = []
        self.net.sink = lambda index, event: self.events.append((index, event))
        self.identities = [identity(1000 + i) for i in range(count)]
        self.nodes = [
            DhtNode(credentials_for(ident), entropy=self.rng.randbytes, now=NOW, config=config)
            for ident in self.identities
        ]
        for i, node in enumerate(self.nodes):
            self.net.add(node, (f"2001:db8:{i + 1:x}::1", 4242))
        for i in range(1, count):
            via = self.net.addresses[self.rng.randrange(i)]
            self.net.call_at(NOW + i * 0.05, self._joiner(i, via))
        self.net.run(until=NOW + count * 0.05 + 10)

    def _joiner(self, i: int, via: tuple[str, int]) -> Callable[[], None]:
        return lambda: self.net.touch(i, lambda node, now: self.nodes[i].bootstrap([via], now))

    def run(self, seconds: float) -> None:
        self.net.run(until=self.net.now + seconds)

    def do(self, i: int, action: Callable[[DhtNode, float], object]) -> object:
        out: list[object] = []
        self.net.touch(i, lambda node, now: out.append(action(self.nodes[i], now)))
        return out[0]

    def of(self, kind: type, index: int | None = None) -> list[ev.Event]:
        return [e for i, e in self.events if isinstance(e, kind) and index in (None, i)]


@pytest.fixture(scope="module")
def net200() -> Net:
    net = Net(200)
    for i in (3, 50, 120):
        net.do(i, lambda node, now, i=i: node.publish(node_record(net.identities[i], 1), now))
    net.run(10)
    return net


def test_network_joins_and_every_datagram_fits(net200: Net) -> None:
    assert min(len(n.table) for n in net200.nodes) >= 10
    assert 0 < net200.net.largest <= w.MAX_DATAGRAM
    finished = net200.of(ev.PublishFinished)
    assert len(finished) == 3
    assert all(isinstance(e, ev.PublishFinished) and e.stored >= CFG.k - 2 for e in finished)
    assert sum(n.stats["bad-signature"] + n.stats["wrong-id"] for n in net200.nodes) == 0


def test_value_lookup_over_200_nodes(net200: Net) -> None:
    for source, owner in [(7, 3), (199, 50), (42, 120)]:
        target = node_id(net200.identities[owner].public)
        lookup_id = net200.do(source, lambda node, now, t=target: node.find_value(t, now))
        net200.run(10)
        found = [e for e in net200.of(ev.RecordFound, source) if e.lookup_id == lookup_id]
        done = [e for e in net200.of(ev.LookupFinished, source) if e.lookup_id == lookup_id]
        assert len(found) == 1 and len(done) == 1
        assert found[0].records == (node_record(net200.identities[owner], 1),)
        assert found[0].rounds <= 4


def test_node_lookup_finds_the_node_itself(net200: Net) -> None:
    target = net200.nodes[150].node_id
    lookup_id = net200.do(9, lambda node, now: node.find_node(target, now))
    net200.run(10)
    done = [e for e in net200.of(ev.LookupFinished, 9) if e.lookup_id == lookup_id]
    assert done and done[0].closest[0].node_id == target
    distances = [
        int.from_bytes(c.node_id, "big") ^ int.from_bytes(target, "big") for c in done[0].closest
    ]
    assert distances == sorted(distances)


def test_stale_holder_is_corrected_after_the_lookup(net200: Net) -> None:
    owner_index = 120
    owner = net200.identities[owner_index]
    key = node_id(owner.public)
    newer = node_record(owner, 2, port=5000)
    # The node closest to the key (the owner itself) is left holding sequence 1; every
    # other holder already has sequence 2.
    stale = net200.nodes[owner_index]
    holders = [n for n in net200.nodes if n is not stale and n.store.live(key, net200.net.now)]
    assert len(holders) >= CFG.k - 2
    for n in holders:
        n.store.offer(newer, key, net200.net.now)
    seeker = next(i for i, n in enumerate(net200.nodes) if n not in holders and n is not stale)
    lookup_id = net200.do(seeker, lambda node, now: node.find_value(key, now))
    net200.run(10)
    done = [e for e in net200.of(ev.LookupFinished, seeker) if e.lookup_id == lookup_id]
    assert done and done[0].records == (newer,)
    assert stale.store.live(key, net200.net.now) == [newer]


# --- STORE rules, message by message ----------------------------------------------


class Pair:
    """A server node and a hand-driven client identity that crafts signed messages."""

    def __init__(self) -> None:
        self.server = DhtNode(credentials_for(identity(1)), entropy=seeded(1), now=NOW)
        self.client = identity(2)
        self.address = ("2001:db8:2::1", 4000)
        self.txid = 0

    def send(
        self, build: Callable[[int, bytes], w.Message], address: tuple[str, int] | None = None
    ) -> w.Message | None:
        self.txid += 1
        data = w.encode_message(build(self.txid, self.client.public), self.client.sign)
        self.server.datagram_received(data, address or self.address, NOW)
        out = self.server.datagrams_to_send()
        if not out:
            return None
        assert len(out) == 1 and out[0][0] == (address or self.address)
        return w.decode_message(out[0][1]).message

    def token(self, address: tuple[str, int] | None = None) -> bytes:
        answer = self.send(lambda t, k: w.FindNode(t, k, bytes(32)), address)
        assert isinstance(answer, w.Nodes)
        return answer.token

    def prove(self, address: tuple[str, int] | None = None) -> w.Message | None:
        """The token round trip: a FIND_NODE that echoes the token proves our address."""
        token = self.token(address)
        return self.send(lambda t, k: w.FindNode(t, k, bytes(32), token), address)

    def store(self, target: bytes, record: bytes, token: bytes | None = None) -> w.Stored:
        tok = self.token() if token is None else token
        answer = self.send(lambda t, k: w.Store(t, k, target, tok, record))
        assert isinstance(answer, w.Stored)
        return answer


def test_store_needs_a_token_for_the_source_address() -> None:
    pair = Pair()
    owner = identity(9)
    raw = node_record(owner, 1)
    key = node_id(owner.public)
    assert pair.store(key, raw, token=bytes(16)).status is w.StoreStatus.BAD_TOKEN
    spoofed = pair.token(("2001:db8:66::1", 4000))  # a token issued to another address
    assert pair.store(key, raw, token=spoofed).status is w.StoreStatus.BAD_TOKEN
    assert pair.server.store.live(key, NOW) == []
    assert any(
        isinstance(e, ev.RecordRefused) and e.reason == "bad-token" for e in pair.server.events()
    )
    assert pair.store(key, raw).status is w.StoreStatus.OK
    assert pair.server.store.live(key, NOW) == [raw]
    stored = [e for e in pair.server.events() if isinstance(e, ev.ValueStored)]
    assert stored == [ev.ValueStored(key, owner.public, 1, pair.address)]


def test_token_survives_one_rotation_only() -> None:
    pair = Pair()
    token = pair.token()
    owner = identity(9)
    for step in (1, 2):
        pair.server.handle_timer(NOW + step * CFG.token_rotation + 1)
    answer = pair.store(node_id(owner.public), node_record(owner, 1), token=token)
    assert answer.status is w.StoreStatus.BAD_TOKEN


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong-key", "wrong-key"),
        ("older", "stale-sequence"),
        ("expired", "expired"),
        ("bad-signature", "bad-signature"),
        ("garbage", "malformed"),
    ],
)
def test_store_refuses_records_that_break_a_rule(case: str, reason: str) -> None:
    pair = Pair()
    owner = identity(9)
    key = node_id(owner.public)
    assert pair.store(key, node_record(owner, 5)).status is w.StoreStatus.OK
    pair.server.events()
    target, raw = key, node_record(owner, 6)
    if case == "wrong-key":
        target = name_key("alice")
    elif case == "older":
        raw = node_record(owner, 4)
    elif case == "expired":
        raw = node_record(owner, 6, now=NOW - 2 * 86400)
    elif case == "bad-signature":
        raw = raw[:-1] + bytes([raw[-1] ^ 1])
    elif case == "garbage":
        raw = b"VX6R" + bytes(100)
    answer = pair.store(target, raw)
    assert answer.status is w.StoreStatus.REFUSED
    assert answer.reason == reason
    refused = [e for e in pair.server.events() if isinstance(e, ev.RecordRefused)]
    assert [e.reason for e in refused] == [reason]
    assert pair.server.store.live(key, NOW) == [node_record(owner, 5)]
    assert pair.server.stats[f"refused:{reason}"] == 1


def test_value_rules_order_size_first_then_key_then_signature() -> None:
    owner = identity(9)
    key = node_id(owner.public)
    big = bytes(1025)
    assert check_value(big, key, NOW, {}).reason == "too-large"
    forged = node_record(owner, 1)
    forged = forged[:-1] + bytes([forged[-1] ^ 1])
    # Under the wrong key a forged record is refused for the key, before any signature work.
    assert check_value(forged, name_key("x"), NOW, {}).reason == "wrong-key"
    assert check_value(forged, key, NOW, {}).reason == "bad-signature"
    assert check_value(claim(owner, 1), name_key("alice"), NOW, {}).outcome is Outcome.NEW


def test_same_sequence_different_record_is_refused_and_reported() -> None:
    pair = Pair()
    owner = identity(9)
    key = node_id(owner.public)
    first, second = node_record(owner, 7, port=1), node_record(owner, 7, port=2)
    assert pair.store(key, first).status is w.StoreStatus.OK
    assert pair.store(key, first).status is w.StoreStatus.OK  # a republish is fine
    pair.server.events()
    answer = pair.store(key, second)
    assert (answer.status, answer.reason) == (w.StoreStatus.REFUSED, "same-seq-conflict")
    reports = [e for e in pair.server.events() if isinstance(e, ev.EquivocationDetected)]
    assert reports == [ev.EquivocationDetected(owner.public, key, first, second, pair.address)]
    forged = second[:-1] + bytes([second[-1] ^ 1])
    assert pair.store(key, forged).reason == "bad-signature"  # no evidence, no report
    assert pair.server.store.live(key, NOW) == [first]


def test_every_claim_on_a_name_is_kept_per_signer() -> None:
    pair = Pair()
    honest, thief = identity(9), identity(10)
    key = name_key("alice")
    assert pair.store(key, claim(honest, 1)).status is w.StoreStatus.OK
    assert pair.store(key, claim(thief, 1)).status is w.StoreStatus.OK
    assert sorted(pair.server.store.live(key, NOW)) == sorted([claim(honest, 1), claim(thief, 1)])
    answer = pair.send(lambda t, k: w.FindValue(t, k, key))
    assert isinstance(answer, w.Values) and len(answer.records) == 2
    assert record_key(decode_record(claim(thief, 1))) == key


# --- the inbound pipeline ---------------------------------------------------------


def test_messages_must_be_signed_by_the_key_they_carry() -> None:
    pair = Pair()
    msg = w.Ping(1, pair.client.public)
    forged = w.encode_message(msg, identity(3).sign)
    pair.server.datagram_received(forged, pair.address, NOW)
    assert pair.server.datagrams_to_send() == []
    assert pair.server.stats["bad-signature"] == 1
    assert len(pair.server.table) == 0
    assert isinstance(pair.send(lambda t, k: w.Ping(t, k, w.PING_PADDING)), w.Pong)
    assert len(pair.server.table) == 0  # not before it proved its address
    pair.prove()
    assert pair.server.table.get(node_id(pair.client.public)) == Contact(
        node_id(pair.client.public), pair.address
    )


def test_answers_only_from_the_asked_address_and_id() -> None:
    node = DhtNode(credentials_for(identity(1)), entropy=seeded(2), now=NOW)
    peer, impostor = identity(2), identity(3)
    peer_id = node_id(peer.public)
    node.ping(("2001:db8:2::1", 1), NOW, expected_id=peer_id)
    ((address, data),) = node.datagrams_to_send()
    txid = w.decode_message(data).message.txid

    def pong_from(who: Identity) -> bytes:
        return w.encode_message(w.Pong(txid, who.public, "2001:db8:1::1", 1), who.sign)

    node.datagram_received(pong_from(peer), ("2001:db8:9::1", 1), NOW)  # wrong address
    assert node.stats["unsolicited"] == 1 and len(node.table) == 0
    node.datagram_received(pong_from(impostor), address, NOW)  # valid signature, wrong id
    assert node.stats["wrong-id"] == 1 and peer_id not in node.table
    node.ping(address, NOW, expected_id=peer_id)
    ((_, data),) = node.datagrams_to_send()
    txid = w.decode_message(data).message.txid
    node.datagram_received(pong_from(peer), address, NOW)
    assert node.table.get(peer_id) == Contact(peer_id, address)


def test_malformed_floods_are_counted_and_rate_limited() -> None:
    node = DhtNode(credentials_for(identity(1)), entropy=seeded(3), now=NOW)
    rng = random.Random(1)
    for i in range(200):
        node.datagram_received(
            rng.randbytes(rng.randrange(0, 1233)), ("192.0.2.9", 1), NOW + i * 0.001
        )
    node.datagram_received(bytes(5000), ("192.0.2.10", 1), NOW)
    node.datagram_received(b"x", ("not-an-address", 1), NOW)
    assert node.datagrams_to_send() == []
    assert node.stats["rate-limited"] >= 200 - CFG.rate_burst - 5
    assert node.stats["malformed"] + node.stats["rate-limited"] == 200
    assert node.stats["refused-datagram"] == 2


# --- owners, timers -----------------------------------------------------------------


def test_owner_republishes_and_is_told_before_expiry() -> None:
    owner = identity(1)
    node = DhtNode(credentials_for(owner), entropy=seeded(6), now=NOW)
    record = node_record(owner, 1)
    key = node_id(owner.public)
    node.publish(record, NOW)
    assert node.events()[-1] == ev.PublishFinished(1, key, 0, 0)  # nobody to store on yet
    assert node.store.live(key, NOW) == [record]  # but we answer for it ourselves
    at = NOW
    while at < NOW + CFG.republish_interval + CFG.housekeeping_interval:
        at = node.next_timer()
        node.handle_timer(at)
    republished = [e for e in node.events() if isinstance(e, ev.PublishFinished)]
    assert [e.target for e in republished] == [key]
    node.handle_timer(NOW + 86400 - CFG.republish_margin + 1)
    assert [e for e in node.events() if isinstance(e, ev.RepublishDue)] == [
        ev.RepublishDue(key, record)
    ]
    with pytest.raises(RecordRejected, match="stale-sequence"):
        node.publish(node_record(owner, 0), NOW)


def test_idle_buckets_are_refreshed() -> None:
    node = DhtNode(credentials_for(identity(1)), entropy=seeded(4), now=NOW)
    for i in range(5):
        node.table.seen(contact(i), NOW)
    node.handle_timer(NOW + CFG.refresh_interval + CFG.housekeeping_interval)
    sent = [w.decode_message(d).message for _, d in node.datagrams_to_send()]
    assert sent and all(isinstance(m, w.FindNode) for m in sent)
    assert len(sent) == CFG.alpha_background


def test_interactive_lookups_ask_more_in_parallel() -> None:
    node = DhtNode(credentials_for(identity(1)), entropy=seeded(5), now=NOW)
    for i in range(30):
        node.table.seen(contact(i), NOW)
    node.find_value(bytes(32), NOW)
    assert len(node.datagrams_to_send()) == CFG.alpha_interactive
    node.find_node(bytes(32), NOW)
    assert len(node.datagrams_to_send()) == CFG.alpha_background
    assert CFG.alpha_interactive > CFG.alpha_background
