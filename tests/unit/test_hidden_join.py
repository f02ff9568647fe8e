"""The rendezvous join (docs/hidden.md section 5): a client circuit A and a service
circuit B, both ending at the rendezvous point RP, joined there; the two ends exchange
stream messages through the end-to-end layer. Circuit cores wired in memory (the data
path through `relay_chunk`, as the router drives it); no sockets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vx6.core.circuit.relay_path as relay_path
from kit.circuits import InPlace, Net, Node, seed
from vx6.core.circuit import (
    CircuitDestroyed,
    CircuitEvent,
    ClientCircuit,
    ClientState,
    RelayLimits,
    RelayState,
    StreamMessageReceived,
)
from vx6.core.circuit.outbox import CellOutbox
from vx6.core.circuit.relay import RelayCore
from vx6.crypto import onion
from vx6.crypto.keys import Identity, StaticKey
from vx6.crypto.onion import E2E_MESSAGE_SIZE, HopCrypto, HopKeys
from vx6.errors import CircuitFailure, CryptoError, DestroyReason, UsageError
from vx6.wire import cells as c
from vx6.wire.cells import RELAY_HEADER, RelayCommand

MARKER = b"HIDDEN-PLAINTEXT-MARKER"
E2E_KEYS = HopKeys.from_material(b"".join(seed("e2e", i) for i in range(4))[:120])


class JoinNet(Net):
    """Relays A1..A5, B1..B5 and RP; circuit ends are ClientCircuits at named nodes
    ("client", "service", ...), several per node sharing one outbox."""

    def __init__(self, *, in_place: bool = False, limits: RelayLimits | None = None) -> None:
        super().__init__(0, limits)
        self.in_place = in_place
        names = [f"A{i}" for i in range(1, 6)] + [f"B{i}" for i in range(1, 6)] + ["RP"]
        for name in names:
            ident = Identity.generate(seed("id", name)).public
            key = StaticKey(seed("onion", name))
            writers = InPlace(self, name) if in_place else None
            self.nodes[name] = Node(
                name, ident, key, RelayCore(ident, [key], limits, writers=writers)
            )
        self.outboxes: dict[str, CellOutbox] = {}
        self.circuits: dict[tuple[str, int], ClientCircuit] = {}
        self.end_events: dict[str, list[CircuitEvent]] = {}
        self.rp_keys: dict[tuple[str, int], tuple[int, int]] = {}

    def build_end(self, name: str, path: list[str], circuit_id: int) -> ClientCircuit:
        if name not in self.outboxes:
            self.outboxes[name] = CellOutbox(InPlace(self, name) if self.in_place else None)
            self.end_events[name] = []
        specs = [self.nodes[n].spec() for n in path]
        keys = [seed("x", name, n, i, circuit_id) for i, n in enumerate(path)]
        link = self.link(name, path[0])
        end = ClientCircuit(link, circuit_id, specs, keys, out=self.outboxes[name])
        self.circuits[(name, circuit_id)] = end
        self.dispatch(name, end.start())
        self.run()
        assert end.state is ClientState.OPEN
        before = path[-2] if len(path) > 1 else name
        link = self.link(before, "RP")
        if len(path) == 1:
            self.rp_keys[(name, circuit_id)] = (link, circuit_id)
        elif path[-1] == "RP":
            sent = [c.decode_cell(raw) for raw in self.link_log[(before, "RP")]]
            ids = [cell.circuit_id for cell in sent if isinstance(cell, c.Create)]
            self.rp_keys[(name, circuit_id)] = (link, ids[-1])  # the CREATE just sent
        return end

    def dispatch(self, origin: str, events: list[CircuitEvent]) -> None:
        if origin not in self.outboxes:
            super().dispatch(origin, events)
            return
        for link, cells in self.outboxes[origin].take().items():
            for cell in cells:
                self._send(origin, link, cell)
        self.end_events[origin] += events

    def run(self) -> None:
        while self.queue:
            sender, receiver, link, raw = self.queue.popleft()
            if self.tamper is not None:
                raw = self.tamper(sender, receiver, raw)
            self.link_log.setdefault((sender, receiver), []).append(raw)
            if receiver in self.outboxes:
                cell = c.decode_cell(raw)
                end = self.circuits[(receiver, cell.circuit_id)]
                self.dispatch(receiver, end.cell_received(cell))
                continue
            core = self.nodes[receiver].core
            events, taken = core.relay_chunk(link, memoryview(raw))  # the data path
            if taken == 0:
                events = core.cell_received(
                    link, c.decode_cell(raw), now=self.now, source=sender,
                    ephemeral=seed("y", receiver, link, raw[:4]),
                )  # fmt: skip
            self.dispatch(receiver, events)

    def messages(self, name: str) -> list[StreamMessageReceived]:
        return [e for e in self.end_events[name] if isinstance(e, StreamMessageReceived)]

    def ended(self, name: str) -> list[CircuitDestroyed]:
        events = self.end_events.get(name)
        if events is None:
            events = self.nodes[name].events
        return [e for e in events if isinstance(e, CircuitDestroyed)]


def _path(side: str, relays: int) -> list[str]:
    return [f"{side}{i}" for i in range(1, relays + 1)] + ["RP"]


def _joined(
    a_relays: int = 3, b_relays: int = 3, **kwargs: object
) -> tuple[JoinNet, ClientCircuit, ClientCircuit, tuple[int, int], tuple[int, int]]:
    """Build A and B, send RENDEZVOUS2 on A, join them at RP, and join both ends."""
    net = JoinNet(**kwargs)  # type: ignore[arg-type]
    a_path, b_path = _path("A", a_relays), _path("B", b_relays)
    a = net.build_end("client", a_path, 5)
    b = net.build_end("service", b_path, 5)
    key_a, key_b = net.rp_keys[("client", 5)], net.rp_keys[("service", 5)]
    rp = net.nodes["RP"].core
    net.dispatch("RP", rp.send(*key_a, RelayCommand.RENDEZVOUS2, 0, bytes(64)))
    net.dispatch("RP", rp.join(key_a, key_b))
    net.run()
    assert [m.command for m in net.messages("client")] == [RelayCommand.RENDEZVOUS2]
    a.join(HopCrypto(E2E_KEYS))
    b.join(HopCrypto(E2E_KEYS.swapped()))
    return net, a, b, key_a, key_b


def _all_gone(net: JoinNet) -> bool:
    return all(len(n.core) == 0 for n in net.nodes.values())


@pytest.fixture
def peeled(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every byte the relays decrypt on the data path (what they could see)."""
    seen: list[bytes] = []
    real_peel, real_joined = relay_path.peel_into, relay_path.peel_joined_into

    def peel(hop: HopCrypto, body: memoryview, depth: int, out: memoryview) -> bool:
        try:
            return real_peel(hop, body, depth, out)
        finally:
            seen.append(bytes(out))

    def peel_joined(hop: HopCrypto, body: memoryview, depth: int, out: memoryview) -> bool:
        try:
            return real_joined(hop, body, depth, out)
        finally:
            seen.append(b"joined:" + bytes(out))

    monkeypatch.setattr(relay_path, "peel_into", peel)
    monkeypatch.setattr(relay_path, "peel_joined_into", peel_joined)
    return seen


