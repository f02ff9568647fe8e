"""Circuit cores (core/circuit/): a client, relays and an owner wired in memory by plain
function calls: build, data both ways, hop cap, tampering, destroy propagation, limits,
and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.circuits import Net, Node, Tamper, create, seed
from vx6.core.circuit import (
    CircuitBuilt,
    CircuitEvent,
    ClientCircuit,
    ClientState,
    ExtendRequested,
    HopAdded,
    HopSpec,
    RelayLimits,
    RelayState,
    StreamMessageReceived,
)
from vx6.crypto.keys import StaticKey, node_id
from vx6.crypto.onion import MAX_DEPTH, ntor_client_start, relay_plaintext_size, seal_layers
from vx6.errors import DestroyReason, UsageError
from vx6.wire import cells as c
from vx6.wire.cells import RelayCommand

MARKER = b"PLAINTEXT-MARKER"


def _five_relay_net() -> tuple[Net, ClientCircuit]:
    net = Net(5)
    circuit = net.build(["R1", "R2", "R3", "R4", "R5", "owner"])
    return net, circuit


def test_build_through_five_relays_to_the_owner() -> None:
    net, circuit = _five_relay_net()
    assert circuit.state is ClientState.OPEN
    assert [e.depth for e in net.client_events if isinstance(e, HopAdded)] == [1, 2, 3, 4, 5, 6]
    assert [e for e in net.client_events if isinstance(e, CircuitBuilt)][-1].hops == 6
    for name in ("R1", "R2", "R3", "R4", "R5"):
        assert len(net.nodes[name].core) == 1
    assert len(net.nodes["owner"].core) == 1
    assert all(len(raw) == c.CELL_SIZE for raw in net.wire_log)


def test_data_both_ways_with_integrity_and_no_plaintext_on_any_link() -> None:
    net, circuit = _five_relay_net()
    big = (MARKER * 2000)[: circuit.max_data]
    net.dispatch("client", circuit.send(RelayCommand.BEGIN, 1, b"ssh"))
    for i in range(5):
        net.dispatch("client", circuit.send(RelayCommand.DATA, 1, big[i:]))
    net.run()
    got = net.exit_messages()
    assert [(m.command, m.stream_id) for m in got] == [(RelayCommand.BEGIN, 1)] + [
        (RelayCommand.DATA, 1)
    ] * 5
    assert [m.data for m in got[1:]] == [big[i:] for i in range(5)]
    owner = net.nodes["owner"].core
    exit_link, exit_circuit = got[0].link, got[0].circuit_id
    for i in range(3):
        reply = MARKER + bytes([i]) * 1000
        net.dispatch("owner", owner.send(exit_link, exit_circuit, RelayCommand.DATA, 1, reply))
    net.run()
    back = [e for e in net.client_events if isinstance(e, StreamMessageReceived)]
    assert [m.data for m in back] == [MARKER + bytes([i]) * 1000 for i in range(3)]
    assert not any(MARKER in raw for raw in net.wire_log)
    assert circuit.state is ClientState.OPEN


def _both_ways(net: Net, circuit: ClientCircuit) -> None:
    big = (MARKER * 2000)[: circuit.max_data]
    net.dispatch("client", circuit.send(RelayCommand.BEGIN, 1, b"ssh"))
    for i in range(4):
        net.dispatch("client", circuit.send(RelayCommand.DATA, 1, big[i:]))
    net.run()
    begin = net.exit_messages()[0]
    owner = net.nodes["owner"].core
    for i in range(3):
        reply = MARKER + bytes([i]) * 5000
        net.dispatch("owner", owner.send(begin.link, begin.circuit_id, RelayCommand.DATA, 1, reply))
    net.run()


def test_cells_written_in_place_are_the_same_bytes_on_every_link() -> None:
    """Relays that write each cell into the next link's buffer, over the previous cell's
    bytes, put exactly the bytes on every link that fresh zeroed cells give."""
    fresh, in_place = Net(5), Net(5, in_place=True)
    for net in (fresh, in_place):
        _both_ways(net, net.build(["R1", "R2", "R3", "R4", "R5", "owner"]))
    assert in_place.link_log == fresh.link_log
    assert len(in_place.wire_log) == len(fresh.wire_log) > 6 * 10
    back = [e.data for e in in_place.client_events if isinstance(e, StreamMessageReceived)]
    assert back == [MARKER + bytes([i]) * 5000 for i in range(3)]


def test_tampering_is_caught_when_cells_are_written_in_place() -> None:
    net = Net(5, in_place=True)
    circuit = net.build(["R1", "R2", "R3", "R4", "R5", "owner"])
    net.tamper = _flip_relay_cell("R2", "R3")
    net.dispatch("client", circuit.send(RelayCommand.DATA, 1, MARKER))
    net.run()
    assert net.destroyed("client")[-1].reason is DestroyReason.DECRYPT_FAILED
    assert net.exit_messages() == []
    assert all(len(n.core) == 0 for n in net.nodes.values())


def test_a_message_for_a_middle_hop_is_not_left_in_the_links_buffer() -> None:
    """A relay that writes in place still hands over a message addressed to itself in a
    buffer of its own: the next cell it forwards (into the same slot) must not change it.
    The client here wraps a DATA message for hop 2 by hand."""
    net = Net(3, in_place=True)
    circuit = net.build(["R1", "R2", "R3"])
    payload = bytes(range(256)) * 8
    cell = bytearray(c.CELL_SIZE)
    view = memoryview(cell)
    c.write_cell_header(view, circuit.circuit_id, c.CellCommand.RELAY)
    body = view[c.CELL_HEADER :]
    c.write_relay_message(body[2 : 2 + relay_plaintext_size(2)], RelayCommand.DATA, 7, payload)
    seal_layers(circuit._hops[:2], body)  # white box: the client's keys for hops 1 and 2
    net._send("client", circuit.link, cell)
    net.run()
    for i in range(3):  # R2 forwards these to R3 through the slot the message came out of
        net.dispatch("client", circuit.send(RelayCommand.DATA, 1, bytes([i]) * 9000))
    net.run()
    (mine,) = net.exit_messages("R2")
    assert (mine.command, mine.stream_id, bytes(mine.data)) == (RelayCommand.DATA, 7, payload)
    assert [bytes(m.data) for m in net.exit_messages("R3")] == [bytes([i]) * 9000 for i in range(3)]


def test_client_refuses_a_sixth_relay() -> None:
    net = Net(6)
    with pytest.raises(UsageError):
        net.build(["R1", "R2", "R3", "R4", "R5", "R6", "owner"])
    with pytest.raises(UsageError):
        ClientCircuit(1, 1, [], [])


def test_relay_at_the_cap_refuses_to_extend() -> None:
    """A client that ignores the cap (here: it sends EXTEND by hand to hop 6) is stopped
    by the protocol: the hop at MAX_DEPTH destroys the circuit with HOP_LIMIT."""
    net = Net(6)
    circuit = net.build(["R1", "R2", "R3", "R4", "R5", "R6"])
    assert circuit.state is ClientState.OPEN
    owner = net.nodes["owner"]
    skin = ntor_client_start(node_id(owner.identity), owner.onion.public, seed("x7"))[1]
    extend = c.encode_extend(c.Extend(owner.identity, skin, ()))
    net.dispatch("client", circuit.send(RelayCommand.EXTEND, 0, extend))
    net.run()
    assert circuit.state is ClientState.DESTROYED
    assert net.destroyed("client")[-1].reason is DestroyReason.HOP_LIMIT
    assert net.destroyed("R6")[-1].reason is DestroyReason.HOP_LIMIT
    assert all(len(n.core) == 0 for n in net.nodes.values())


@pytest.mark.parametrize("depth", [0, MAX_DEPTH + 1, 255])
def test_create_with_impossible_depth_is_refused(depth: int) -> None:
    node = Net(1).nodes["R1"]
    skin = ntor_client_start(node_id(node.identity), node.onion.public, seed("x"))[1]
    node.core.cell_received(1, c.Create(3, depth, skin), now=0, ephemeral=seed("y"))
    assert c.decode_cell(_cells(node)[0]) == c.Destroy(3, DestroyReason.HOP_LIMIT)
    assert len(node.core) == 0


def _cells(node: Node) -> list[bytes | bytearray]:
    """The cells the node's relay core wrote since the last call, on any link."""
    return [cell for cells in node.core.cells_to_send().values() for cell in cells]


