"""The relay directory (core/dht/directory.py, node/relay_directory.py): a relay's node
record also lives under its directory key; holders keep an entry only when its relay
stores it from an address it lists, at most PER_PREFIX per network under one key; a
client takes a bounded, diverse few per lookup and looks at most once per DEMAND_GAP."""

from __future__ import annotations

import asyncio
import itertools

from kit.clock import FakeClock
from kit.dht import NOW, identity, node_record, seeded
from vx6.core.dht import DhtNode, credentials_for
from vx6.core.dht.directory import ACCEPT_PER_LOOKUP, PER_PREFIX, select_entries
from vx6.core.dht.keys import (
    RELAY_DIRECTORY_BUCKETS,
    RELAY_DIRECTORY_KEYS,
    record_keys,
    relay_bucket,
)
from vx6.core.records import make_record
from vx6.crypto.keys import Identity, node_id
from vx6.node import relay_directory
from vx6.node.relay_directory import RelayDirectory
from vx6.wire import dht as w
from vx6.wire.records import Capability, Endpoint, NodeBody, decode_record


def relay_record(owner: Identity, host: str, seq: int = 1, relay: bool = True) -> bytes:
    caps = int(Capability.RELAY) if relay else 0
    body = NodeBody(bytes(32), bytes(32), (Endpoint(host, 4242),), caps)
    return make_record(owner, body, seq, NOW, 86400)[1]


def directory_key(owner: Identity) -> bytes:
    return RELAY_DIRECTORY_KEYS[relay_bucket(owner.public)]


class Holder:
    """A DHT node that holds directory entries, and signed requests from any address."""

    def __init__(self) -> None:
        self.node = DhtNode(credentials_for(identity(1)), entropy=seeded(1), now=NOW)
        self.client = identity(2)
        self.txid = 0

    def send(self, message: w.Message, host: str) -> w.Message:
        data = w.encode_message(message, self.client.sign)
        self.node.datagram_received(data, (host, 4000), NOW)
        (out,) = self.node.datagrams_to_send()
        return w.decode_message(out[1]).message

    def store(self, target: bytes, raw: bytes, host: str) -> w.Stored:
        self.txid += 1
        nodes = self.send(w.FindNode(self.txid, self.client.public, bytes(32)), host)
        assert isinstance(nodes, w.Nodes)
        self.txid += 1
        answer = self.send(w.Store(self.txid, self.client.public, target, nodes.token, raw), host)
        assert isinstance(answer, w.Stored)
        return answer


def test_a_relay_record_has_a_directory_key_and_others_do_not() -> None:
    relay = identity(7)
    keys = record_keys(decode_record(relay_record(relay, "2001:db8:7::1")))
    assert keys == (node_id(relay.public), directory_key(relay))
    assert len(set(RELAY_DIRECTORY_KEYS)) == RELAY_DIRECTORY_BUCKETS
    plain = decode_record(relay_record(relay, "2001:db8:7::1", relay=False))
    assert record_keys(plain) == (node_id(relay.public),)
    assert record_keys(decode_record(node_record(relay, 1))) == (node_id(relay.public),)


def test_an_entry_is_stored_only_from_an_address_it_lists() -> None:
    holder = Holder()
    relay = identity(7)
    raw = relay_record(relay, "2001:db8:7::1")
    key = directory_key(relay)
    refused = holder.store(key, raw, "2001:db8:99::1")  # someone else storing it for it
    assert refused.status is w.StoreStatus.REFUSED and refused.reason == "not-from-listed-address"
    assert holder.node.store.live(key, NOW) == []
    assert holder.store(key, raw, "2001:db8:7::1").status is w.StoreStatus.OK
    assert holder.node.store.live(key, NOW) == [raw]
    other_key = RELAY_DIRECTORY_KEYS[(relay_bucket(relay.public) + 1) % RELAY_DIRECTORY_BUCKETS]
    wrong = holder.store(other_key, raw, "2001:db8:7::1")  # its bucket is fixed by its key
    assert wrong.status is w.StoreStatus.REFUSED and wrong.reason == "wrong-key"
    not_relay = relay_record(identity(8), "2001:db8:8::1", relay=False)
    wrong = holder.store(directory_key(identity(8)), not_relay, "2001:db8:8::1")
    assert wrong.status is w.StoreStatus.REFUSED and wrong.reason == "wrong-key"