def _exchange(
    net: JoinNet, a: ClientCircuit, b: ClientCircuit, count: int, rng: random.Random
) -> dict[str, list[bytes]]:
    """`count` messages each way, interleaved, random sizes up to max_data (the largest
    among them), each with MARKER inside; returns what each end sent."""
    sent: dict[str, list[bytes]] = {"client": [], "service": []}
    ends = {"client": a, "service": b}
    order = ["client", "service"] * count
    rng.shuffle(order)
    for i, name in enumerate(order):
        end = ends[name]
        size = end.max_data if i < 2 else rng.randint(len(MARKER), end.max_data)
        data = bytearray(rng.randbytes(size))
        at = rng.randint(0, size - len(MARKER))
        data[at : at + len(MARKER)] = MARKER
        sent[name].append(bytes(data))
        net.dispatch(name, end.send(RelayCommand.DATA, 1, bytes(data)))
        if rng.random() < 0.3:
            net.run()
    net.run()
    return sent


@pytest.mark.parametrize(("a_relays", "b_relays"), [(3, 3), (5, 3), (3, 5), (5, 5), (0, 2)])
def test_messages_cross_the_join_whole_and_in_order_and_rp_sees_no_plaintext(
    a_relays: int, b_relays: int, peeled: list[bytes]
) -> None:
    net, a, b, key_a, key_b = _joined(a_relays, b_relays)
    rp = net.nodes["RP"].core
    assert rp.state_of(*key_a) is rp.state_of(*key_b) is RelayState.JOINED
    assert rp.partner_of(*key_a) == key_b and rp.partner_of(*key_b) == key_a
    assert a.state is b.state is ClientState.JOINED
    assert a.max_data == b.max_data == E2E_MESSAGE_SIZE - RELAY_HEADER == 16253
    peeled.clear()
    sent = _exchange(net, a, b, 30, random.Random(f"{a_relays}-{b_relays}"))
    got_b = [bytes(m.data) for m in net.messages("service")]
    got_a = [bytes(m.data) for m in net.messages("client")[1:]]  # after RENDEZVOUS2
    assert got_b == sent["client"] and got_a == sent["service"]
    assert all(m.command == RelayCommand.DATA for m in net.messages("service"))
    # What the relays decrypted: every cell went through RP's joined peel, and neither RP
    # nor any relay ever held the plaintext; nor did any link carry it.
    assert sum(p.startswith(b"joined:") for p in peeled) == 60
    assert not any(MARKER in p for p in peeled)
    assert not any(MARKER in raw for log in net.link_log.values() for raw in log)
    assert not [e for e in net.nodes["RP"].events if isinstance(e, StreamMessageReceived)]
    assert a.state is b.state is ClientState.JOINED


