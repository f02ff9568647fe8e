"""The client end of one circuit, sans-IO.

Theory of operation. The client knows the whole path (each hop's identity key, onion
key and endpoints) and one link, to hop 1. `start()` sends CREATE (depth 1) with an ntor
onionskin for hop 1; each CREATED or EXTENDED answer completes one hop's handshake, and
while hops remain the client sends EXTEND, wrapped for the newest hop, naming the next
hop and carrying its onionskin. The path is at most MAX_DEPTH hops (five relays and
the exit); a longer one is refused here, and the relays enforce the same cap (see
docs/circuits.md). Once every hop is keyed the circuit is OPEN: `send()` wraps a relay
message for the last hop, and cells coming back are unwrapped layer by layer.

Cells go out through a `CellOutbox` (outbox.py), shared with the node's relay core so
the adapter drains one place: in place into the link to hop 1 while it takes cells,
else queued; the calls return only the other events.

Relays expire idle circuits (relay_idle.py), so the adapter's timer calls `tick(now)`:
an open circuit that saw no cell either way for `KEEPALIVE_AFTER` sends KEEPALIVE to
the exit, which every hop counts as activity and the exit drops.

Joined circuits (docs/hidden.md section 5). Both ends of a rendezvous are client
circuits ending at the rendezvous point. Once the handshake through the introduction
gave the two ends their end-to-end keys, each calls `join(e2e)`: the circuit is JOINED,
`send()` seals every message for the virtual hop (the other end) inside the real layers
(`seal_joined`), and cells coming back must have been written by the other end
(`open_joined`): a cell that a real hop wrote after the join, the rendezvous point
included, is a protocol error. KEEPALIVE goes end to end, and the other end drops it.
The client side joins inside `cell_received`, as RENDEZVOUS2 arrives (`join_on`): the
service's first cell may follow it in the same read, before the adapter sees events.

Anything wrong (a bad layer, an answer out of turn, a malformed message) destroys the
circuit: DESTROY goes to hop 1 with the reason, and a CircuitDestroyed event says why.
States and inputs form the table `_TRANSITIONS`; an input missing from it is a
protocol error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import auto

from vx6.core.circuit.events import (
    CircuitBuilt,
    CircuitDestroyed,
    CircuitEvent,
    HopAdded,
    StreamMessageReceived,
    next_state,
)
from vx6.core.circuit.outbox import CellOutbox
from vx6.core.states import TableEnum
from vx6.crypto.keys import KEY_LEN, node_id
from vx6.crypto.onion import (
    E2E_MESSAGE_SIZE,
    MAX_DEPTH,
    HopCrypto,
    HopKeys,
    NtorClientState,
    ntor_client_finish,
    ntor_client_start,
    open_joined,
    open_layers,
    relay_plaintext_size,
    seal_joined,
    seal_layers,
)
from vx6.errors import CircuitFailure, CryptoError, DecodeError, DestroyReason, UsageError
from vx6.wire.cells import (
    CELL_HEADER,
    RELAY_HEADER,
    Cell,
    Create,
    Created,
    Destroy,
    Endpoint,
    Extend,
    Relay,
    RelayCommand,
    decode_relay_message,
    destroy_reason,
    encode_cell,
    encode_extend,
    relay_header,
    write_relay_message,
)

# Well under RelayLimits.evictable_after (60 s): with a 10 s tick an honest idle circuit
# carries a cell at least every ~30 s, so it is never evictable as idle at a relay.
KEEPALIVE_AFTER = 20.0


@dataclass(frozen=True, slots=True)
class HopSpec:
    """One hop as the client knows it from the hop's signed node record."""

    identity: bytes  # Ed25519 identity key
    onion_key: bytes  # X25519 onion public key
    endpoints: tuple[Endpoint, ...] = ()


class ClientState(TableEnum):
    NEW = auto()
    CREATING = auto()  # CREATE sent to hop 1
    EXTENDING = auto()  # EXTEND sent through the circuit
    OPEN = auto()
    JOINED = auto()  # the far end is the other end of a rendezvous (the virtual hop)
    DESTROYED = auto()


class ClientInput(TableEnum):
    START = auto()
    HOP_KEYED = auto()  # a handshake finished and hops remain
    LAST_HOP_KEYED = auto()
    MESSAGE = auto()  # a stream message came back
    SEND = auto()
    JOIN = auto()
    DESTROY = auto()


