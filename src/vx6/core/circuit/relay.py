"""The relay (and exit) side of circuits, sans-IO: one object per node for all circuits.

Theory of operation. A circuit at a relay joins two (link, circuit id) pairs: `prev`
(towards the client) and, once extended, `next`. Both pairs index the same record, and
which one a cell arrived on says its direction.

* CREATE on prev: checks limits (table size, creations per source via token buckets),
  the depth carried in the cell (1..MAX_DEPTH), answers the ntor handshake with this
  node's onion key and sends CREATED. The circuit is OPEN; this node is its end.
* RELAY cells (the data path, `relay_path.py`): from prev a cell loses this hop's
  layer and goes to next, or is for this hop: EXTEND asks the adapter for a link to the
  named node (ExtendRequested), then `link_ready` sends CREATE with depth + 1 on that
  link and CREATED comes back as EXTENDED, wrapped by this hop; stream messages become
  StreamMessageReceived events (how the exit delivers data). From next a cell gains
  this hop's layer and goes to prev.
* The hop cap: the depth in CREATE is set by the node that sends it (a relay always
  writes its own depth + 1), and a hop at MAX_DEPTH refuses EXTEND with HOP_LIMIT.
* Any failure (bad tag, unexpected cell, failed link) destroys the circuit: DESTROY
  with the reason goes to both neighbours, and DESTROY from one neighbour is passed to
  the other with its reason unchanged.
* Memory: each circuit is charged a fixed overhead plus the bytes the adapter reports
  queued for it (`buffered`); over the budget the oldest circuits are destroyed first.
* Idle circuits (relay_idle.py): `handle_timer(now)` destroys circuits without a cell
  for `idle_timeout`; a CREATE at the table cap evicts the circuit idle longest if it
  has been idle for `evictable_after`, else it is refused. One previous-hop link holds
  at most `max_circuits_per_link` circuits, one source `max_circuits_per_source`.
* Rendezvous (relay_join.py): `join` joins two circuits that end here; a joined pair
  passes cells between its two ends and is destroyed together.
* Cells for circuits this core does not hold are counted (`StrayCells`, limits.py); a
  link over the limit of unknown ones is reported (StrayCellsExceeded) for the adapter
  to close. `counts` keeps the exact counters the node shows in `vx6 status`.

Output: every cell this core writes goes through its `CellOutbox` (outbox.py): in
place into a link that takes cells now, else into a per-link list; the adapter drains
`cells_to_send()` after each call, like a link's `data_to_send()`, and the calls return
only the other events. The circuit record and its state table are in relay_circuit.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

from vx6.core.budget import SourceLimiter
from vx6.core.circuit.events import (
    CircuitDestroyed,
    CircuitEvent,
    StrayCellsExceeded,
)
from vx6.core.circuit.limits import Holdings, RelayLimits, StrayCells
from vx6.core.circuit.outbox import CellBuffer, CellOutbox, CellWriter
from vx6.core.circuit.relay_circuit import CircuitKey, RelayedCircuit, RelayInput, RelayState
from vx6.core.circuit.relay_idle import RelayIdle
from vx6.core.circuit.relay_join import RelayJoin
from vx6.core.circuit.relay_path import RelayPath
from vx6.crypto.keys import StaticKey, node_id
from vx6.crypto.onion import (
    MAX_DEPTH,
    HopCrypto,
    HopKeys,
    ntor_server,
    relay_plaintext_size,
)
from vx6.errors import CircuitFailure, CryptoError, DecodeError, DestroyReason, UsageError
from vx6.wire.cells import (
    MAX_CIRCUIT_ID,
    RELAY_HEADER,
    Cell,
    Create,
    Created,
    Destroy,
    Relay,
    RelayCommand,
    RelayMessage,
    destroy_reason,
    encode_cell,
    relay_header,
)


class RelayCore(RelayPath, RelayJoin, RelayIdle):
    def __init__(
        self,
        identity_public: bytes,
        onion_keys: Sequence[StaticKey],
        limits: RelayLimits | None = None,
        *,
        relay: bool = True,
        writers: Mapping[int, CellWriter] | None = None,
    ) -> None:
        self._node_id = node_id(identity_public)
        self._onion_keys = tuple(onion_keys)
        self.relay = relay  # False: only an exit (circuits may end here, never pass on)
        self.limits = limits or RelayLimits()
        self._sources = SourceLimiter(
            self.limits.creations_per_second, self.limits.creation_burst, self.limits.max_sources
        )
        self._by_key: dict[CircuitKey, RelayedCircuit] = {}
        self._by_serial: dict[int, RelayedCircuit] = {}  # insertion order = age, oldest first
        self._pending: dict[int, RelayedCircuit] = {}  # extend request id -> circuit
        self._serial = 0
        self._next_id = 0
        self._reserved: set[CircuitKey] = set()  # ids this node's own client circuits use
        self.out = CellOutbox(writers)
        self.memory_used = 0
        self.now = 0.0  # the latest time an input brought (cells on the data path bring none)
        self._idle_heap: list[tuple[float, int]] = []
        lim = self.limits
        self.holdings = Holdings(lim.max_circuits_per_link, lim.max_circuits_per_source)
        self.strays = StrayCells(
            lim.stray_limit, lim.stray_interval, lim.late_grace, 2 * lim.max_circuits
        )
        self.counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._by_serial)

    def set_onion_keys(self, onion_keys: Sequence[StaticKey]) -> None:
        """After a rotation: the current key first, the previous one still accepted."""
        self._onion_keys = tuple(onion_keys)

    def reserve_id(self, link: int, *, odd: bool) -> int:
        """A circuit id on `link` for a circuit this node builds as a client, never used
        by the relay side (same parity rule as `link_ready`)."""
        circuit_id = self._free_id(link, odd=odd)
        self._reserved.add((link, circuit_id))
        return circuit_id

    def release_id(self, link: int, circuit_id: int) -> None:
        self._reserved.discard((link, circuit_id))
        self.strays.ended((link, circuit_id), self.now)  # its late cells come here

    def stats(self) -> dict[str, int]:
        """Exact counters: stray cells (late / unknown) and what the limits refused."""
        fixed = {"evicted_idle": 0, "expired_idle": 0, "links_over_stray_limit": 0}
        late, unknown = self.strays.late, self.strays.unknown
        return {"late_cells": late, "unknown_cells": unknown, **fixed, **self.counts}

    def max_data(self, link: int, circuit_id: int) -> int:
        """Largest stream payload this end can send back in one cell on that circuit."""
        circuit = self._by_key.get((link, circuit_id))
        if circuit is None:
            return 0
        return relay_plaintext_size(circuit.depth) - RELAY_HEADER

    def binding(self, link: int, circuit_id: int) -> bytes | None:
        """The circuit binding shared with the client, for a circuit that ends here."""
        circuit = self._by_key.get((link, circuit_id))
        if circuit is None or circuit.prev != (link, circuit_id):
            return None
        if circuit.state is not RelayState.OPEN:
            return None  # extended: the circuit goes on, it does not end here
        return circuit.crypto.binding

    def state_of(self, link: int, circuit_id: int) -> RelayState | None:
        circuit = self._by_key.get((link, circuit_id))
        return None if circuit is None else circuit.state

    def cells_to_send(self) -> dict[int, list[CellBuffer]]:
        """The cells written since the last call (`CellOutbox.take`)."""
        return self.out.take()

    # --- inputs from the adapter ------------------------------------------------------

    def cell_received(
        self,
        link: int,
        cell: Cell,
        *,
        now: float | None = None,
        source: Hashable = None,
        ephemeral: bytes | None = None,
    ) -> list[CircuitEvent]:
        """One decoded cell from `link`. For CREATE the adapter must pass the time, the
        peer's rate limit key (`source`, e.g. its address prefix) and 32 fresh random
        bytes; the time is welcome with any cell (stray cells are counted against it)."""
        if now is not None:
            self.now = max(self.now, now)
        key = (link, cell.circuit_id)
        if isinstance(cell, Create):
            return self._create(key, cell, now, source, ephemeral)
        if isinstance(cell, Relay):
            return self.relay_received(link, cell.circuit_id, cell.body)
        circuit = self._by_key.get(key)
        if circuit is None:
            return self._stray(key)
        from_prev = key == circuit.prev
        if isinstance(cell, Destroy):
            reason = destroy_reason(cell.reason)
            return self._remove(
                circuit,
                reason,
                f"DESTROY from a neighbour ({reason.name})",
                notify_prev=not from_prev,
                notify_next=from_prev,
                local=False,
            )
        try:
            if isinstance(cell, Created) and not from_prev:
                circuit.step(RelayInput.CREATED)
                circuit.onionskin = b""
                self._originate(circuit, RelayMessage(RelayCommand.EXTENDED, 0, cell.reply))
                return []
            raise CircuitFailure(DestroyReason.PROTOCOL_ERROR, f"unexpected {type(cell).__name__}")
        except (CircuitFailure, CryptoError, DecodeError) as exc:
            return self._failed(circuit, exc)

    def _failed(self, circuit: RelayedCircuit, exc: Exception) -> list[CircuitEvent]:
        """Destroy a circuit over what went wrong with one of its cells."""
        if isinstance(exc, CircuitFailure):
            return self._remove(circuit, exc.reason, exc.detail)
        if isinstance(exc, CryptoError):
            return self._remove(circuit, DestroyReason.DECRYPT_FAILED, str(exc))
        return self._remove(circuit, DestroyReason.PROTOCOL_ERROR, str(exc))

    def link_ready(self, request_id: int, link: int, *, we_dialled: bool) -> list[CircuitEvent]:
        """The link asked for by ExtendRequested is up. Circuit ids we pick on a link we
        dialled are odd, on one we accepted even, so the two ends never collide."""
        circuit = self._pending.pop(request_id, None)
        if circuit is None or circuit.serial not in self._by_serial:
            return []
        circuit.step(RelayInput.LINK_READY)
        next_key = (link, self._free_id(link, odd=we_dialled))
        circuit.next = next_key
        circuit.next_header = relay_header(next_key[1])
        self._by_key[next_key] = circuit
        self._queue(next_key, Create(next_key[1], circuit.depth + 1, circuit.onionskin))
        return []

    def link_failed(self, request_id: int, detail: str = "") -> list[CircuitEvent]:
        circuit = self._pending.pop(request_id, None)
        if circuit is None or circuit.serial not in self._by_serial:
            return []
        return self._remove(circuit, DestroyReason.CONNECT_FAILED, detail or "next hop unreachable")

    def link_lost(self, link: int) -> list[CircuitEvent]:
        out: list[CircuitEvent] = []
        self._reserved = {key for key in self._reserved if key[0] != link}
        self.strays.link_lost(link)
        for circuit in [c for k, c in self._by_key.items() if k[0] == link]:
            if circuit.serial in self._by_serial:
                lost_prev = circuit.prev[0] == link
                out += self._remove(
                    circuit,
                    DestroyReason.LINK_LOST,
                    "link lost",
                    notify_prev=not lost_prev,
                    notify_next=lost_prev,
                    lost_link=link,
                )
        return out

    def handle_timer(self, now: float) -> list[CircuitEvent]:
        self.now = max(self.now, now)
        self.strays.expire(now)
        return super().handle_timer(now)

    def buffered(self, link: int, circuit_id: int, nbytes: int) -> list[CircuitEvent]:
        """The adapter reports how many bytes it holds queued for this circuit."""
        circuit = self._by_key.get((link, circuit_id))
        if circuit is None:
            return []
        self.memory_used += max(0, nbytes) - circuit.buffered
        circuit.buffered = max(0, nbytes)
        if circuit.buffered > self.limits.max_circuit_buffer:
            detail = f"{circuit.buffered} bytes queued, over the per-circuit limit"
            return self._remove(circuit, DestroyReason.RESOURCE_LIMIT, detail)
        return self._evict()

    def send(
        self,
        link: int,
        circuit_id: int,
        command: int,
        stream_id: int,
        data: bytes | memoryview,
    ) -> list[CircuitEvent]:
        """The exit (or any hop the client addressed) sends a stream message back.
        UsageError on a joined circuit: after the join only its two ends write."""
        circuit = self._by_key.get((link, circuit_id))
        if circuit is not None and circuit.partner is not None:
            raise UsageError("the rendezvous point writes nothing on a joined circuit")
        if circuit is not None and circuit.prev == (link, circuit_id):
            self._originate(circuit, RelayMessage(command, stream_id, data))
        return []

    def destroy(self, link: int, circuit_id: int, reason: DestroyReason) -> list[CircuitEvent]:
        circuit = self._by_key.get((link, circuit_id))
        return [] if circuit is None else self._remove(circuit, reason, "closed locally")

    # --- internals --------------------------------------------------------------------

    def _queue(self, key: CircuitKey, cell: Cell) -> None:
        self.out.send(key[0], encode_cell(cell))

    def _refuse(self, key: CircuitKey, reason: DestroyReason, detail: str) -> list[CircuitEvent]:
        self.counts[f"refused_{reason.name.lower()}"] += 1
        self.strays.ended(key, self.now)  # what the client sent after CREATE is late
        self._queue(key, Destroy(key[1], reason))
        return [CircuitDestroyed(key[0], key[1], reason, detail, True)]

    def _stray(self, key: CircuitKey) -> list[CircuitEvent]:
        if not self.strays.received(key, self.now):
            return []
        self.counts["links_over_stray_limit"] += 1
        return [StrayCellsExceeded(key[0], self.strays.unknown)]

    def _create(
        self,
        key: CircuitKey,
        cell: Create,
        now: float | None,
        source: Hashable,
        ephemeral: bytes | None,
    ) -> list[CircuitEvent]:
        if ephemeral is None or now is None:
            raise ValueError("CREATE needs the time and 32 fresh random bytes from the adapter")
        existing = self._by_key.get(key)
        if existing is not None:
            return self._remove(existing, DestroyReason.PROTOCOL_ERROR, "CREATE on a used id")
        if not 1 <= cell.depth <= MAX_DEPTH:
            return self._refuse(key, DestroyReason.HOP_LIMIT, f"CREATE at depth {cell.depth}")
        limits = self.limits
        refusal = self.holdings.refusal(key[0], source)
        if refusal is not None:
            return self._refuse(key, DestroyReason.RESOURCE_LIMIT, refusal)
        # The rate limit comes before eviction, so evicting is rate-limited per source.
        if not self._sources.allow(source, now):
            return self._refuse(key, DestroyReason.RATE_LIMITED, f"creations from {source!r}")
        victim = None
        if len(self._by_serial) >= limits.max_circuits:
            victim = self._evictable(now)
            if victim is None:
                return self._refuse(key, DestroyReason.RESOURCE_LIMIT, "circuit table full")
        try:
            reply, material = ntor_server(
                cell.onionskin, self._node_id, self._onion_keys, ephemeral
            )
        except CryptoError as exc:
            return self._refuse(key, DestroyReason.HANDSHAKE_FAILED, str(exc))
        out: list[CircuitEvent] = []
        if victim is not None:
            self.counts["evicted_idle"] += 1
            idle = now - victim.active_at
            detail = f"table full: evicted after {idle:.0f} s idle"
            out += self._remove(victim, DestroyReason.RESOURCE_LIMIT, detail)
        self._serial += 1
        circuit = RelayedCircuit(
            self._serial, key, cell.depth, HopCrypto(HopKeys.from_material(material)), now
        )
        self._by_key[key] = circuit
        self._by_serial[circuit.serial] = circuit
        circuit.source = source
        self.holdings.add(key[0], source)
        self._track(circuit)
        self.memory_used += limits.circuit_overhead
        self._queue(key, Created(key[1], reply))
        return out + self._evict()

    def _free_id(self, link: int, *, odd: bool) -> int:
        while True:
            self._next_id = (self._next_id + 1) % (MAX_CIRCUIT_ID // 2)
            candidate = 2 * self._next_id + (1 if odd else 2)
            key = (link, candidate)
            if key not in self._by_key and key not in self._reserved:
                return candidate

    def _remove(
        self,
        circuit: RelayedCircuit,
        reason: DestroyReason,
        detail: str,
        *,
        notify_prev: bool = True,
        notify_next: bool = True,
        local: bool = True,
        lost_link: int | None = None,
    ) -> list[CircuitEvent]:
        out: list[CircuitEvent] = []
        if self._by_serial.pop(circuit.serial, None) is None:
            return out
        self._pending.pop(circuit.serial, None)
        self.memory_used -= self.limits.circuit_overhead + circuit.buffered
        self.holdings.remove(circuit.prev[0], circuit.source)
        for key, notify in ((circuit.prev, notify_prev), (circuit.next, notify_next)):
            if key is not None:
                self._by_key.pop(key, None)
                self.strays.ended(key, self.now)
                if notify:
                    self._queue(key, Destroy(key[1], reason))
        out.append(CircuitDestroyed(circuit.prev[0], circuit.prev[1], reason, detail, local))
        return out + self._remove_partner(circuit, reason, detail, lost_link)

    def _evict(self) -> list[CircuitEvent]:
        out: list[CircuitEvent] = []
        while self.memory_used > self.limits.memory_budget and self._by_serial:
            oldest = next(iter(self._by_serial.values()))
            out += self._remove(oldest, DestroyReason.RESOURCE_LIMIT, "memory budget: oldest")
        return out