def test_joined_cells_written_in_place_are_the_same_bytes_as_fresh_cells() -> None:
    """RP peels into the partner's link buffer over the previous cell's bytes and the
    ends seal in place: every link still carries exactly what fresh cells give."""
    logs = []
    for in_place in (False, True):
        net, a, b, _, _ = _joined(5, 2, in_place=in_place)
        sent = _exchange(net, a, b, 8, random.Random(7))
        assert [bytes(m.data) for m in net.messages("service")] == sent["client"]
        logs.append(net.link_log)
    assert logs[0] == logs[1]


def _flip(sender: str, receiver: str, net: JoinNet) -> None:
    done = False

    def tamper(src: str, dst: str, raw: bytes) -> bytes:
        nonlocal done
        if done or (src, dst) != (sender, receiver) or raw[4] != c.CellCommand.RELAY:
            return raw
        done = True
        return raw[:900] + bytes([raw[900] ^ 4]) + raw[901:]

    net.tamper = tamper


@pytest.mark.parametrize(
    ("sender", "receiver", "origin"),
    [
        ("client", "A1", "client"),
        ("A3", "RP", "client"),
        ("RP", "B3", "client"),
        ("B1", "service", "client"),
        ("service", "B1", "service"),
        ("RP", "A3", "service"),
        ("A1", "client", "service"),
    ],
)
def test_a_cell_altered_anywhere_destroys_the_pair(sender: str, receiver: str, origin: str) -> None:
    net, a, b, _, _ = _joined()
    _flip(sender, receiver, net)
    net.dispatch(origin, (a if origin == "client" else b).send(RelayCommand.DATA, 1, MARKER))
    net.run()
    assert a.state is b.state is ClientState.DESTROYED
    assert {e.reason for e in net.ended("client") + net.ended("service")} == {
        DestroyReason.DECRYPT_FAILED
    }
    assert net.messages("service") == [] and len(net.messages("client")) == 1
    assert _all_gone(net)


def test_a_rendezvous_point_that_alters_the_end_to_end_layer_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net, a, b, _, _ = _joined()
    real = relay_path.reseal_joined

    def evil(partner: HopCrypto, body: memoryview, depth: int) -> None:
        body[1 + 4000] ^= 1  # inside the end-to-end ciphertext, before RP's own layer
        real(partner, body, depth)

    monkeypatch.setattr(relay_path, "reseal_joined", evil)
    net.dispatch("client", a.send(RelayCommand.DATA, 1, MARKER))
    net.run()
    assert net.ended("service")[-1].reason is DestroyReason.DECRYPT_FAILED
    assert net.ended("service")[-1].local  # B's real layers held: the e2e layer did not
    assert a.state is b.state is ClientState.DESTROYED
    assert _all_gone(net)