_S, _I = ClientState, ClientInput
_TRANSITIONS: dict[tuple[ClientState, ClientInput], ClientState] = {
    (_S.NEW, _I.START): _S.CREATING,
    (_S.CREATING, _I.HOP_KEYED): _S.EXTENDING,
    (_S.CREATING, _I.LAST_HOP_KEYED): _S.OPEN,
    (_S.EXTENDING, _I.HOP_KEYED): _S.EXTENDING,
    (_S.EXTENDING, _I.LAST_HOP_KEYED): _S.OPEN,
    (_S.OPEN, _I.MESSAGE): _S.OPEN,
    (_S.OPEN, _I.SEND): _S.OPEN,
    (_S.OPEN, _I.JOIN): _S.JOINED,
    (_S.JOINED, _I.MESSAGE): _S.JOINED,
    (_S.JOINED, _I.SEND): _S.JOINED,
    (_S.NEW, _I.DESTROY): _S.DESTROYED,
    (_S.CREATING, _I.DESTROY): _S.DESTROYED,
    (_S.EXTENDING, _I.DESTROY): _S.DESTROYED,
    (_S.OPEN, _I.DESTROY): _S.DESTROYED,
    (_S.JOINED, _I.DESTROY): _S.DESTROYED,
}

_CARRIES_STREAMS = (ClientState.OPEN, ClientState.JOINED)


