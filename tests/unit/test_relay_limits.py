"""A hostile peer must not fill a relay's circuit table (sans-IO, fake clock): idle
circuits expire with DESTROY(IDLE) both ways, a full table evicts the circuit idle
longest for a new CREATE (never one that carries cells), one link holds a bounded
number of circuits, client keepalives keep an idle circuit alive, and cells for
unknown circuits are counted exactly and end an abusive link."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kit.circuits import Net, Node, create, seed
from vx6.core.circuit import RelayLimits
from vx6.core.circuit.client import KEEPALIVE_AFTER
from vx6.core.circuit.events import CircuitDestroyed, StrayCellsExceeded, StreamMessageReceived
from vx6.errors import DestroyReason
from vx6.wire import cells as c
from vx6.wire.cells import RelayCommand

TICK = 10.0  # the router's timer period


def _sent(node: Node) -> list[tuple[int, c.Cell]]:
    """(link, decoded cell) for every cell the relay core wrote since the last call."""
    return [(link, c.decode_cell(x)) for link, xs in node.core.cells_to_send().items() for x in xs]


def _create_at(node: Node, link: int, circuit_id: int, now: float, source: object) -> c.Cell:
    node.core.cell_received(
        link, create(node, circuit_id), now=now, source=source, ephemeral=seed(circuit_id)
    )
    cells = _sent(node)
    return cells[-1][1]


def test_full_table_evicts_the_oldest_idle_circuit_for_a_new_create() -> None:
    limits = RelayLimits(max_circuits=4, evictable_after=60.0)
    node = Net(1, limits).nodes["R1"]
    for i in range(1, 5):  # the attacker fills the table from link 1 and leaves it idle
        assert isinstance(_create_at(node, 1, i, float(i), "attacker"), c.Created)
    # Not idle long enough yet: the honest CREATE is refused, nothing is evicted.
    assert _create_at(node, 2, 100, 30.0, "honest") == c.Destroy(100, DestroyReason.RESOURCE_LIMIT)
    assert len(node.core) == 4
    # After evictable_after the oldest idle (circuit 1, created at t=1) makes room.
    node.core.cell_received(2, create(node, 102), now=62.0, source="honest", ephemeral=seed(2))
    cells = _sent(node)
    assert (1, c.Destroy(1, DestroyReason.RESOURCE_LIMIT)) in cells
    assert isinstance(cells[-1][1], c.Created) and cells[-1][0] == 2
    assert node.core.state_of(2, 102) is not None and node.core.state_of(1, 1) is None
    assert len(node.core) == 4 and node.core.stats()["evicted_idle"] == 1
    # The next one evicts circuit 2, then 3: oldest idle first.
    _create_at(node, 2, 104, 63.0, "honest")
    assert node.core.state_of(1, 2) is None and node.core.state_of(1, 3) is not None


def test_a_circuit_that_carries_cells_is_not_evicted() -> None:
    limits = RelayLimits(max_circuits=3, evictable_after=60.0)
    net = Net(1, limits)
    circuit = net.build(["R1", "owner"])  # the oldest circuit at R1, honest
    r1 = net.nodes["R1"]
    for i in (11, 12):
        assert isinstance(_create_at(r1, 99, i, 1.0, "attacker"), c.Created)
    net.now = 100.0
    net.dispatch("client", circuit.send(RelayCommand.DATA, 1, b"still here"))
    net.run()
    assert _create_at(r1, 77, 13, 100.0, "attacker2") == c.Created(13, _created_reply(r1, 13))
    assert r1.core.state_of(99, 11) is None  # the oldest *idle* one went
    assert r1.core.state_of(99, 12) is not None
    assert circuit.state.name == "OPEN" and len(r1.core) == 3


def _created_reply(node: Node, circuit_id: int) -> bytes:
    # CREATED replies are deterministic here (fixed ephemerals): recompute one.
    other = Net(1).nodes[node.name]
    other.core.cell_received(
        1, create(other, circuit_id), now=0.0, source="x", ephemeral=seed(circuit_id)
    )
    cell = _sent(other)[-1][1]
    assert isinstance(cell, c.Created)
    return cell.reply


def test_idle_circuits_expire_with_destroy_both_ways() -> None:
    net = Net(2, RelayLimits(idle_timeout=300.0))
    circuit = net.build(["R1", "R2", "owner"])
    r1 = net.nodes["R1"]
    assert r1.core.next_deadline() == 300.0  # a lower bound: created at 0
    # The router's timer every 10 s; the first look (t=10) sees the build's cells.
    expired_at, events = None, []
    for step in range(1, 60):
        events = r1.core.handle_timer(step * TICK)
        if events:
            expired_at = step * TICK
            break
    assert expired_at == 310.0
    assert [e.reason for e in events if isinstance(e, CircuitDestroyed)] == [DestroyReason.IDLE]
    destroys = [(link, cell) for link, cell in _sent(r1) if isinstance(cell, c.Destroy)]
    links = {link for link, _ in destroys}
    assert links == {net.link("client", "R1"), net.link("R1", "R2")}
    assert all(cell.reason == DestroyReason.IDLE for _, cell in destroys)
    assert len(r1.core) == 0 and r1.core.next_deadline() is None
    assert r1.core.stats()["expired_idle"] == 1
    # The DESTROYs reach both neighbours: the client and the rest of the path end too.
    for link, cell in destroys:
        net._send("R1", link, c.encode_cell(cell))
    net.run()
    assert circuit.state.name == "DESTROYED"
    assert len(net.nodes["R2"].core) == 0 and len(net.nodes["owner"].core) == 0


def test_keepalives_keep_an_idle_client_circuit_alive_and_never_evictable() -> None:
    limits = RelayLimits(idle_timeout=300.0, evictable_after=60.0)
    net = Net(2, limits)
    circuit = net.build(["R1", "R2", "owner"])
    assert limits.evictable_after > KEEPALIVE_AFTER + TICK
    for step in range(1, 121):  # 20 minutes of nothing but the timers
        now = step * TICK
        net.now = now
        net.dispatch("client", circuit.tick(now))
        net.run()
        for name in ("R1", "R2", "owner"):
            core = net.nodes[name].core
            net.dispatch(name, core.handle_timer(now))
            assert core._evictable(now) is None, (name, now)
        net.run()
    assert circuit.state.name == "OPEN" and circuit.keepalives_sent >= 30
    assert all(len(n.core) == 1 for n in net.nodes.values())
    assert net.exit_messages() == []  # the exit drops keepalives


def test_circuits_per_link_are_capped() -> None:
    node = Net(1, RelayLimits(max_circuits_per_link=3)).nodes["R1"]
    for i in range(1, 4):
        assert isinstance(_create_at(node, 1, i, 0.0, i), c.Created)
    assert _create_at(node, 1, 4, 0.0, 4) == c.Destroy(4, DestroyReason.RESOURCE_LIMIT)
    assert isinstance(_create_at(node, 2, 5, 0.0, 5), c.Created)
    node.core.destroy(1, 1, DestroyReason.NONE)
    _sent(node)
    assert isinstance(_create_at(node, 1, 6, 0.0, 6), c.Created)  # room again
    assert node.core.stats()["refused_resource_limit"] == 1


def test_circuits_per_source_are_capped_across_links() -> None:
    node = Net(1, RelayLimits(max_circuits_per_source=4)).nodes["R1"]
    for i in range(1, 5):  # one source (one key, or one /48) over four links
        assert isinstance(_create_at(node, i, i, 0.0, "one-peer"), c.Created)
    assert _create_at(node, 5, 5, 0.0, "one-peer") == c.Destroy(5, DestroyReason.RESOURCE_LIMIT)
    assert isinstance(_create_at(node, 5, 6, 0.0, "another"), c.Created)
    node.core.link_lost(1)
    _sent(node)
    assert isinstance(_create_at(node, 6, 7, 0.0, "one-peer"), c.Created)  # room again


def test_unknown_circuit_cells_are_counted_and_an_abusive_link_is_reported() -> None:
    limits = RelayLimits(stray_limit=50, stray_interval=10.0, late_grace=60.0)
    node = Net(1, limits).nodes["R1"]
    body = bytes(c.BODY_SIZE)
    for i in range(50):
        assert node.core.cell_received(3, c.Relay(1000 + i, body), now=1.0) == []
    assert node.core.stats()["unknown_cells"] == 50
    events = node.core.cell_received(3, c.Destroy(7777, 0), now=1.0)
    assert events == [StrayCellsExceeded(3, 51)]
    # Another link is not affected, and a new interval starts afresh.
    assert node.core.cell_received(4, c.Relay(5, body), now=1.0) == []
    assert node.core.cell_received(3, c.Relay(5, body), now=11.5) == []
    assert node.core.stats()["unknown_cells"] == 53


def test_late_cells_of_an_ended_circuit_are_never_held_against_the_link() -> None:
    limits = RelayLimits(stray_limit=10, late_grace=60.0)
    node = Net(1, limits).nodes["R1"]
    _create_at(node, 1, 9, 0.0, "a")
    node.core.destroy(1, 9, DestroyReason.RESOURCE_LIMIT)
    body = bytes(c.BODY_SIZE)
    for _ in range(500):  # a stream window's worth was in flight
        assert node.core.cell_received(1, c.Relay(9, body), now=5.0) == []
    stats = node.core.stats()
    assert stats["late_cells"] == 500 and stats["unknown_cells"] == 0
    node.core.handle_timer(100.0)  # the grace is over: now they are unknown
    node.core.cell_received(1, c.Relay(9, body), now=100.0)
    assert node.core.stats()["unknown_cells"] == 1


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["create", "tick", "destroy"]), st.integers(1, 3)),
        max_size=40,
    )
)
def test_table_bounds_hold_under_any_sequence(ops: list[tuple[str, int]]) -> None:
    limits = RelayLimits(max_circuits=5, max_circuits_per_link=3, evictable_after=20.0)
    node = Net(1, limits).nodes["R1"]
    now, circuit_id = 0.0, 0
    for op, link in ops:
        now += 7.0
        if op == "create":
            circuit_id += 1
            _create_at(node, link, circuit_id, now, link)
        elif op == "tick":
            node.core.handle_timer(now)
        else:
            node.core.link_lost(link)
        _sent(node)
        core = node.core
        assert len(core) <= 5
        per_link: dict[int, int] = {}
        for circuit in core._by_serial.values():
            per_link[circuit.prev[0]] = per_link.get(circuit.prev[0], 0) + 1
        assert per_link == core.holdings.by_link and max(per_link.values(), default=0) <= 3
        assert sum(core.holdings.by_source.values()) == len(core)
        assert core.memory_used == len(core) * limits.circuit_overhead
        assert len(core._idle_heap) <= 2 * len(core) + 64
    assert all(not isinstance(e, StreamMessageReceived) for e in node.events)