def test_destroying_one_side_destroys_the_other_with_its_reason() -> None:
    net, a, b, key_a, key_b = _joined()
    net.dispatch("client", a.destroy(DestroyReason.SHUTDOWN))
    net.run()
    assert net.ended("service")[-1].reason is DestroyReason.SHUTDOWN
    assert b.state is ClientState.DESTROYED
    rp_ends = {(e.link, e.circuit_id): e for e in net.ended("RP")}
    assert not rp_ends[key_a].local and rp_ends[key_b].local
    assert _all_gone(net)


def test_a_lost_link_on_one_side_ends_both() -> None:
    net, a, b, _, _ = _joined()
    lost = net.link("B2", "B3")
    net.dispatch("B2", net.nodes["B2"].core.link_lost(lost))
    net.dispatch("B3", net.nodes["B3"].core.link_lost(lost))
    net.run()
    assert net.ended("client")[-1].reason is DestroyReason.LINK_LOST
    assert a.state is b.state is ClientState.DESTROYED
    assert _all_gone(net)


def test_both_sides_on_one_lost_link_send_no_destroy_on_it() -> None:
    """A and B both reach RP from A1 (the core allows it): losing that link ends both
    without writing DESTROY on the dead link."""
    net = JoinNet()
    net.build_end("client", ["A1", "RP"], 5)
    net.build_end("service", ["A1", "RP"], 7)
    key_a, key_b = net.rp_keys[("client", 5)], net.rp_keys[("service", 7)]
    assert key_a[0] == key_b[0] and key_a != key_b
    rp = net.nodes["RP"].core
    rp.join(key_a, key_b)
    events = rp.link_lost(key_a[0])
    assert {e.reason for e in events if isinstance(e, CircuitDestroyed)} == {
        DestroyReason.LINK_LOST
    }
    assert len(rp) == 0 and rp.cells_to_send() == {}
    assert rp.memory_used == 0


def test_idle_expiry_ends_the_pair_and_one_sided_traffic_keeps_both() -> None:
    net, a, _, _, key_b = _joined()
    rp = net.nodes["RP"].core
    timeout = rp.limits.idle_timeout
    assert rp.handle_timer(100.0) == []
    net.dispatch("client", a.send(RelayCommand.DATA, 1, b"x"))  # A -> B only
    net.run()
    assert rp.handle_timer(100.0 + timeout - 1) == []  # both saw the cell
    assert rp.handle_timer(100.0 + 2 * timeout - 2) == []
    assert rp.state_of(*key_b) is RelayState.JOINED
    events = rp.handle_timer(100.0 + 2 * timeout)
    assert [e.reason for e in events if isinstance(e, CircuitDestroyed)] == [DestroyReason.IDLE] * 2
    net.dispatch("RP", events)
    net.run()
    assert net.ended("client")[-1].reason is net.ended("service")[-1].reason is DestroyReason.IDLE
    assert rp.counts["expired_idle"] == 1


def test_a_message_for_the_rendezvous_point_after_the_join_is_refused() -> None:
    net, a, _, _, _ = _joined()
    a._e2e, a.state = None, ClientState.OPEN  # white box: A seals for RP as before the join
    net.dispatch("client", a.send(RelayCommand.DATA, 1, MARKER))
    net.run()
    rp_end = net.ended("RP")[0]
    assert (rp_end.reason, rp_end.local) == (DestroyReason.PROTOCOL_ERROR, True)
    assert net.ended("service")[-1].reason is DestroyReason.PROTOCOL_ERROR
    assert not [e for e in net.nodes["RP"].events if isinstance(e, StreamMessageReceived)]
    assert _all_gone(net)


def test_an_end_refuses_a_message_written_by_the_rendezvous_point() -> None:
    net = JoinNet()
    a = net.build_end("client", _path("A", 2), 5)
    key_a = net.rp_keys[("client", 5)]
    a.join(HopCrypto(E2E_KEYS))
    rp = net.nodes["RP"].core
    net.dispatch("RP", rp.send(*key_a, RelayCommand.DATA, 1, b"from RP"))
    net.run()
    assert net.messages("client") == []
    assert net.ended("client")[-1].reason is DestroyReason.PROTOCOL_ERROR
    assert len(rp) == 0