def _flip_relay_cell(sender: str, receiver: str) -> Tamper:
    done = False

    def tamper(src: str, dst: str, raw: bytes) -> bytes:
        nonlocal done
        if done or (src, dst) != (sender, receiver) or raw[4] != c.CellCommand.RELAY:
            return raw
        done = True
        return raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]

    return tamper


def test_cell_altered_before_hop_three_destroys_the_circuit() -> None:
    net, circuit = _five_relay_net()
    net.tamper = _flip_relay_cell("R2", "R3")
    net.dispatch("client", circuit.send(RelayCommand.DATA, 1, MARKER))
    net.run()
    assert circuit.state is ClientState.DESTROYED
    assert net.destroyed("client")[-1].reason is DestroyReason.DECRYPT_FAILED
    r3 = net.destroyed("R3")[-1]
    assert (r3.reason, r3.local) == (DestroyReason.DECRYPT_FAILED, True)
    assert net.destroyed("owner")[-1].reason is DestroyReason.DECRYPT_FAILED
    assert net.exit_messages() == []
    assert all(len(n.core) == 0 for n in net.nodes.values())


def test_backward_cell_altered_at_hop_three_is_caught_by_the_client() -> None:
    net, circuit = _five_relay_net()
    net.dispatch("client", circuit.send(RelayCommand.BEGIN, 1, b"x"))
    net.run()
    begin = net.exit_messages()[0]
    net.tamper = _flip_relay_cell("R3", "R2")
    owner = net.nodes["owner"].core
    net.dispatch("owner", owner.send(begin.link, begin.circuit_id, RelayCommand.DATA, 1, b"x"))
    net.run()
    destroyed = net.destroyed("client")[-1]
    assert (destroyed.reason, destroyed.local) == (DestroyReason.DECRYPT_FAILED, True)
    assert all(len(n.core) == 0 for n in net.nodes.values())