class ClientCircuit:
    def __init__(
        self,
        link: int,
        circuit_id: int,
        path: Sequence[HopSpec],
        ephemerals: Sequence[bytes],
        out: CellOutbox | None = None,
    ) -> None:
        """`ephemerals`: one fresh 32-byte X25519 private key per hop, from the caller.
        `out`: where cells go (a fresh outbox of its own if not given)."""
        if not 1 <= len(path) <= MAX_DEPTH:
            raise UsageError(
                f"a circuit has 1..{MAX_DEPTH} hops (at most {MAX_DEPTH - 1} relays and "
                f"the exit), not {len(path)}"
            )
        if len(ephemerals) != len(path) or any(len(e) != KEY_LEN for e in ephemerals):
            raise UsageError("one 32-byte ephemeral key per hop")
        if not 0 < circuit_id <= 0xFFFFFFFF:
            raise UsageError(f"bad circuit id {circuit_id}")
        self.link = link
        self.circuit_id = circuit_id
        self.out = out if out is not None else CellOutbox()
        self._header = relay_header(circuit_id)
        self.state = ClientState.NEW
        self._path = tuple(path)
        self._ephemerals = tuple(ephemerals)
        self._hops: list[HopCrypto] = []
        self._pending: NtorClientState | None = None
        self._e2e: HopCrypto | None = None  # the virtual hop, once joined
        self._join_on: tuple[int, Callable[[bytes], HopCrypto]] | None = None
        # Largest stream payload one cell carries to the last hop.
        self.max_data = relay_plaintext_size(len(self._path)) - RELAY_HEADER
        self._seen = 0  # cells counted by hop 1's layers when `tick` last looked
        self._active_at: float | None = None
        self.keepalives_sent = 0

    @property
    def hops_keyed(self) -> int:
        return len(self._hops)

    @property
    def exit_binding(self) -> bytes:
        """The secret this client shares with the last hop only (for AUTH)."""
        if self.state is not ClientState.OPEN:
            raise UsageError("the circuit is not built yet")
        return self._hops[-1].binding

    def _step(self, event: ClientInput) -> None:
        self.state = next_state(_TRANSITIONS, self.state, event)

    def _onionskin(self, depth: int) -> bytes:
        hop = self._path[depth - 1]
        state, skin = ntor_client_start(
            node_id(hop.identity), hop.onion_key, self._ephemerals[depth - 1]
        )
        self._pending = state
        return skin

    def _queue(self, cell: Cell) -> None:
        self.out.send(self.link, encode_cell(cell))

    def _wrap(self, command: int, stream_id: int, data: bytes | memoryview) -> None:
        """One cell, where it will be sent from if the link takes it now: the message is
        written where the innermost layer's plaintext goes and every layer is sealed
        around it in place (no copies)."""
        cell, writer = self.out.buffer(self.link)
        body = cell[CELL_HEADER:]
        n = len(self._hops)
        if self._e2e is not None:
            write_relay_message(body[n + 1 : n + 1 + E2E_MESSAGE_SIZE], command, stream_id, data)
            seal_joined(self._hops, self._e2e, body)
        else:
            write_relay_message(body[n : n + relay_plaintext_size(n)], command, stream_id, data)
            seal_layers(self._hops, body)
        cell[:CELL_HEADER] = self._header
        self.out.done(self.link, cell, writer)

    def start(self) -> list[CircuitEvent]:
        self._step(ClientInput.START)
        self._queue(Create(self.circuit_id, 1, self._onionskin(1)))
        return []

    def send(self, command: int, stream_id: int, data: bytes | memoryview) -> list[CircuitEvent]:
        """Wrap one stream message for the last hop (joined: for the other end). UsageError
        if the circuit is not open or the data does not fit one cell (split by
        `max_data`)."""
        if self.state not in _CARRIES_STREAMS:
            raise UsageError(f"circuit is {self.state.name}, not OPEN")
        if len(data) > self.max_data:
            raise UsageError(f"{len(data)} bytes over one cell's {self.max_data}")
        self._step(ClientInput.SEND)
        self._wrap(command, stream_id, data)
        return []

    def join(self, e2e: HopCrypto) -> list[CircuitEvent]:
        """The rendezvous point (this circuit's last hop) joined it to the other end's
        circuit: from now on messages go to and come from the other end through the
        end-to-end layer `e2e` (its forward direction seals, its backward one opens;
        the other end holds the same keys swapped). UsageError unless OPEN."""
        if self.state is not ClientState.OPEN:
            raise UsageError(f"only an open circuit joins, not a {self.state.name} one")
        self._step(ClientInput.JOIN)
        self._e2e = e2e
        self.max_data = E2E_MESSAGE_SIZE - RELAY_HEADER
        return []

    def join_on(self, command: int, finish: Callable[[bytes], HopCrypto]) -> None:
        """Join as soon as the last hop sends a message with `command` (RENDEZVOUS2):
        `finish(its data)` gives the end-to-end layer, or raises CryptoError (the
        circuit is then destroyed, HANDSHAKE_FAILED). The message is still delivered."""
        if self.state is not ClientState.OPEN:
            raise UsageError(f"only an open circuit joins, not a {self.state.name} one")
        self._join_on = (command, finish)

    def tick(self, now: float) -> list[CircuitEvent]:
        """The adapter's timer: KEEPALIVE to the exit after KEEPALIVE_AFTER without a
        cell either way (hop 1's two layer counters say whether one went). Joined,
        KEEPALIVE goes to the other end, so the whole path sees it."""
        if self.state not in _CARRIES_STREAMS:
            return []
        hop = self._hops[0]
        counted = hop.forward.counter + hop.backward.counter
        if counted != self._seen or self._active_at is None:
            self._seen, self._active_at = counted, now
        elif now - self._active_at >= KEEPALIVE_AFTER:
            self._wrap(RelayCommand.KEEPALIVE, 0, b"")
            self.keepalives_sent += 1
            self._seen, self._active_at = counted + 1, now
        return []

    def destroy(self, reason: DestroyReason = DestroyReason.NONE) -> list[CircuitEvent]:
        if self.state is ClientState.DESTROYED:
            return []
        sent_create = self.state is not ClientState.NEW
        self._step(ClientInput.DESTROY)
        if sent_create:
            self._queue(Destroy(self.circuit_id, reason))
        return [CircuitDestroyed(self.link, self.circuit_id, reason, "closed locally", True)]

    def link_lost(self) -> list[CircuitEvent]:
        if self.state is ClientState.DESTROYED:
            return []
        self._step(ClientInput.DESTROY)
        reason = DestroyReason.LINK_LOST
        return [CircuitDestroyed(self.link, self.circuit_id, reason, "link to hop 1 lost", False)]

    def cell_received(self, cell: Cell) -> list[CircuitEvent]:
        """Handle one decoded cell from hop 1 (the adapter routes by circuit id)."""
        if self.state is ClientState.DESTROYED:
            return []  # late cells after a destroy are dropped quietly
        if isinstance(cell, Destroy):
            self._step(ClientInput.DESTROY)
            reason = destroy_reason(cell.reason)
            detail = f"destroyed by the circuit ({reason.name})"
            return [CircuitDestroyed(self.link, self.circuit_id, reason, detail, False)]
        try:
            return self._handle(cell)
        except CircuitFailure as exc:
            return self._fail(exc.reason, exc.detail)
        except CryptoError as exc:
            return self._fail(DestroyReason.DECRYPT_FAILED, str(exc))
        except DecodeError as exc:
            return self._fail(DestroyReason.PROTOCOL_ERROR, str(exc))

    def _fail(self, reason: DestroyReason, detail: str) -> list[CircuitEvent]:
        self.state = ClientState.DESTROYED
        self._queue(Destroy(self.circuit_id, reason))
        return [CircuitDestroyed(self.link, self.circuit_id, reason, detail, True)]

    def _handle(self, cell: Cell) -> list[CircuitEvent]:
        if isinstance(cell, Created):
            if self.state is not ClientState.CREATING:
                raise CircuitFailure(DestroyReason.PROTOCOL_ERROR, "unexpected CREATED")
            return self._hop_keyed(cell.reply)
        if not isinstance(cell, Relay):
            raise CircuitFailure(DestroyReason.PROTOCOL_ERROR, "unexpected cell")
        if self._e2e is not None:
            return self._joined_message(cell)
        # Layers come off in place, in our own copy of the body: DATA stays a view into it.
        index, plaintext = open_layers(self._hops, memoryview(bytearray(cell.body)))
        message = decode_relay_message(plaintext)
        if message.command == RelayCommand.EXTENDED:
            if self.state is not ClientState.EXTENDING or index != len(self._hops) - 1:
                raise CircuitFailure(DestroyReason.PROTOCOL_ERROR, "unexpected EXTENDED")
            return self._hop_keyed(bytes(message.data))
        if message.command == RelayCommand.EXTEND:
            raise CircuitFailure(DestroyReason.PROTOCOL_ERROR, "EXTEND from a relay")
        self._step(ClientInput.MESSAGE)
        if index != len(self._hops) - 1:
            raise CircuitFailure(DestroyReason.PROTOCOL_ERROR, "stream data from a relay")
        if self._join_on is not None and message.command == self._join_on[0]:
            finish, self._join_on = self._join_on[1], None
            try:
                e2e = finish(bytes(message.data))
            except CryptoError as exc:
                raise CircuitFailure(DestroyReason.HANDSHAKE_FAILED, str(exc)) from None
            self.join(e2e)
        return [
            StreamMessageReceived(
                self.link, self.circuit_id, message.command, message.stream_id, message.data
            )
        ]

    def _joined_message(self, cell: Relay) -> list[CircuitEvent]:
        assert self._e2e is not None
        plaintext = open_joined(self._hops, self._e2e, memoryview(bytearray(cell.body)))
        message = decode_relay_message(plaintext)
        if message.command in (RelayCommand.EXTEND, RelayCommand.EXTENDED):
            raise CircuitFailure(DestroyReason.PROTOCOL_ERROR, "EXTEND(ED) from the other end")
        self._step(ClientInput.MESSAGE)
        if message.command == RelayCommand.KEEPALIVE:
            return []  # the other end's "still here": its cell counted at every hop
        return [
            StreamMessageReceived(
                self.link, self.circuit_id, message.command, message.stream_id, message.data
            )
        ]

    def _hop_keyed(self, reply: bytes) -> list[CircuitEvent]:
        assert self._pending is not None
        try:
            material = ntor_client_finish(self._pending, reply)
        except CryptoError as exc:
            raise CircuitFailure(DestroyReason.HANDSHAKE_FAILED, str(exc)) from None
        self._pending = None
        self._hops.append(HopCrypto(HopKeys.from_material(material)))
        depth = len(self._hops)
        out: list[CircuitEvent] = [HopAdded(self.link, self.circuit_id, depth)]
        if depth == len(self._path):
            self._step(ClientInput.LAST_HOP_KEYED)
            out.append(CircuitBuilt(self.link, self.circuit_id, depth))
            return out
        self._step(ClientInput.HOP_KEYED)
        following = self._path[depth]
        extend = Extend(following.identity, self._onionskin(depth + 1), following.endpoints)
        self._wrap(RelayCommand.EXTEND, 0, encode_extend(extend))
        return out
