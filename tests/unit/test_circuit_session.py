"""Streams over a circuit (core/circuit/session.py) on the in-memory circuit net of
tests/kit/circuits.py: the client's and the exit's stream sessions exchange real cells
through three relays. Data both ways with credit flow control, half-close, hostile
stream messages (each ends only that circuit's session), end-to-end client
authentication bound to the circuit, and the relay-side id, extend and buffer rules."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.circuits import Net, seed
from vx6.core import events as ev
from vx6.core.circuit import ClientCircuit, RelayCore, RelayLimits
from vx6.core.circuit.events import CircuitDestroyed, StreamMessageReceived
from vx6.core.circuit.session import CIRCUIT_MAX_STREAMS, CIRCUIT_WINDOW, CircuitStreams
from vx6.crypto.keys import (
    Identity,
    StaticKey,
    check_circuit_auth_proof,
    circuit_auth_proof,
)
from vx6.crypto.onion import MAX_DEPTH, relay_plaintext_size
from vx6.errors import DestroyReason
from vx6.wire import cells as c
from vx6.wire.cells import RelayCommand, RelayMessage


class Pair:
    """A client session and an exit session joined by a 3-relay in-memory circuit."""

    def __init__(self, window: int = CIRCUIT_WINDOW) -> None:
        self.net = Net(3)
        self.circuit: ClientCircuit = self.net.build(["R1", "R2", "R3", "owner"])
        self.client = CircuitStreams(initiator=True, max_data=self.circuit.max_data, window=window)
        self.exit: CircuitStreams | None = None
        self.window = window
        self.exit_key: tuple[int, int] | None = None
        self.client_events: list[ev.Event] = []
        self.exit_events: list[ev.Event] = []
        self._seen_owner = 0
        self._seen_client = 0

    @property
    def owner(self) -> RelayCore:
        return self.net.nodes["owner"].core

    def pump(self) -> None:
        """Move messages both ways until nothing is left in flight."""
        while True:
            moved = False
            for m in self.client.messages():
                self.net.dispatch(
                    "client", self.circuit.send(RelayCommand(m.command), m.stream_id, m.data)
                )
                moved = True
            self.net.run()
            owner_msgs = self.net.exit_messages()[self._seen_owner :]
            self._seen_owner += len(owner_msgs)
            for m in owner_msgs:
                if self.exit is None:
                    self.exit_key = (m.link, m.circuit_id)
                    self.exit = CircuitStreams(
                        initiator=False,
                        max_data=self.owner.max_data(*self.exit_key),
                        window=self.window,
                    )
                self.exit.message_received(RelayMessage(m.command, m.stream_id, m.data))
                moved = True
            if self.exit is not None:
                assert self.exit_key is not None
                for m in self.exit.messages():
                    out = self.owner.send(
                        *self.exit_key, RelayCommand(m.command), m.stream_id, m.data
                    )
                    self.net.dispatch("owner", out)
                    moved = True
                self.exit_events += self.exit.events()
            self.net.run()
            back = [e for e in self.net.client_events if isinstance(e, StreamMessageReceived)]
            for m in back[self._seen_client :]:
                self.client.message_received(RelayMessage(m.command, m.stream_id, m.data))
                moved = True
            self._seen_client = len(back)
            self.client_events += self.client.events()
            if not moved:
                return


def _data(events: list[ev.Event], sid: int) -> bytes:
    return b"".join(
        bytes(e.data) for e in events if isinstance(e, ev.StreamDataReceived) and e.stream_id == sid
    )


def test_stream_both_ways_with_credit_and_half_close() -> None:
    p = Pair(window=64 * 1024)
    sid = p.client.open_stream("ssh")
    up = hashlib.sha256(b"up").digest() * 20000  # 640 000 bytes: ten windows
    assert p.client.send(sid, up[:1000])  # 0-RTT: data may follow OPEN at once
    p.pump()
    assert p.exit is not None
    opened = [e for e in p.exit_events if isinstance(e, ev.StreamOpenRequested)]
    assert [(e.stream_id, e.service) for e in opened] == [(sid, "ssh")]
    p.exit.accept_stream(sid)
    p.client.send(sid, up[1000:])
    p.client.finish(sid)
    down = hashlib.sha256(b"down").digest() * 10000
    p.exit.send(sid, down)
    p.exit.finish(sid)
    for _ in range(40):  # each round: deliver, let the application consume, return credit
        p.pump()
        for session, events in ((p.exit, p.exit_events), (p.client, p.client_events)):
            got = sum(len(e.data) for e in events if isinstance(e, ev.StreamDataReceived))
            session.consumed(sid, got - getattr(session, "_test_consumed", 0))
            session._test_consumed = got  # type: ignore[attr-defined]
    assert _data(p.exit_events, sid) == up
    assert _data(p.client_events, sid) == down
    assert any(isinstance(e, ev.StreamClosed) for e in p.client_events)
    assert any(isinstance(e, ev.StreamClosed) for e in p.exit_events)
    assert p.client.failed is None and p.exit.failed is None


def test_sender_stops_at_the_window_until_credit_returns() -> None:
    p = Pair(window=64 * 1024)
    sid = p.client.open_stream("ssh")
    assert not p.client.send(sid, bytes(200 * 1024))  # over the window: told to pause
    p.pump()
    assert p.exit is not None
    assert len(_data(p.exit_events, sid)) == 64 * 1024  # exactly one window arrived


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (RelayMessage(RelayCommand.DATA, 7, b"x"), "unknown stream"),
        (RelayMessage(RelayCommand.DATA, 0, b"x"), "stream 0"),
        (RelayMessage(RelayCommand.BEGIN, 2, b"\x00ssh"), "bad stream id"),  # wrong parity
        (RelayMessage(RelayCommand.BEGIN, 1, b"\x00"), "BEGIN"),
        (RelayMessage(RelayCommand.CREDIT, 1, b"\x00"), "CREDIT"),
        (RelayMessage(RelayCommand.EXTENDED, 1, b""), "relay command 2"),
    ],
)
def test_hostile_stream_messages_fail_the_session(message: RelayMessage, reason: str) -> None:
    exit_ = CircuitStreams(initiator=False, max_data=1000)
    exit_.message_received(message)
    assert exit_.failed is not None and reason in exit_.failed
    assert exit_.closed
    exit_.message_received(RelayMessage(RelayCommand.BEGIN, 1, b"\x00ssh"))
    assert exit_.events() == []  # nothing is accepted after failure


def test_data_beyond_credit_fails_the_session() -> None:
    exit_ = CircuitStreams(initiator=False, max_data=CIRCUIT_WINDOW, window=4096)
    exit_.message_received(RelayMessage(RelayCommand.BEGIN, 1, b"\x00ssh"))
    exit_.message_received(RelayMessage(RelayCommand.DATA, 1, bytes(4096)))
    assert exit_.failed is None
    exit_.message_received(RelayMessage(RelayCommand.DATA, 1, b"!"))
    assert exit_.failed is not None and "credit" in exit_.failed


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40000), min_size=1, max_size=8))
def test_chunks_never_exceed_one_cell(sizes: list[int]) -> None:
    session = CircuitStreams(initiator=True, max_data=16270)
    sid = session.open_stream("svc")
    session.messages()
    for n in sizes:
        session.send(sid, bytes(n))
    data = [m for m in session.messages() if m.command == RelayCommand.DATA]
    assert all(0 < len(m.data) <= 16270 for m in data)
    assert sum(len(m.data) for m in data) == min(sum(sizes), CIRCUIT_WINDOW)


def test_auth_proof_is_bound_to_the_circuit_and_the_exit() -> None:
    p = Pair()
    client = Identity.generate(seed("client"))
    owner_id = p.net.nodes["owner"].identity
    p.client.open_stream("ssh")
    p.pump()
    assert p.exit_key is not None
    binding = p.owner.binding(*p.exit_key)
    assert binding is not None and binding == p.circuit.exit_binding
    proof = circuit_auth_proof(client, owner_id, p.circuit.exit_binding)
    assert check_circuit_auth_proof(client.public, owner_id, binding, proof)
    relay_id = p.net.nodes["R1"].identity
    assert not check_circuit_auth_proof(client.public, relay_id, binding, proof)
    other_binding = bytes([binding[0] ^ 1]) + binding[1:]  # any other circuit's binding
    assert not check_circuit_auth_proof(client.public, owner_id, other_binding, proof)
    # Relays are not the circuit's end: they have no binding to offer.
    r1 = p.net.nodes["R1"].core
    assert all(r1.binding(link, cid) is None for link in range(1, 8) for cid in range(1, 8))


def test_a_node_that_is_no_relay_refuses_extend() -> None:
    net = Net(2)
    net.nodes["R1"].core.relay = False
    circuit = net.build(["R1", "R2"])
    assert net.destroyed("client")[-1].reason is DestroyReason.NOT_A_RELAY
    assert circuit.hops_keyed == 1


def test_reserved_ids_never_collide_with_relay_ids() -> None:
    core = RelayCore(Identity.generate(seed("r")).public, [StaticKey(seed("o"))])
    reserved = {core.reserve_id(9, odd=True) for _ in range(50)}
    assert len(reserved) == 50 and all(i % 2 == 1 for i in reserved)
    core.release_id(9, min(reserved))
    again = core.reserve_id(9, odd=True)
    assert again not in reserved - {min(reserved)}


def test_one_circuit_over_its_buffer_limit_is_destroyed() -> None:
    limits = RelayLimits(max_circuit_buffer=10 * c.CELL_SIZE)
    net = Net(2, limits)
    net.build(["R1", "R2"])
    r1 = net.nodes["R1"].core
    link, cid = next(iter(r1._by_key))
    assert r1.buffered(link, cid, 5 * c.CELL_SIZE) == []
    out = r1.buffered(link, cid, 11 * c.CELL_SIZE)
    destroyed = [e for e in out if isinstance(e, CircuitDestroyed)]
    assert destroyed and destroyed[0].reason is DestroyReason.RESOURCE_LIMIT
    assert len(r1) == 0


def test_full_windows_fit_a_relays_per_circuit_queue() -> None:
    """Every stream of a circuit at full window, in the smallest cells (the exit at the
    deepest position), plus room per stream for its BEGIN, END and the few CREDITs for
    the other direction that can be in flight (one per quarter window): a relay whose
    next hop stops reading must be able to hold it all without destroying the circuit."""
    payload = relay_plaintext_size(MAX_DEPTH) - c.RELAY_HEADER
    cells = CIRCUIT_MAX_STREAMS * -(-CIRCUIT_WINDOW // payload)
    control = CIRCUIT_MAX_STREAMS * 8
    assert (cells + control) * c.CELL_SIZE <= RelayLimits().max_circuit_buffer
