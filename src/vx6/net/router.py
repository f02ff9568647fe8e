"""The node's circuit router: cells between links and circuits, relaying, exits.

Theory of operation. Every node has one `RelayCore` (core/circuit/relay.py). It keys
circuits that end here (this node is the owner, the exit) and, on a node that opted in
with `--relay`, passes cells on. The router is the asyncio glue around it and around the
client circuits this node builds (`ClientPath`):

* Cells in: a link reports whole cells (`cells_received`); each goes to the client
  circuit with that (link, circuit id) if this node built it, else to the relay core.
  The client and relay sides never share an id on a link (`RelayCore.reserve_id`).
* Cells out: the relay core and this node's client circuits write cells through one
  `CellOutbox` (the relay core's `out`): straight into the frame buffer of a link that
  takes cells now (`_writers`: open, not paused, nothing queued), else listed per link.
  At the end of each step `_flush` sends the lists and collects each link's output, one
  write per link.
* Events out: ExtendRequested dials the named node (its identity is checked in the
  handshake, so a wrong address fails closed); stream messages for a circuit that ends
  here go to its `ExitCircuit`, created on the first message, which hands stream
  requests to the owner side exactly like streams from a direct link.
* Backpressure: while a link's TCP buffer is over its high-water mark, cells for it
  wait in the router's queue for that link, charged to their circuit in the relay core
  (which destroys a circuit over its own limit and the oldest ones over the node's
  budget), and the circuits whose first hop is that link pause their streams.
* A link that closes takes its circuits with it: DESTROY(LINK_LOST) goes the other way
  and local streams are reset with CIRCUIT_LOST; one summary line says how many.
* Hidden services: a circuit that ends here and carries an intro-point or
  rendezvous-point command (ESTABLISH_INTRO, INTRODUCE1, ESTABLISH_RENDEZVOUS,
  RENDEZVOUS1) goes to the hidden relay role registered with `use_hidden_relay`
  instead of becoming an exit, with the circuit's binding and its source; that role
  answers through `send_on`, `destroy` and `join`, and hears of every circuit that ends
  (`circuit_closed`). Client circuits to intro and rendezvous points are built without
  AUTH (`build(..., authenticate=False)`).
* The timer (idle expiry, keepalives), the log discipline of destroys and the closing
  of a link that sends too many cells for unknown circuits are in circuit_upkeep.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence

from vx6.core.circuit.client import ClientCircuit, HopSpec
from vx6.core.circuit.events import (
    CircuitBuilt,
    CircuitDestroyed,
    CircuitEvent,
    ExtendRequested,
    StrayCellsExceeded,
    StreamMessageReceived,
)
from vx6.core.circuit.limits import RelayLimits
from vx6.core.circuit.outbox import CellBuffer, CellWriter
from vx6.core.circuit.relay import RelayCore
from vx6.core.dht.contacts import prefix_of
from vx6.crypto.keys import Identity, StaticKey, fingerprint
from vx6.errors import CloseCode, DecodeError, DestroyReason, StreamError, StreamFailed, VX6Error
from vx6.net.carrier import StreamCarrier
from vx6.net.circuit import ClientPath, ControlHandler, ExitCircuit
from vx6.net.link import LinkProtocol
from vx6.net.ports import Clock, Count, LinkSource, Random, Spawn
from vx6.net.ratelog import RATELOG
from vx6.net.router_hidden import HIDDEN_RELAY_COMMANDS, HiddenRelay, RouterHidden
from vx6.net.router_upkeep import RouterUpkeep
from vx6.wire.cells import (
    CELL_SIZE,
    Create,
    cell_circuit_id,
    decode_cell,
)

# Who decides about a stream that arrives on a circuit ending here (the owner side):
# (carrier, stream id, service, flags).
StreamHandler = Callable[[StreamCarrier, int, str, int], None]

log = logging.getLogger("vx6.circuits")

BUILD_TIMEOUT = 15.0
EXTEND_TIMEOUT = 8.0
DRAIN_BATCH = 48  # cells written per step while draining a link's queue


class BuildFailed(StreamFailed):
    """A circuit build failed after `hops_keyed` hops answered (so the next one did not)."""

    def __init__(self, detail: str, hops_keyed: int) -> None:
        super().__init__(StreamError.CIRCUIT_LOST, detail)
        self.hops_keyed = hops_keyed


class CircuitRouter(RouterUpkeep, RouterHidden):
    def __init__(
        self,
        identity: Identity,
        onion_keys: Sequence[StaticKey],
        limits: RelayLimits,
        *,
        relay: bool,
        links: LinkSource,
        on_stream: StreamHandler,
        spawn: Spawn,
        count: Count,
        clock: Clock,
        random: Random,
    ) -> None:
        self.identity = identity
        self.links = links
        self.on_stream = on_stream
        self.spawn = spawn
        self.count = count
        self.clock = clock
        self.random = random
        # Links that take cells in place (open, not paused, nothing queued): see _writable.
        self._writers: dict[int, CellWriter] = {}
        self.core = RelayCore(
            identity.public, onion_keys, limits, relay=relay, writers=self._writers
        )
        self._ids: dict[LinkProtocol, int] = {}
        self._links: dict[int, LinkProtocol] = {}
        self._next_link_id = 0
        self.clients: dict[tuple[int, int], ClientPath] = {}
        self.exits: dict[tuple[int, int], ExitCircuit] = {}
        self._queues: dict[int, deque[CellBuffer]] = {}
        self._queued: dict[tuple[int, int], int] = {}
        self.cells_in = 0
        self.cells_out = 0
        self._timer: asyncio.TimerHandle | None = None
        self._summarising = False  # per-circuit destroy lines off: one summary instead
        self._hidden: HiddenRelay | None = None

    # ------------------------------------------------------------------ links
    def link_id(self, link: LinkProtocol) -> int:
        lid = self._ids.get(link)
        if lid is None:
            self._next_link_id += 1
            lid = self._ids[link] = self._next_link_id
            self._links[lid] = link
            self._writable(lid)
        return lid

    def _writable(self, lid: int) -> None:
        """Let the relay core write cells for this link in place, or stop it: only while
        the link is open, not paused and has nothing queued, so cells keep their order."""
        link = self._links.get(lid)
        if link is not None and link.is_open and not link.paused and not self._queues.get(lid):
            self._writers[lid] = link.core
        else:
            self._writers.pop(lid, None)

    def carries_circuits(self, link: LinkProtocol) -> bool:
        lid = self._ids.get(link)
        return lid is not None and self.core.holdings.by_link.get(lid, 0) > 0

    def link_closed(self, link: LinkProtocol) -> None:
        lid = self._ids.pop(link, None)
        if lid is None:
            return
        self._links.pop(lid, None)
        self._writers.pop(lid, None)
        self._queues.pop(lid, None)
        self._queued = {k: v for k, v in self._queued.items() if k[0] != lid}
        events = self.core.link_lost(lid)
        for key, path in list(self.clients.items()):
            if key[0] == lid:
                events += path.core.link_lost()
        self._summarised(events, f"link to {link.peer_address} closed")

    def link_paused(self, link: LinkProtocol, paused: bool) -> None:
        lid = self._ids.get(link)
        if lid is None:
            return
        if not paused:
            self._drain(lid)
        self._writable(lid)
        self._set_congested(lid, paused or bool(self._queues.get(lid)))

    def _set_congested(self, lid: int, congested: bool) -> None:
        for carriers in (self.clients, self.exits):
            for key, carrier in list(carriers.items()):
                if key[0] == lid:
                    carrier.set_congested(congested)

    def _source(self, link: LinkProtocol) -> object:
        """Whose creations a CREATE counts against: the peer's /48 or /24; on loopback
        and the test bed, where every host shares a prefix, the peer's key."""
        host = link.peer_address[0] if link.peer_address else ""
        network = prefix_of(host) if host else None
        return network if network is not None else (host, link.peer_identity)

    # ------------------------------------------------------------------ cells in
    def cells_received(self, link: LinkProtocol, chunks: tuple[bytes | memoryview, ...]) -> None:
        """All cells from one read of `link`, handled as one batch."""
        lid = self.link_id(link)
        events: list[CircuitEvent] = []
        for chunk in chunks:
            view = memoryview(chunk)
            pos, end = 0, len(view)
            self.cells_in += end // CELL_SIZE
            while pos < end:
                taken, pos = self.core.relay_chunk(lid, view, pos)  # the data path
                events += taken
                if pos < end:
                    if not self._one_cell(link, lid, view[pos : pos + CELL_SIZE], events):
                        return
                    pos += CELL_SIZE
        self.process(events)

    def _one_cell(
        self, link: LinkProtocol, lid: int, raw: memoryview, events: list[CircuitEvent]
    ) -> bool:
        """A cell the relay core's data path left: decoded here and handed to the client
        circuit it belongs to, or to the relay core. False if it closed the link."""
        try:
            cell = decode_cell(raw)
        except DecodeError as exc:
            RATELOG.warning(
                log, "bad-cell", "bad cell from %s: %s; closing", link.peer_address, exc
            )
            self.process(events)
            link.close(CloseCode.PROTOCOL_ERROR, f"bad cell: {exc}")
            return False
        path = self.clients.get((lid, cell.circuit_id))
        if path is not None:
            events += path.core.cell_received(cell)
        elif isinstance(cell, Create):
            # Only a CREATE needs its source and fresh randomness (the rate limit and
            # the handshake); working them out per cell would cost the data path.
            events += self.core.cell_received(
                lid,
                cell,
                now=self.clock.monotonic(),
                source=self._source(link),
                ephemeral=self.random(32),
            )
        else:
            taken = self.core.cell_received(lid, cell, now=self.clock.monotonic())
            events += taken
            if taken and isinstance(taken[-1], StrayCellsExceeded):
                self.process(events)  # closes the link
                return False
        return True

    # ------------------------------------------------------------------ events
    def process(self, events: list[CircuitEvent]) -> None:
        # Stream messages for one circuit are handed over together (one pump, so one
        # write to the local socket for a run of DATA), keeping their order.
        batch: list[StreamMessageReceived] = []
        for event in events:
            if isinstance(event, StreamMessageReceived):
                if batch and (batch[0].link, batch[0].circuit_id) != (
                    event.link,
                    event.circuit_id,
                ):
                    self._stream_messages(batch)
                    batch = []
                batch.append(event)
                continue
            if batch:
                self._stream_messages(batch)
                batch = []
            if isinstance(event, CircuitBuilt):
                path = self.clients.get((event.link, event.circuit_id))
                if path is not None:
                    path.circuit_built()
            elif isinstance(event, CircuitDestroyed):
                self._destroyed(event)
            elif isinstance(event, ExtendRequested):
                self.spawn(self._extend(event))
            elif isinstance(event, StrayCellsExceeded):
                self._stray_limit(event)
        if batch:
            self._stream_messages(batch)
        self._flush()
        self._arm_timer()

    def _stream_messages(self, batch: list[StreamMessageReceived]) -> None:
        event = batch[0]
        key = (event.link, event.circuit_id)
        carrier: ClientPath | ExitCircuit | None = self.clients.get(key)
        if carrier is None:
            carrier = self.exits.get(key)
        if carrier is None and event.command in HIDDEN_RELAY_COMMANDS:
            self._hidden_messages(key, batch)
            return
        if carrier is None:
            link = self._links.get(event.link)
            if link is None:
                return
            carrier = ExitCircuit(
                self.core,
                link,
                event.link,
                event.circuit_id,
                self.process,
                own_identity=self.identity.public,
                max_data=self.core.max_data(event.link, event.circuit_id),
                on_stream=self.on_stream,
            )
            self.exits[key] = carrier
            self.count("circuits_exit")
        carrier.messages_received(batch)  # the events carry the messages' fields

    def _destroyed(self, event: CircuitDestroyed) -> None:
        key = (event.link, event.circuit_id)
        reason = f"{event.reason.name}: {event.detail}"
        self._queued.pop(key, None)
        path = self.clients.pop(key, None)
        exit_ = self.exits.pop(key, None)
        if path is None and exit_ is None and self._hidden is not None:
            self._hidden.circuit_closed(key, event.reason)
        if path is not None:
            self.core.release_id(*key)
            path.circuit_closed(reason)
        if exit_ is not None:
            exit_.circuit_closed(reason)
        quiet = event.reason in (DestroyReason.NONE, DestroyReason.SHUTDOWN)
        if not quiet:
            self.count("circuits_destroyed")
        self._log_destroyed(event, quiet, "client" if path else ("exit" if exit_ else "relay"))

    async def _extend(self, event: ExtendRequested) -> None:
        """A relay was asked to extend to `identity`: find or dial its link."""
        try:
            async with asyncio.timeout(EXTEND_TIMEOUT):
                link = await self.links.link_to(event.identity, event.endpoints, for_peer=True)
        except (OSError, TimeoutError, VX6Error) as exc:
            detail = f"next hop {fingerprint(event.identity)}: {exc or 'timeout'}"
            self.process(self.core.link_failed(event.request_id, detail))
            return
        lid = self.link_id(link)
        self.process(self.core.link_ready(event.request_id, lid, we_dialled=link.core.initiator))

    # ------------------------------------------------------------------ cells out
    def _flush(self) -> None:
        while outbox := self.core.cells_to_send():  # sending may queue more (DESTROYs)
            for lid, cells in outbox.items():
                link = self._links.get(lid)
                if link is None or not link.is_open:
                    continue  # its link_closed is coming and will destroy the circuits
                queue = self._queues.get(lid)
                if cells and (queue or link.paused):
                    self._enqueue(lid, cells)
                else:  # with no cells: the ones written in place are collected and sent
                    self.cells_out += len(cells)
                    link.send_cells(cells)

    def _enqueue(self, lid: int, cells: list[CellBuffer]) -> None:
        queue = self._queues.setdefault(lid, deque())
        self._writers.pop(lid, None)  # cells wait in order behind the queue now
        events: list[CircuitEvent] = []
        for cell in cells:
            queue.append(cell)
            key = (lid, cell_circuit_id(cell))
            held = self._queued[key] = self._queued.get(key, 0) + CELL_SIZE
            events += self.core.buffered(*key, held)
        self._set_congested(lid, True)
        if events:
            self.process(events)

    def _drain(self, lid: int) -> None:
        link = self._links.get(lid)
        queue = self._queues.get(lid)
        events: list[CircuitEvent] = []
        while link is not None and queue and not link.paused:
            batch = [queue.popleft() for _ in range(min(DRAIN_BATCH, len(queue)))]
            for cell in batch:
                key = (lid, cell_circuit_id(cell))
                held = self._queued.get(key, 0) - CELL_SIZE
                if held > 0:
                    self._queued[key] = held
                else:
                    self._queued.pop(key, None)
                events += self.core.buffered(*key, max(held, 0))
            self.cells_out += len(batch)
            link.send_cells(batch)
        if queue is not None and not queue:
            del self._queues[lid]  # link_paused, our only caller, then lets it write in place
        if events:
            self.process(events)

    # ------------------------------------------------------------------ client circuits
    async def build(
        self,
        owner: HopSpec,
        relays: list[HopSpec],
        *,
        authenticate: bool = True,
        on_control: ControlHandler | None = None,
        accepts_streams: Callable[[ClientPath, int, str, int], None] | None = None,
    ) -> ClientPath:
        """Build a circuit through `relays` to the owner (or an intro or rendezvous
        point: `authenticate=False`, see ClientPath); StreamFailed if it fails."""
        path = [*relays, owner]
        first = path[0]
        try:
            link = await self.links.link_to(first.identity, first.endpoints, for_peer=True)
        except (OSError, TimeoutError, VX6Error) as exc:
            raise BuildFailed(f"first hop {fingerprint(first.identity)}: {exc}", 0) from exc
        lid = self.link_id(link)
        circuit_id = self.core.reserve_id(lid, odd=link.core.initiator)
        ephemerals = [self.random(32) for _ in path]
        core = ClientCircuit(lid, circuit_id, path, ephemerals, out=self.core.out)
        carrier = ClientPath(
            core,
            link,
            self.process,
            owner=owner.identity,
            relays=tuple(r.identity for r in relays),
            identity=self.identity,
            clock=self.clock.monotonic,
            authenticate=authenticate,
            on_control=on_control,
            accepts_streams=accepts_streams,
        )
        self.clients[(lid, circuit_id)] = carrier
        self.process(core.start())
        try:
            async with asyncio.timeout(BUILD_TIMEOUT):
                await carrier.built
        except (TimeoutError, VX6Error) as exc:
            carrier.close(DestroyReason.NONE)
            detail = f"circuit build failed: {carrier.close_reason or 'timeout'}"
            raise BuildFailed(detail, core.hops_keyed) from exc
        self.count("circuits_built")
        return carrier

    def rotate_onion_keys(self, onion_keys: Sequence[StaticKey]) -> None:
        """CREATEs are checked against these keys from now on (current first); circuits
        already built keep their hop keys."""
        self.core.set_onion_keys(onion_keys)

    def describe(self) -> dict[str, object]:
        """For `vx6 status`: this node as a relay and exit, and its own circuits."""
        return {
            "relay": self.core.relay,
            "relayed_circuits": len(self.core) - len(self.exits),
            "exit_circuits": len(self.exits),
            "client_circuits": len(self.clients),
            "relay_memory": self.core.memory_used,
            "queued_cells": sum(len(q) for q in self._queues.values()),
            "cells_in": self.cells_in,
            "cells_out": self.cells_out + self.core.out.cells_in_place,
            **self.core.stats(),  # late / unknown cells, refusals, idle evictions, expiries
        }