def test_the_client_joins_as_it_reads_rendezvous2_before_the_services_first_cell() -> None:
    """RENDEZVOUS2 and the service's first message arrive back to back (one read): the
    client must already be joined when it opens the second."""
    net = JoinNet()
    a = net.build_end("client", _path("A", 3), 5)
    b = net.build_end("service", _path("B", 3), 5)
    key_a, key_b = net.rp_keys[("client", 5)], net.rp_keys[("service", 5)]
    replies: list[bytes] = []
    a.join_on(RelayCommand.RENDEZVOUS2, lambda data: replies.append(data) or HopCrypto(E2E_KEYS))
    b.join(HopCrypto(E2E_KEYS.swapped()))
    rp = net.nodes["RP"].core
    rp.send(*key_a, RelayCommand.RENDEZVOUS2, 0, b"\x07" * 64)
    rp.join(key_a, key_b)
    net.dispatch("service", b.send(RelayCommand.DATA, 1, MARKER))
    net.dispatch("RP", [])
    net.run()
    assert replies == [b"\x07" * 64] and a.state is ClientState.JOINED
    assert [(m.command, bytes(m.data)) for m in net.messages("client")] == [
        (RelayCommand.RENDEZVOUS2, b"\x07" * 64),
        (RelayCommand.DATA, MARKER),
    ]


def test_a_rendezvous2_that_does_not_verify_destroys_the_circuit() -> None:
    net = JoinNet()
    a = net.build_end("client", _path("A", 1), 5)

    def finish(data: bytes) -> HopCrypto:
        raise CryptoError("AUTH does not verify")

    a.join_on(RelayCommand.RENDEZVOUS2, finish)
    rp = net.nodes["RP"].core
    net.dispatch("RP", rp.send(*net.rp_keys[("client", 5)], RelayCommand.RENDEZVOUS2, 0, b"x"))
    net.run()
    assert net.ended("client")[-1].reason is DestroyReason.HANDSHAKE_FAILED
    assert net.messages("client") == [] and len(rp) == 0


def test_the_rendezvous_point_writes_nothing_on_a_joined_circuit() -> None:
    net, _, _, key_a, _ = _joined()
    with pytest.raises(UsageError):
        net.nodes["RP"].core.send(*key_a, RelayCommand.DATA, 1, b"x")


def test_keepalive_goes_end_to_end_and_the_other_end_drops_it() -> None:
    net, a, b, _, _ = _joined()
    a.tick(0.0)
    net.dispatch("client", a.tick(25.0))
    net.run()
    assert a.keepalives_sent == 1
    assert net.messages("service") == [] and b.state is ClientState.JOINED
    assert net.nodes["RP"].events == []  # no message and no destroy at RP


def test_join_refuses_bad_inputs_and_changes_nothing() -> None:
    net = JoinNet()
    net.build_end("client", _path("A", 1), 5)
    net.build_end("service", _path("B", 1), 5)
    c_end = net.build_end("service", ["RP", "B2"], 9)  # extended at RP: does not end there
    net.build_end("client", ["A2", "RP"], 11)
    rp = net.nodes["RP"].core
    key_a, key_b = net.rp_keys[("client", 5)], net.rp_keys[("service", 5)]
    key_c, key_spare = (net.link("service", "RP"), 9), net.rp_keys[("client", 11)]
    assert rp.state_of(*key_c) is RelayState.EXTENDED and c_end.state is ClientState.OPEN
    for bad in [(key_a, key_a), (key_a, (99, 1)), (key_a, key_c), (key_c, key_b)]:
        with pytest.raises(UsageError):
            rp.join(*bad)
    assert rp.state_of(*key_a) is rp.state_of(*key_b) is RelayState.OPEN
    rp.join(key_a, key_b)
    for bad in [(key_a, key_spare), (key_spare, key_b), (key_b, key_a)]:
        with pytest.raises(UsageError, match="already joined"):
            rp.join(*bad)
    assert rp.state_of(*key_spare) is RelayState.OPEN
    assert rp.partner_of(*key_a) == key_b and rp.partner_of(*key_spare) is None


