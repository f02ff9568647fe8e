"""DHT anti-amplification (core/dht/endpoint.py): to a source that has not proved its
address, no answer is larger than the request it answers; after the token round trip
(or once the source answered a request of ours) the full answer comes back; a spoofed
source is never admitted to the routing table; lookups still converge."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.dht import NOW, contact, identity, node_record, seeded
from vx6.core.dht import DhtNode, credentials_for
from vx6.core.dht import events as ev
from vx6.crypto.keys import node_id
from vx6.net.ports import SYSTEM_CLOCK
from vx6.net.ratelog import RATELOG
from vx6.node.records import RecordHub
from vx6.sim import SimParams, run_simulation
from vx6.wire import dht as w

VICTIM = ("2001:db8:99::7", 5000)  # the address a spoofer claims


class Server:
    """A node with a full table, and a hand-driven requester that crafts datagrams."""

    def __init__(self, contacts: int = 40) -> None:
        self.node = DhtNode(credentials_for(identity(1)), entropy=seeded(1), now=NOW)
        for i in range(contacts):
            self.node.table.seen(contact(i), NOW)
        self.client = identity(2)
        self.txid = 0

    def ask(self, message: w.Message, source: tuple[str, int] = VICTIM) -> tuple[bytes, bytes]:
        """(request datagram, answer datagram or b"")."""
        request = w.encode_message(message, self.client.sign)
        self.node.datagram_received(request, source, NOW)
        out = self.node.datagrams_to_send()
        assert len(out) <= 1 and all(address == source for address, _ in out)
        return request, out[0][1] if out else b""

    def find(self, token: bytes = b"", padding: int = 0, value: bytes | None = None) -> w.Request:
        self.txid += 1
        if value is not None:
            return w.FindValue(self.txid, self.client.public, value, token, padding)
        return w.FindNode(self.txid, self.client.public, bytes(32), token, padding)


def _message(answer: bytes) -> w.Message:
    return w.decode_message(answer).message


def test_unproved_find_node_gets_no_more_bytes_than_it_sent() -> None:
    server = Server()
    table_before = len(server.node.table)
    request, answer = server.ask(server.find())
    assert len(request) == 138 and 0 < len(answer) <= len(request)
    nodes = _message(answer)
    assert isinstance(nodes, w.Nodes) and nodes.contacts == ()  # "retry with the token"
    assert len(server.node.table) == table_before  # the claimed address was not admitted
    assert server.node.table.get(node_id(server.client.public)) is None


def test_after_the_token_round_trip_the_full_answer_comes() -> None:
    server = Server()
    _, answer = server.ask(server.find())
    token = _message(answer)
    assert isinstance(token, w.Nodes)
    _, full = server.ask(server.find(token=token.token))
    nodes = _message(full)
    assert isinstance(nodes, w.Nodes) and len(nodes.contacts) == 20
    # Proved now: even a request without the token gets the full answer, for a while.
    _, again = server.ask(server.find())
    assert len(_message(again).contacts) == 20  # type: ignore[union-attr]


def test_only_a_proved_requester_enters_the_routing_table() -> None:
    server = Server(contacts=3)
    client_id = node_id(server.client.public)
    _, answer = server.ask(server.find())
    assert server.node.table.get(client_id) is None
    server.ask(server.find(token=_message(answer).token))  # type: ignore[union-attr]
    assert server.node.table.get(client_id) is not None


def test_a_wrong_token_proves_nothing() -> None:
    server = Server()
    request, answer = server.ask(server.find(token=b"\x01" * 16))
    assert len(answer) <= len(request) and _message(answer).contacts == ()  # type: ignore[union-attr]


def test_values_go_only_to_a_proved_source() -> None:
    server = Server()
    owner = identity(9)
    key = node_id(owner.public)
    assert server.node.store.offer(node_record(owner, 1), key, NOW).acceptable
    request, answer = server.ask(server.find(value=key))
    assert len(answer) <= len(request) and isinstance(_message(answer), w.Nodes)
    token = _message(answer).token  # type: ignore[union-attr]
    _, full = server.ask(server.find(token=token, value=key))
    assert isinstance(_message(full), w.Values)


@settings(max_examples=150, deadline=None)
@given(
    padding=st.integers(0, 1100),
    kind=st.sampled_from(["node", "value", "ping"]),
    bad_token=st.booleans(),
)
def test_any_unproved_request_gets_at_most_its_size(
    padding: int, kind: str, bad_token: bool
) -> None:
    server = Server()
    owner = identity(9)
    key = node_id(owner.public)
    server.node.store.offer(node_record(owner, 1), key, NOW)
    token = b"\x02" * 16 if bad_token else b""
    if kind == "ping":
        message: w.Message = w.Ping(1, server.client.public, padding)
    else:
        if not token and 0 < padding < 16:
            padding += 16  # no encoding for this padding without a token
        value = key if kind == "value" else None
        message = server.find(token, padding, value)
    try:
        request, answer = server.ask(message)
    except ValueError:
        return  # over the datagram size: nothing to send
    assert len(answer) <= len(request)
    if kind == "ping" and len(request) >= w.PONG_MAX:
        assert isinstance(_message(answer), w.Pong)  # a padded PING is answered
    if kind != "ping":
        nodes = _message(answer)
        assert isinstance(nodes, w.Nodes)
        fits = (len(request) - w.NODES_BASE) // w.contact_size(VICTIM[0])
        assert len(nodes.contacts) == min(20, max(0, fits))  # cut to fit, never more


def test_a_source_that_answered_us_is_proved() -> None:
    """Answering a request we sent to its address proves it: no retry needed."""
    a = DhtNode(credentials_for(identity(1)), entropy=seeded(1), now=NOW)
    b = DhtNode(credentials_for(identity(2)), entropy=seeded(2), now=NOW)
    for i in range(30):
        b.table.seen(contact(i), NOW)
    addr_a, addr_b = ("2001:db8:a::1", 1), ("2001:db8:b::1", 1)
    b.ping(addr_a, NOW)
    ((to, ping),) = b.datagrams_to_send()
    assert to == addr_a and len(ping) == w.PONG_MAX  # our PINGs are padded
    a.datagram_received(ping, addr_b, NOW)
    ((_, pong),) = a.datagrams_to_send()
    b.datagram_received(pong, addr_a, NOW)  # a is proved at b now
    lookup = w.FindNode(7, credentials_for(identity(1)).public, bytes(32))
    a_sign = identity(1).sign
    b.datagram_received(w.encode_message(lookup, a_sign), addr_a, NOW)
    ((_, answer),) = b.datagrams_to_send()
    assert len(w.decode_message(answer).message.contacts) == 20  # type: ignore[attr-defined]


def test_lookups_converge_with_the_round_trip() -> None:
    figures = run_simulation(SimParams(nodes=300, lookups=100, name_lookups=30, seed=21))
    assert figures["success_rate"] >= 0.99 and figures["name_success_rate"] >= 0.99
    assert isinstance(figures["token_retries"], int) and figures["token_retries"] > 0


class _CountingNode:
    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n


def test_a_flood_of_refused_stores_logs_a_few_lines_with_exact_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = _CountingNode()
    hub = RecordHub(
        None,  # type: ignore[arg-type]  # refused records never reach the registry
        None,  # type: ignore[arg-type]  # no lookups here
        trusted=lambda key: False,
        count=node.count,
        clock=SYSTEM_CLOCK,
    )
    before = RATELOG.count("dht-refused-record")
    caplog.set_level(logging.INFO, logger="vx6.records")
    for i in range(1000):
        hub.on_dht_event(ev.RecordRefused("bad-token", bytes(32), ("2001:db8::1", i + 1)))
    assert node.counters["dht_refused_bad-token"] == 1000
    assert RATELOG.count("dht-refused-record") - before == 1000
    assert len([r for r in caplog.records if r.name == "vx6.records"]) <= 3