def test_client_destroy_propagates_with_reason() -> None:
    net, circuit = _five_relay_net()
    net.dispatch("client", circuit.destroy(DestroyReason.SHUTDOWN))
    net.run()
    assert all(len(n.core) == 0 for n in net.nodes.values())
    assert net.destroyed("owner")[-1].reason is DestroyReason.SHUTDOWN
    assert circuit.destroy() == []


def test_lost_link_mid_path_reaches_both_ends() -> None:
    net, circuit = _five_relay_net()
    lost = net.link("R3", "R4")
    net.dispatch("R3", net.nodes["R3"].core.link_lost(lost))
    net.dispatch("R4", net.nodes["R4"].core.link_lost(lost))
    net.run()
    assert net.destroyed("client")[-1].reason is DestroyReason.LINK_LOST
    assert net.destroyed("owner")[-1].reason is DestroyReason.LINK_LOST
    assert all(len(n.core) == 0 for n in net.nodes.values())
    assert circuit.state is ClientState.DESTROYED


def test_unreachable_next_hop_ends_the_build() -> None:
    net = Net(2)
    r1 = net.nodes["R1"]
    original = net.dispatch

    def failing(origin: str, events: list[CircuitEvent]) -> None:
        original(origin, [e for e in events if not isinstance(e, ExtendRequested)])
        for event in events:
            if isinstance(event, ExtendRequested):
                original(origin, net.nodes[origin].core.link_failed(event.request_id, "refused"))

    net.dispatch = failing  # type: ignore[method-assign]
    circuit = net.build(["R1", "R2"])
    assert circuit.state is ClientState.DESTROYED
    assert net.destroyed("client")[-1].reason is DestroyReason.CONNECT_FAILED
    assert len(r1.core) == 0


def test_wrong_onion_key_fails_the_handshake() -> None:
    net = Net(1)
    spec = net.nodes["R1"].spec()
    bad = HopSpec(spec.identity, StaticKey(seed("other")).public)
    net.client = ClientCircuit(net.link("client", "R1"), 9, [bad], [seed("x")])
    net.dispatch("client", net.client.start())
    net.run()
    assert net.destroyed("client")[-1].reason is DestroyReason.HANDSHAKE_FAILED


# --- relay limits ---------------------------------------------------------------------


def _last_destroy(node: Node) -> c.Cell:
    return c.decode_cell(_cells(node)[-1])


def test_max_circuits() -> None:
    node = Net(1, RelayLimits(max_circuits=3)).nodes["R1"]
    for i in range(1, 4):
        node.core.cell_received(1, create(node, i), now=0, ephemeral=seed(i))
        assert isinstance(c.decode_cell(_cells(node)[0]), c.Created)
    node.core.cell_received(1, create(node, 4), now=0, ephemeral=seed(4))
    assert _last_destroy(node) == c.Destroy(4, DestroyReason.RESOURCE_LIMIT)
    assert len(node.core) == 3