def test_client_join_needs_an_open_circuit() -> None:
    net = JoinNet()
    fresh = ClientCircuit(1, 3, [net.nodes["RP"].spec()], [seed("k")])
    with pytest.raises(UsageError):
        fresh.join(HopCrypto(E2E_KEYS))
    a = net.build_end("client", _path("A", 1), 5)
    a.join(HopCrypto(E2E_KEYS))
    with pytest.raises(UsageError):
        a.join(HopCrypto(E2E_KEYS))
    with pytest.raises(UsageError):
        a.send(RelayCommand.DATA, 1, bytes(a.max_data + 1))
    a.destroy()
    with pytest.raises(UsageError):
        a.join(HopCrypto(E2E_KEYS))


def test_memory_accounting_of_a_pair() -> None:
    net, a, _, key_a, key_b = _joined()
    rp = net.nodes["RP"].core
    overhead = rp.limits.circuit_overhead
    rp.buffered(*key_b, 50_000)  # A's messages queued towards B's prev: B's cells
    rp.buffered(*key_a, 20_000)
    assert rp.memory_used == 2 * overhead + 70_000
    net.dispatch("client", a.destroy())
    net.run()
    assert rp.memory_used == 0 and len(rp) == 0
    net, _, _, key_a, key_b = _joined()
    rp = net.nodes["RP"].core
    events = rp.buffered(*key_b, rp.limits.max_circuit_buffer + 1)
    assert {e.reason for e in events if isinstance(e, CircuitDestroyed)} == {
        DestroyReason.RESOURCE_LIMIT
    }
    net.dispatch("RP", events)
    net.run()
    assert net.ended("client")[-1].reason is DestroyReason.RESOURCE_LIMIT
    assert rp.memory_used == 0 and _all_gone(net)


# --- the layers alone (crypto/onion.py) ---------------------------------------------------


def _hop_pair(*parts: object) -> tuple[HopCrypto, HopCrypto]:
    """The client's and the relay's HopCrypto for one hop (the same keys)."""
    keys = HopKeys.from_material(b"".join(seed(*parts, i) for i in range(4))[:120])
    return HopCrypto(keys), HopCrypto(keys)


def test_end_to_end_sizes_and_swapped_keys() -> None:
    assert onion.E2E_LAYER_SIZE == onion.layer_size(onion.MAX_DEPTH + 1) == 16277
    assert onion.E2E_MESSAGE_SIZE == 16260
    assert E2E_KEYS.swapped().swapped() == E2E_KEYS
    assert E2E_KEYS.swapped().forward_key == E2E_KEYS.backward_key


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, onion.MAX_DEPTH),
    st.integers(1, onion.MAX_DEPTH),
    st.binary(max_size=64),
    st.booleans(),
)
def test_a_message_crosses_the_layers_of_any_two_depths(
    a: int, b: int, data: bytes, junk: bool
) -> None:
    """A seals for its a real hops; a-1 relays peel; RP peels into B's backward cell
    (a buffer that may hold junk) and re-seals; b-1 relays add their layers; B opens."""
    a_hops = [_hop_pair("a", a, i) for i in range(a)]
    b_hops = [_hop_pair("b", b, i) for i in range(b)]
    body = memoryview(bytearray(c.BODY_SIZE))
    c.write_relay_message(body[a + 1 : a + 1 + E2E_MESSAGE_SIZE], RelayCommand.DATA, 3, data)
    onion.seal_joined([h[0] for h in a_hops], HopCrypto(E2E_KEYS), body)
    for depth in range(1, a):
        out = memoryview(bytearray(c.BODY_SIZE + 1))
        assert not onion.peel_into(a_hops[depth - 1][1], body, depth, out)
        body = out[1:]
    cell = memoryview(bytearray(b"\xaa" * c.BODY_SIZE if junk else c.BODY_SIZE))
    assert not onion.peel_joined_into(a_hops[-1][1], body, a, cell)
    onion.reseal_joined(b_hops[-1][1], cell, b)
    for depth in range(b - 1, 0, -1):
        passed = memoryview(bytearray(c.BODY_SIZE))
        passed[1:] = cell[: c.BODY_SIZE - 1]
        onion.seal_layer(b_hops[depth - 1][1], passed, depth, originated=False)
        cell = passed
    opened = onion.open_joined([h[0] for h in b_hops], HopCrypto(E2E_KEYS.swapped()), cell)
    message = c.decode_relay_message(opened)
    assert (message.command, message.stream_id, bytes(message.data)) == (RelayCommand.DATA, 3, data)