def test_one_network_gets_few_entries_under_one_key_and_incumbents_stay() -> None:
    holder = Holder()
    # Relays whose keys share a bucket, all in one /48: sybils of one operator.
    bucket = relay_bucket(identity(100).public)
    same = [i for i in range(100, 400) if relay_bucket(identity(i).public) == bucket][:4]
    key = RELAY_DIRECTORY_KEYS[bucket]
    hosts = [f"2001:db8:7:{n}::1" for n in range(4)]
    statuses = [
        holder.store(key, relay_record(identity(i), h), h).reason
        for i, h in zip(same, hosts, strict=True)
    ]
    assert statuses == [""] * PER_PREFIX + ["prefix-full"] * (4 - PER_PREFIX)
    # A refresh of an entry held is still taken; another network still has room.
    first = identity(same[0])
    assert holder.store(key, relay_record(first, hosts[0], seq=2), hosts[0]).reason == ""
    assert (
        holder.store(key, relay_record(identity(same[3]), "2001:db8:8::1"), "2001:db8:8::1").reason
        == ""
    )
    assert len(holder.node.store.live(key, NOW)) == PER_PREFIX + 1


def test_loopback_relays_are_exempt_from_the_prefix_cap() -> None:
    holder = Holder()
    bucket = relay_bucket(identity(100).public)
    same = [i for i in range(100, 400) if relay_bucket(identity(i).public) == bucket][:4]
    key = RELAY_DIRECTORY_KEYS[bucket]
    for i in same:
        assert holder.store(key, relay_record(identity(i), "::1"), "::1").reason == ""
    assert len(holder.node.store.live(key, NOW)) == 4


def test_a_relay_publishes_under_both_keys() -> None:
    relay = identity(7)
    node = DhtNode(credentials_for(relay), entropy=seeded(2), now=NOW)
    raw = relay_record(relay, "2001:db8:7::1")
    node.publish(raw, NOW)
    assert node.store.live(node_id(relay.public), NOW) == [raw]
    assert node.store.live(directory_key(relay), NOW) == [raw]
    # It stops relaying: the new record leaves the directory out of its republishing.
    node.publish(relay_record(relay, "2001:db8:7::1", seq=2, relay=False), NOW)
    assert {key for key, _ in node._owned} == {node_id(relay.public)}


def test_a_client_takes_a_bounded_diverse_few_per_lookup() -> None:
    one_net = [relay_record(identity(i), f"2001:db8:7:{i}::1") for i in range(10, 20)]
    assert len(select_entries(one_net)) == PER_PREFIX
    many = [relay_record(identity(i), f"2001:db8:{i:x}::1") for i in range(10, 60)]
    assert len(select_entries(many)) == ACCEPT_PER_LOOKUP
    loopback = [relay_record(identity(i), "::1") for i in range(10, 20)]
    assert len(select_entries(loopback)) == 10
    assert select_entries([b"junk", *one_net[:1]]) == one_net[:1]


def test_lookups_are_bounded_whoever_asks() -> None:
    async def main() -> None:
        clock = FakeClock()
        asked: list[bytes] = []
        gate = asyncio.Event()

        async def lookup(target: bytes) -> bool:
            asked.append(target)
            await gate.wait()
            return False

        directory = RelayDirectory(lookup=lookup, known=lambda: 0, clock=clock)
        callers = [asyncio.create_task(directory.on_demand()) for _ in range(5)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*callers)
        assert sorted(asked) == sorted(RELAY_DIRECTORY_KEYS)  # one round for five callers
        await directory.on_demand()
        assert len(asked) == RELAY_DIRECTORY_BUCKETS  # a round just ended: not again
        clock.advance(relay_directory.DEMAND_GAP)
        await directory.on_demand()
        assert len(asked) == 2 * RELAY_DIRECTORY_BUCKETS

    asyncio.run(main())


def test_a_node_keeps_looking_while_rounds_find_new_relays() -> None:
    """Enough relays known after the first round is not enough to stop looking: holders
    answer with a random few, so the node looks again (delays doubling) until
    QUIET_ROUNDS rounds in a row found nobody new, then only every REFRESH_EVERY."""

    async def main() -> None:
        clock = FakeClock()
        found = iter([10, 13, 14, 14, 14, 14, 15])  # relays known after each round
        known = [0]
        rounds: list[float] = []

        async def lookup(target: bytes) -> bool:
            if target == RELAY_DIRECTORY_KEYS[0]:
                rounds.append(clock.monotonic())
                known[0] = next(found)
            return True

        directory = RelayDirectory(lookup=lookup, known=lambda: known[0], clock=clock)
        task = asyncio.create_task(directory.run())

        async def settle() -> None:
            for _ in range(20):
                await asyncio.sleep(0)

        await settle()
        for _ in range(30):  # 60 s: rounds at 0, 2, 6, 14 and 30 s, then none until later
            clock.advance(relay_directory.FEW_FIRST)
            await settle()
        start = rounds[0]
        first_gaps = [round(b - a, 3) for a, b in itertools.pairwise(rounds)]
        # 10 (new), 13 (new), 14 (new), 14 (quiet), 14 (quiet: now only now and then)
        assert first_gaps == [2.0, 4.0, 8.0, 16.0]
        assert len(rounds) == 5
        clock.advance(relay_directory.REFRESH_EVERY)
        await settle()
        assert len(rounds) == 6 and rounds[-1] - start >= relay_directory.REFRESH_EVERY
        task.cancel()

    asyncio.run(main())
