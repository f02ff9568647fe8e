"""A hostile DHT participant against real nodes on loopback: it stores a record under
the wrong key, replays an older record, forges a signature, tries a store without a
valid token, and floods malformed datagrams. Each is refused and counted, the node stays
up, and honest resolution through the DHT still works."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from vx6.app.localnet import LocalNet, LocalNode, wait_for
from vx6.core.dht.keys import name_key
from vx6.core.names import solve_name_pow
from vx6.core.records import make_record
from vx6.crypto.keys import Identity, node_id
from vx6.net.addresses import parse_endpoint
from vx6.wire import dht as wire
from vx6.wire.records import NameClaimBody

pytestmark = pytest.mark.timeout(120)


class HostilePeer:
    """Speaks the DHT protocol correctly enough to be answered, then misbehaves."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.identity = Identity(os.urandom(32))
        self.target = target
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.bind(("::1", 0))
        self.sock.settimeout(5)

    def close(self) -> None:
        self.sock.close()

    def ask(self, message: wire.Message) -> wire.Message:
        self.sock.sendto(wire.encode_message(message, self.identity.sign), self.target)
        while True:
            data, _ = self.sock.recvfrom(2048)
            answer = wire.decode_message(data).message
            if answer.txid == message.txid:
                return answer

    def token(self, target: bytes) -> bytes:
        answer = self.ask(wire.FindNode(_txid(), self.identity.public, target))
        assert isinstance(answer, wire.Nodes)
        return answer.token

    def store(self, target: bytes, record: bytes, token: bytes | None = None) -> wire.Stored:
        token = self.token(target) if token is None else token
        answer = self.ask(wire.Store(_txid(), self.identity.public, target, token, record))
        assert isinstance(answer, wire.Stored)
        return answer


def _txid() -> int:
    return int.from_bytes(os.urandom(8), "big")


@pytest.fixture(scope="module")
def net() -> Iterator[tuple[LocalNode, LocalNode, LocalNode]]:
    with LocalNet() as local:
        hub = local.start("hub")
        alice = local.start("alice", extra=("--bootstrap", hub.listen))
        bob = local.start("bob", extra=("--bootstrap", hub.listen))
        wait_for(lambda: bob.try_call("resolve", address="alice.x").get("ok"), 20, "bob -> alice")
        yield hub, alice, bob


def dht_stats(node: LocalNode) -> dict[str, int]:
    return dict(node.call("status")["dht"]["stats"])


def claim(identity: Identity, name: str, seq: int) -> bytes:
    body = NameClaimBody(name, solve_name_pow(name, identity.public))
    return make_record(identity, body, seq, time.time(), 3600)[1]


def test_hostile_stores_are_refused_and_counted(net: tuple[LocalNode, ...]) -> None:
    hub, alice, bob = net
    peer = HostilePeer(parse_endpoint(hub.listen))
    try:
        mallory = Identity(os.urandom(32))
        good = claim(mallory, "mallory", seq=10)
        # A valid record parked under a key it does not belong to.
        answer = peer.store(node_id(mallory.public), good)
        assert answer.status != wire.StoreStatus.OK and "wrong-key" in answer.reason
        # The right key works, then an older version of it is refused.
        assert peer.store(name_key("mallory"), good).status == wire.StoreStatus.OK
        older = claim(mallory, "mallory", seq=9)
        answer = peer.store(name_key("mallory"), older)
        assert answer.status != wire.StoreStatus.OK and "stale" in answer.reason
        # A forged signature: flip one signature byte of a fresh version.
        newer = bytearray(claim(mallory, "mallory", seq=11))
        newer[-1] ^= 1
        answer = peer.store(name_key("mallory"), bytes(newer))
        assert answer.status != wire.StoreStatus.OK and "signature" in answer.reason
        # A token made up rather than earned.
        answer = peer.store(name_key("mallory"), claim(mallory, "mallory", 12), bytes(16))
        assert answer.status != wire.StoreStatus.OK and "token" in answer.reason
    finally:
        peer.close()
    stats = dht_stats(hub)
    assert sum(v for k, v in stats.items() if "wrong-key" in k) >= 1, stats
    # The honest name still resolves for everyone, through the DHT.
    assert bob.call("resolve", address="alice.x")["key"] == alice.key


def test_malformed_flood_is_dropped_and_the_node_keeps_serving(net: tuple[LocalNode, ...]) -> None:
    hub, alice, bob = net
    target = parse_endpoint(hub.listen)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        for i in range(3000):  # bounded: 3000 datagrams, then stop
            size = (i * 37) % 1400 + 1
            sock.sendto(os.urandom(size), target)
    wait_for(
        lambda: (
            sum(dht_stats(hub).get(k, 0) for k in ("malformed", "rate-limited", "refused-datagram"))
            >= 100
        ),
        10,
        "the hub to count the junk",
    )
    assert hub.process.poll() is None
    # Logged, once per interval rather than once per datagram (the first drop after the
    # node started already falls into a reporting interval).
    wait_for(lambda: "DHT dropped datagrams" in hub.log_text(), 15, "the drop summary")
    assert hub.log_text().count("DHT dropped datagrams") < 10
    # Honest work through the flooded hub still goes on: a fresh DHT lookup answers.
    reply = bob.call("resolve", address=f"{hub.key}.x")
    assert reply["key"] == hub.key
    assert bob.call("resolve", address="alice.x")["key"] == alice.key


def test_a_real_node_answers_an_unproved_source_with_at_most_its_request_size(
    net: tuple[LocalNode, ...],
) -> None:
    """Finding 12 against a real node: a new source's FIND_NODE (138 bytes) gets the
    token and no contacts, never the 900+ byte answer; echoing the token gets it all."""
    hub = net[0]
    peer = HostilePeer(parse_endpoint(hub.listen))
    try:
        find = wire.FindNode(_txid(), peer.identity.public, os.urandom(32))
        request = wire.encode_message(find, peer.identity.sign)
        peer.sock.sendto(request, peer.target)
        answer, _ = peer.sock.recvfrom(2048)
        assert len(answer) <= len(request) == 138
        first = wire.decode_message(answer).message
        assert isinstance(first, wire.Nodes) and first.contacts == ()
        again = wire.FindNode(_txid(), peer.identity.public, find.target, first.token)
        full = peer.ask(again)
        assert isinstance(full, wire.Nodes) and len(full.contacts) >= 2  # alice and bob
    finally:
        peer.close()
    assert dht_stats(hub).get("unproved-answer-cut", 0) >= 1