def test_peel_into_still_refuses_pass_at_the_cap_and_the_joined_peel_accepts_it() -> None:
    depth = onion.MAX_DEPTH
    for peel, out_size in (
        (onion.peel_into, c.BODY_SIZE + 1),
        (onion.peel_joined_into, c.BODY_SIZE),
    ):
        client, relay = _hop_pair("cap")
        body = memoryview(bytearray(c.BODY_SIZE))
        body[0] = 0  # "pass on"
        client.forward.seal_in_place(body[: onion.layer_size(depth)])
        out = memoryview(bytearray(out_size))
        if peel is onion.peel_into:
            with pytest.raises(CryptoError):
                peel(relay, body, depth, out)
        else:
            assert peel(relay, body, depth, out) is False


def test_open_joined_refuses_a_cell_a_real_hop_wrote() -> None:
    client, relay = _hop_pair("one")
    body = memoryview(bytearray(c.BODY_SIZE))
    c.write_relay_message(body[1 : 1 + onion.relay_plaintext_size(1)], RelayCommand.DATA, 1, b"x")
    onion.seal_layer(relay, body, 1, originated=True)
    with pytest.raises(CircuitFailure) as failure:
        onion.open_joined([client], HopCrypto(E2E_KEYS), body)
    assert failure.value.reason is DestroyReason.PROTOCOL_ERROR


# --- hostile cells at the rendezvous point (the router's way: relay_chunk, then decode) ----


def _feed(core: RelayCore, link: int, chunk: bytes, now: float) -> list[CircuitEvent]:
    """What `CircuitRouter.cells_received` does with one CELLS frame's cells."""
    view, pos, events = memoryview(chunk), 0, []
    while pos < len(view):
        taken, pos = core.relay_chunk(link, view, pos)
        events += taken
        if pos < len(view):
            cell = c.decode_cell(view[pos : pos + c.CELL_SIZE])
            events += core.cell_received(link, cell, now=now, source=link, ephemeral=seed(pos))
            pos += c.CELL_SIZE
    return events


def _raw(circuit_id: int, command: int, arg: int) -> bytes:
    cell = bytearray(random.Random(arg).randbytes(c.CELL_SIZE))
    c.write_cell_header(cell, circuit_id, command)
    return bytes(cell)


hostile = st.one_of(
    st.tuples(st.just("forge"), st.sampled_from("ab"), st.integers(0, 2**32)),
    st.tuples(st.just("destroy"), st.sampled_from("ab"), st.integers(0, 255)),
    st.tuples(st.just("for_rp"), st.just("a"), st.integers(0, 3000)),
    st.tuples(st.just("unknown"), st.sampled_from("ab"), st.integers(0, 2**32)),
)
genuine = st.tuples(st.sampled_from(["a", "c"]), st.just(""), st.integers(1, 16253))
plans = st.lists(st.one_of(genuine, genuine, hostile), max_size=20)


