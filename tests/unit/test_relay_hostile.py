"""Hostile cells on the relay data path (`RelayCore.relay_chunk`), driven the way the
router drives it: a link frame's cells go through `relay_chunk`, and the cell it leaves is
decoded and handed to `cell_received`. A peer's garbage may only hurt its own circuits:
circuit B's cells, interleaved with it in the same frames, still arrive at the owner
whole and in order."""

from __future__ import annotations

import random
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from kit.circuits import Net, seed
from vx6.core.circuit import CircuitEvent, ClientCircuit, RelayCore
from vx6.errors import DestroyReason
from vx6.wire import cells as c
from vx6.wire.cells import CellCommand, RelayCommand

A_ID, B_ID = 5, 6  # both circuits on the client's link to R1
PATH = ["R1", "R2", "owner"]


def _build(net: Net, circuit_id: int) -> ClientCircuit:
    specs = [net.nodes[n].spec() for n in PATH]
    keys = [seed("x", n, i, circuit_id) for i, n in enumerate(PATH)]
    net.client = ClientCircuit(net.link("client", "R1"), circuit_id, specs, keys)
    net.dispatch("client", net.client.start())
    net.run()
    return net.client


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


def _raw(circuit_id: int, command: int, seed: int) -> bytes:
    """A cell with a valid header and a body of random bytes."""
    cell = bytearray(random.Random(seed).randbytes(c.CELL_SIZE))
    c.write_cell_header(cell, circuit_id, command)
    return bytes(cell)


# What a hostile peer sends besides B's genuine cells, on either of R1's links:
# ("fwd" = from the client's side, "back" = from R2's side).
hostile = st.one_of(
    st.tuples(st.sampled_from(["fwd", "back"]), st.just("relay_a"), st.integers(0, 2**32)),
    st.tuples(st.sampled_from(["fwd", "back"]), st.just("relay_unknown"), st.integers(0, 2**32)),
    st.tuples(st.just("fwd"), st.just("create"), st.integers(0, 2**32)),
    st.tuples(st.sampled_from(["fwd", "back"]), st.just("destroy_a"), st.integers(0, 255)),
)
steps = st.lists(st.one_of(st.tuples(st.just("b"), st.integers(1, 3000)), hostile), max_size=24)


def _next_ids(net: Net) -> list[int]:
    """The circuit ids R1 chose towards R2, in build order: from the CREATEs it sent."""
    sent = [c.decode_cell(raw) for raw in net.link_log[("R1", "R2")]]
    return [cell.circuit_id for cell in sent if isinstance(cell, c.Create)]


def _frames(cells: list[tuple[int, bytes]], per_frame: int) -> list[tuple[int, bytes]]:
    """Consecutive cells from one link, up to `per_frame` of them per CELLS frame."""
    frames: list[tuple[int, bytes]] = []
    for link, cell in cells:
        if frames and frames[-1][0] == link and len(frames[-1][1]) < per_frame * c.CELL_SIZE:
            frames[-1] = (link, frames[-1][1] + cell)
        else:
            frames.append((link, cell))
    return frames


@settings(max_examples=60)
@given(steps, st.integers(1, c.CELLS_PER_FRAME))
def test_garbage_in_a_peers_frames_never_costs_another_circuit_its_data(
    plan: list[tuple[str, int]], per_frame: int
) -> None:
    net = Net(2)
    _build(net, A_ID)
    circuit_b = _build(net, B_ID)
    a_next, b_next = _next_ids(net)
    relay = net.nodes["R1"].core
    client_link, next_link = net.link("client", "R1"), net.link("R1", "R2")

    # The plan as cells in wire order; B's genuine cells are sealed as they come.
    circuit_b.send(RelayCommand.BEGIN, 1, b"ssh")
    cells = [(client_link, bytes(cell)) for cell in circuit_b.out.take()[client_link]]
    sent_b: list[bytes] = []
    first_hit_on_a: str | None = None  # what reached A at R1 first, if anything did
    for kind, *rest in plan:
        if kind == "b":
            data = bytes([len(sent_b) % 251]) * rest[0]
            sent_b.append(data)
            circuit_b.send(RelayCommand.DATA, 1, data)
            cells += [(client_link, bytes(cell)) for cell in circuit_b.out.take()[client_link]]
            continue
        what, arg = rest
        link, own_a = (client_link, A_ID) if kind == "fwd" else (next_link, a_next)
        if what == "relay_a":
            cells.append((link, _raw(own_a, CellCommand.RELAY, arg)))
        elif what == "relay_unknown":
            cells.append((link, _raw(1000 + arg % 1000, CellCommand.RELAY, arg)))
        elif what == "create":
            onionskin = random.Random(arg).randbytes(96)
            cells.append((link, c.encode_cell(c.Create(2000 + arg % 1000, 3, onionskin))))
        else:
            cells.append((link, c.encode_cell(c.Destroy(own_a, arg))))
        if first_hit_on_a is None and (what == "destroy_a" or (what, kind) == ("relay_a", "fwd")):
            first_hit_on_a = what

    for i, (link, chunk) in enumerate(_frames(cells, per_frame)):
        net.dispatch("R1", _feed(relay, link, chunk, now=1.0 + i / 1000))
        # After every frame R1 accounts for what its table holds, no more.
        assert relay.memory_used == len(relay) * relay.limits.circuit_overhead
    # Deliver what R1 sent on to R2 and the owner (the client's side is not simulated).
    net.queue = deque(m for m in net.queue if m[1] != "client")
    net.run()

    # B: every byte reached the owner, in order, and B is open at R1 on both sides.
    messages = net.exit_messages()
    b_exit = {m.circuit_id for m in messages if m.command == RelayCommand.BEGIN}
    assert len(b_exit) == 1
    data = [bytes(m.data) for m in messages if m.command == RelayCommand.DATA]
    assert data == sent_b
    assert all(m.circuit_id in b_exit for m in messages)
    assert relay.state_of(client_link, B_ID) is not None
    assert relay.state_of(next_link, b_next) is not None
    # A: a forged forward RELAY cell fails R1's layer (R1 cannot check backward cells:
    # they gain its layer and the client checks them); a DESTROY from either side ends it.
    if first_hit_on_a is not None:
        assert relay.state_of(client_link, A_ID) is None
        ends = [e for e in net.destroyed("R1") if e.circuit_id in (A_ID, a_next)]
        assert ends
        if first_hit_on_a == "relay_a":
            assert ends[0].reason is DestroyReason.DECRYPT_FAILED
