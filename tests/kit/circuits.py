"""In-memory circuits: a client, relays and an owner joined by plain function calls
(sans-IO circuit cores from core/circuit/, no links, no asyncio).

Theory of operation. A `Net` names its nodes R1..Rn and "owner" (the client is
"client"); links are global integers mapping to the pair of node names they join.
`build(path)` starts a `ClientCircuit` and `run()` delivers queued cells one at a time
until none is left, handing each receiver's output back to `dispatch`, which queues the
cells that receiver wrote and handles its events (an EXTEND gets a link at once). A
`tamper` hook may alter any cell in flight; every cell is logged per link.
Keys and ephemerals are derived from `seed(...)`, so every run is the same.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from vx6.core.circuit import (
    CircuitDestroyed,
    CircuitEvent,
    ClientCircuit,
    ExtendRequested,
    HopSpec,
    RelayCore,
    RelayLimits,
    StreamMessageReceived,
)
from vx6.crypto.keys import Identity, StaticKey, node_id
from vx6.crypto.onion import ntor_client_start
from vx6.wire import cells as c


def seed(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


@dataclass
class Node:
    name: str
    identity: bytes
    onion: StaticKey
    core: RelayCore
    events: list[CircuitEvent] = field(default_factory=list)

    def spec(self) -> HopSpec:
        return HopSpec(self.identity, self.onion.public, (c.Endpoint("::1", 7000),))


Tamper = Callable[[str, str, bytes], bytes]


class SlotWriter:
    """A link that takes cells in place (like core/link_cells.py): one slot, reused, so
    each cell is written over the previous one's bytes (the first over 0xAA)."""

    def __init__(self, net: Net, origin: str, link: int) -> None:
        self.net, self.origin, self.link = net, origin, link
        self.slot = memoryview(bytearray(b"\xaa" * c.CELL_SIZE))

    def cell_slot(self) -> memoryview:
        return self.slot

    def cell_written(self) -> None:
        self.net._send(self.origin, self.link, self.slot)


class InPlace(dict[int, SlotWriter]):
    """A relay core's `writers` in which every link takes cells in place."""

    def __init__(self, net: Net, origin: str) -> None:
        super().__init__()
        self.net, self.origin = net, origin

    def get(self, link: int, default: object = None) -> SlotWriter:  # type: ignore[override]
        if link not in self:
            self[link] = SlotWriter(self.net, self.origin, link)
        return self[link]


class Net:
    """Links are global integers; link -> (node a, node b). The client is node "client"."""

    def __init__(
        self, relays: int, limits: RelayLimits | None = None, *, in_place: bool = False
    ) -> None:
        self.nodes: dict[str, Node] = {}
        for name in [f"R{i}" for i in range(1, relays + 1)] + ["owner"]:
            ident = Identity.generate(seed("id", name)).public
            onion = StaticKey(seed("onion", name))
            core = RelayCore(
                ident, [onion], limits, writers=InPlace(self, name) if in_place else None
            )
            self.nodes[name] = Node(name, ident, onion, core)
        self.links: dict[int, tuple[str, str]] = {}
        self.queue: deque[tuple[str, str, int, bytes]] = deque()
        self.client_events: list[CircuitEvent] = []
        self.client: ClientCircuit | None = None
        self.tamper: Tamper | None = None
        self.wire_log: list[bytes] = []
        self.link_log: dict[tuple[str, str], list[bytes]] = {}
        self.now = 0.0

    def link(self, a: str, b: str) -> int:
        for link, ends in self.links.items():
            if set(ends) == {a, b}:
                return link
        link = len(self.links) + 1
        self.links[link] = (a, b)
        return link

    def build(self, path: list[str]) -> ClientCircuit:
        specs = [self.nodes[n].spec() for n in path]
        keys = [seed("x", n, i) for i, n in enumerate(path)]
        self.client = ClientCircuit(self.link("client", path[0]), 5, specs, keys)
        self.dispatch("client", self.client.start())
        self.run()
        return self.client

    def dispatch(self, origin: str, events: list[CircuitEvent]) -> None:
        """Send the cells the origin wrote (they wait in its outbox), then handle its
        events."""
        if origin == "client":
            assert self.client is not None
            outbox = self.client.out.take()
        else:
            outbox = self.nodes[origin].core.cells_to_send()
        for link, cells in outbox.items():
            for cell in cells:
                self._send(origin, link, cell)
        for event in events:
            if isinstance(event, ExtendRequested):
                target = next(n for n in self.nodes.values() if n.identity == event.identity)
                link = self.link(origin, target.name)
                self.dispatch(
                    origin,
                    self.nodes[origin].core.link_ready(event.request_id, link, we_dialled=True),
                )
            elif origin == "client":
                self.client_events.append(event)
            else:
                self.nodes[origin].events.append(event)

    def _send(self, origin: str, link: int, cell: bytes | bytearray | memoryview) -> None:
        a, b = self.links[link]
        self.queue.append((origin, b if origin == a else a, link, bytes(cell)))

    def run(self) -> None:
        while self.queue:
            sender, receiver, link, raw = self.queue.popleft()
            assert len(raw) == c.CELL_SIZE
            if self.tamper is not None:
                raw = self.tamper(sender, receiver, raw)
            self.wire_log.append(raw)
            self.link_log.setdefault((sender, receiver), []).append(raw)
            cell = c.decode_cell(raw)
            if receiver == "client":
                assert self.client is not None
                self.dispatch("client", self.client.cell_received(cell))
                continue
            out = self.nodes[receiver].core.cell_received(
                link,
                cell,
                now=self.now,
                source=sender,
                ephemeral=seed("y", receiver, link, cell.circuit_id),
            )
            self.dispatch(receiver, out)

    def exit_messages(self, name: str = "owner") -> list[StreamMessageReceived]:
        return [e for e in self.nodes[name].events if isinstance(e, StreamMessageReceived)]

    def destroyed(self, name: str) -> list[CircuitDestroyed]:
        events = self.client_events if name == "client" else self.nodes[name].events
        return [e for e in events if isinstance(e, CircuitDestroyed)]


def create(node: Node, circuit_id: int) -> c.Create:
    skin = ntor_client_start(node_id(node.identity), node.onion.public, seed(circuit_id))[1]
    return c.Create(circuit_id, 1, skin)