def test_creation_rate_per_source() -> None:
    limits = RelayLimits(creations_per_second=1.0, creation_burst=5.0)
    node = Net(1, limits).nodes["R1"]
    core = node.core
    results = []
    for i in range(1, 9):
        core.cell_received(1, create(node, i), now=10.0, source="a", ephemeral=seed(i))
        results.append(type(c.decode_cell(_cells(node)[0])).__name__)
    assert results == ["Created"] * 5 + ["Destroy"] * 3
    core.cell_received(1, create(node, 20), now=10.0, source="b", ephemeral=seed(20))
    assert isinstance(c.decode_cell(_cells(node)[0]), c.Created)
    core.cell_received(1, create(node, 21), now=11.0, source="a", ephemeral=seed(21))
    assert isinstance(c.decode_cell(_cells(node)[0]), c.Created)
    core.cell_received(1, create(node, 22), now=11.0, source="a", ephemeral=seed(22))
    assert _last_destroy(node) == c.Destroy(22, DestroyReason.RATE_LIMITED)


def test_bounded_creation_flood_holds_the_limits() -> None:
    limits = RelayLimits(max_circuits=50, creations_per_second=10, creation_burst=20)
    node = Net(1, limits).nodes["R1"]
    accepted = 0
    for i in range(1, 2001):
        now = i / 1000  # 2000 creations from 4 sources in 2 s
        node.core.cell_received(1, create(node, i), now=now, source=i % 4, ephemeral=seed(i))
        accepted += isinstance(c.decode_cell(_cells(node)[0]), c.Created)
    assert accepted == 50  # table cap reached; rate would allow 4 x (20 + 20) = 160
    assert len(node.core) == 50


def test_memory_budget_evicts_oldest_first() -> None:
    limits = RelayLimits(memory_budget=3 * 4096 + 10_000, circuit_overhead=4096)
    node = Net(1, limits).nodes["R1"]
    for i in range(1, 4):
        node.core.cell_received(1, create(node, i), now=0, ephemeral=seed(i))
    assert len(_cells(node)) == 3  # the CREATED answers
    node.core.buffered(1, 3, 15_000)
    assert [c.decode_cell(x) for x in _cells(node)] == [
        c.Destroy(1, DestroyReason.RESOURCE_LIMIT),
        c.Destroy(2, DestroyReason.RESOURCE_LIMIT),
    ]
    assert node.core.state_of(1, 3) is RelayState.OPEN
    assert node.core.memory_used == 4096 + 15_000
    node.core.buffered(1, 3, 0)
    assert node.core.memory_used == 4096
    assert node.core.buffered(1, 99, 5) == []


# --- hostile input ----------------------------------------------------------------------

hostile_cells = st.one_of(
    st.builds(c.Create, st.integers(1, 4), st.integers(0, 8), st.binary(min_size=96, max_size=96)),
    st.builds(c.Created, st.integers(1, 4), st.binary(min_size=64, max_size=64)),
    st.builds(c.Relay, st.integers(1, 4), st.binary(max_size=8).map(lambda b: (b * 9000)[:16379])),
    st.builds(c.Destroy, st.integers(1, 4), st.integers(0, 255)),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), hostile_cells), max_size=20))
def test_hostile_cells_never_crash_a_relay(cells: list[tuple[int, c.Cell]]) -> None:
    node = Net(1).nodes["R1"]
    for i, (link, cell) in enumerate(cells):
        if isinstance(cell, c.Relay) and len(cell.body) != c.BODY_SIZE:
            cell = c.Relay(cell.circuit_id, bytes(c.BODY_SIZE))
        node.core.cell_received(link, cell, now=i, source=link, ephemeral=seed(i))
        assert node.core.memory_used == len(node.core) * node.core.limits.circuit_overhead


@settings(max_examples=100, deadline=None)
@given(st.lists(hostile_cells, max_size=10))
def test_hostile_cells_never_crash_a_client(cells: list[c.Cell]) -> None:
    net = Net(2)
    circuit = net.build(["R1", "R2"])
    for cell in cells:
        if isinstance(cell, c.Relay) and len(cell.body) != c.BODY_SIZE:
            cell = c.Relay(cell.circuit_id, bytes(c.BODY_SIZE))
        circuit.cell_received(cell)
    assert circuit.state in (ClientState.OPEN, ClientState.DESTROYED)