@settings(max_examples=40, deadline=None)
@given(plans, st.integers(1, c.CELLS_PER_FRAME), st.booleans())
def test_hostile_cells_at_the_rendezvous_point_end_only_the_pair_they_hit(
    plan: list[tuple[str, str, int]], per_frame: int, in_place: bool
) -> None:
    """A (client -> RP) and B (service -> B1 -> RP) joined at RP; C (client -> RP -> B1)
    shares A's link into RP and B's link out of it. Forged cells, DESTROYs and a message
    for RP on the pair's keys, mixed into the same frames as C's and A's genuine cells,
    end the pair (with the right reason) and nothing else: C's data arrives whole and in
    order, A's messages before the first hit reach B, and RP's accounting holds."""
    net = JoinNet(in_place=in_place)
    net.outboxes["client"], net.end_events["client"] = CellOutbox(), []  # cells taken here
    b = net.build_end("service", ["B1", "RP"], 5)
    circuit_c = net.build_end("client", ["RP", "B1"], 7)
    a = net.build_end("client", ["RP"], 5)
    key_a, key_b = net.rp_keys[("client", 5)], net.rp_keys[("service", 5)]
    rp = net.nodes["RP"].core
    rp.join(key_a, key_b)
    a.join(HopCrypto(E2E_KEYS))
    b.join(HopCrypto(E2E_KEYS.swapped()))
    a_link = key_a[0]

    cells: list[tuple[int, bytes]] = []
    sent: dict[str, list[bytes]] = {"a": [], "c": []}
    first_hit: tuple[str, str, int] | None = None
    a_before_hit = 0
    for kind, target, arg in plan:
        link, own = key_a if target == "a" else key_b
        if kind in ("a", "c"):
            data = bytes([len(sent[kind]) % 251]) * arg
            end = a if kind == "a" else circuit_c
            end.send(RelayCommand.DATA, 1, data[: end.max_data])
            sent[kind].append(data[: end.max_data])
            cells += [(a_link, bytes(x)) for x in net.outboxes["client"].take()[a_link]]
            continue
        if kind == "forge":
            cells.append((link, _raw(own, c.CellCommand.RELAY, arg)))
        elif kind == "destroy":
            cells.append((link, c.encode_cell(c.Destroy(own, arg))))
        elif kind == "unknown":
            cells.append((link, _raw(1000 + arg % 1000, c.CellCommand.RELAY, arg)))
            continue
        else:  # for_rp: A seals a message for RP itself, as before the join
            body = memoryview(bytearray(c.BODY_SIZE))
            size = onion.relay_plaintext_size(1)
            c.write_relay_message(body[1 : 1 + size], RelayCommand.DATA, 1, bytes(arg))
            onion.seal_layers(a._hops, body)
            cells.append((a_link, c.encode_cell(c.Relay(own, bytes(body)))))
        if first_hit is None:
            first_hit, a_before_hit = (kind, target, arg), len(sent["a"])

    for i, (link, chunk) in enumerate(_frames(cells, per_frame)):
        net.dispatch("RP", _feed(rp, link, chunk, now=1.0 + i / 1000))
        assert rp.memory_used == len(rp) * rp.limits.circuit_overhead
    net.run()

    c_data = [bytes(m.data) for m in net.exit_messages("B1") if m.command == RelayCommand.DATA]
    assert c_data == sent["c"]
    assert rp.state_of(a_link, circuit_c.circuit_id) is RelayState.EXTENDED
    got_b = [bytes(m.data) for m in net.messages("service")]
    if first_hit is None:
        assert got_b == sent["a"]
        assert rp.state_of(*key_a) is rp.state_of(*key_b) is RelayState.JOINED
        return
    assert got_b == sent["a"][:a_before_hit]
    assert rp.state_of(*key_a) is None and rp.state_of(*key_b) is None
    kind, target, arg = first_hit
    # RP sent DESTROY towards B's prev, unless that DESTROY came (forged) from there.
    b_told = (kind, target) != ("destroy", "b")
    assert (b.state is ClientState.DESTROYED) is b_told
    pair = [e for e in net.ended("RP") if (e.link, e.circuit_id) in (key_a, key_b)]
    expected = {
        "forge": DestroyReason.DECRYPT_FAILED,
        "for_rp": DestroyReason.PROTOCOL_ERROR,
    }.get(kind) or c.destroy_reason(arg)
    assert len(pair) == 2 and {e.reason for e in pair} == {expected}


def _frames(cells: list[tuple[int, bytes]], per_frame: int) -> list[tuple[int, bytes]]:
    """Consecutive cells from one link, up to `per_frame` of them per CELLS frame."""
    frames: list[tuple[int, bytes]] = []
    for link, cell in cells:
        if frames and frames[-1][0] == link and len(frames[-1][1]) < per_frame * c.CELL_SIZE:
            frames[-1] = (link, frames[-1][1] + cell)
        else:
            frames.append((link, cell))
    return frames
