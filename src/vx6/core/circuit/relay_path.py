"""The relay data path, sans-IO: RELAY cells through a relay or into the exit.

`RelayCore` (core/circuit/relay.py) inherits these operations; they are here to keep
each module a readable size. Theory of operation:

* The adapter hands over the cells of one link frame at a time (`relay_chunk`); the
  loop reads each cell's header in place and stops at the first cell that is not a
  RELAY cell of a circuit this core holds, for the adapter to decode. No Python object
  is made per cell but the cell buffer (DESIGN: no per-cell Python objects).
* From prev, a cell loses this hop's layer, decrypted straight into the place the cell
  takes on the next link (`CellOutbox.buffer`: in place in that link's frame buffer
  while it takes cells, else a fresh buffer); the layer's flag lands on the header's
  last byte, which the header then overwrites. A cell whose layer says "for you" is a
  relay message for this hop: EXTEND, or a stream message (how the exit gets data).
* From next, a cell gains this hop's layer and goes to prev. A message this hop
  originates (EXTENDED, the exit's stream messages) is wrapped the same way.
* A joined circuit (relay_join.py) has no next: a cell from its prev whose layer says
  "pass on" loses this hop's layer straight into the backward cell of the partner
  circuit, which gains the partner's layer where it lies and goes to the partner's prev
  (`_pass_joined`); a layer that says "for you" is refused (PROTOCOL_ERROR).
* A cell that fails (bad tag, a step the state table refuses, a malformed message)
  destroys its circuit and only its circuit.
"""

from __future__ import annotations

from vx6.core.circuit.events import (
    CircuitEvent,
    ExtendRequested,
    StreamMessageReceived,
)
from vx6.core.circuit.outbox import CellOutbox
from vx6.core.circuit.relay_circuit import CircuitKey, RelayedCircuit, RelayInput
from vx6.crypto.onion import (
    MAX_DEPTH,
    peel_into,
    peel_joined_into,
    relay_plaintext_size,
    reseal_joined,
    seal_layer,
)
from vx6.errors import CircuitFailure, CryptoError, DecodeError, DestroyReason
from vx6.wire.cells import (
    CELL_HEADER,
    CELL_SIZE,
    CellCommand,
    RelayCommand,
    RelayMessage,
    cell_header,
    decode_extend,
    decode_relay_message,
    write_relay_message,
)


class RelayPath:
    """Mixin: the data path of `RelayCore`. The attributes below are set by `RelayCore`."""

    relay: bool
    out: CellOutbox
    _by_key: dict[CircuitKey, RelayedCircuit]
    _pending: dict[int, RelayedCircuit]

    def _failed(self, circuit: RelayedCircuit, exc: Exception) -> list[CircuitEvent]:
        raise NotImplementedError

    def _stray(self, key: CircuitKey) -> list[CircuitEvent]:
        raise NotImplementedError

    def relay_chunk(
        self, link: int, chunk: memoryview, start: int = 0
    ) -> tuple[list[CircuitEvent], int]:
        """The data path: the cells of one link frame (`chunk`, whole cells) from
        `start` on, handled in order while they are RELAY cells of circuits this core
        holds. Returns the events and the offset of the first cell it did not take
        (len(chunk) when it took them all): the adapter decodes that one (a control
        cell, a circuit it built as a client, a late or hostile cell) and calls again
        after it."""
        events: list[CircuitEvent] = []
        by_key = self._by_key
        end = len(chunk)
        pos = start
        while pos < end:
            circuit_id, command = cell_header(chunk, pos)
            key = (link, circuit_id)
            circuit = by_key.get(key)
            if circuit is None or command != CellCommand.RELAY:
                break
            body = chunk[pos + CELL_HEADER : pos + CELL_SIZE]
            pos += CELL_SIZE
            self._relay(circuit, circuit.prev == key, body, events)
        return events, pos

    def relay_received(
        self, link: int, circuit_id: int, body: bytes | memoryview
    ) -> list[CircuitEvent]:
        """One RELAY cell's body from `link` (`cell_received` ends here)."""
        key = (link, circuit_id)
        circuit = self._by_key.get(key)
        if circuit is None:
            return self._stray(key)  # late, or for a circuit that never was: counted
        events: list[CircuitEvent] = []
        self._relay(circuit, key == circuit.prev, body, events)
        return events

    def _relay(
        self,
        circuit: RelayedCircuit,
        from_prev: bool,
        body: bytes | memoryview,
        events: list[CircuitEvent],
    ) -> None:
        try:
            if from_prev:
                event = self._forward(circuit, body)
                if event is not None:
                    events.append(event)
            else:
                circuit.step(RelayInput.BACKWARD)
                self._wrap_backward(circuit, body)
        except (CircuitFailure, CryptoError, DecodeError) as exc:
            events += self._failed(circuit, exc)

    def _forward(self, circuit: RelayedCircuit, body: bytes | memoryview) -> CircuitEvent | None:
        # The layer is decrypted straight into the cell that goes on: its flag lands on
        # the header's last byte, which the header then overwrites.
        partner = circuit.partner
        if partner is not None:
            self._pass_joined(circuit, partner, body)
            return None
        next_key = circuit.next
        cell, writer = self.out.buffer(None if next_key is None else next_key[0])
        if not peel_into(circuit.crypto, memoryview(body), circuit.depth, cell[CELL_HEADER - 1 :]):
            circuit.step(RelayInput.FORWARD)  # refused unless extended: next_key is set
            assert next_key is not None
            cell[:CELL_HEADER] = circuit.next_header
            self.out.done(next_key[0], cell, writer)
            return None
        if writer is not None:  # for this hop after all: out of the link's frame buffer
            cell = memoryview(bytearray(cell))
        size = relay_plaintext_size(circuit.depth)
        message = decode_relay_message(cell[CELL_HEADER : CELL_HEADER + size])
        if message.command == RelayCommand.EXTEND:
            return self._extend(circuit, message)
        if message.command == RelayCommand.EXTENDED:
            raise CircuitFailure(DestroyReason.PROTOCOL_ERROR, "EXTENDED from the client")
        circuit.step(RelayInput.FOR_US)
        if message.command == RelayCommand.KEEPALIVE:
            return None  # its cell counted as activity at every hop; nothing to deliver
        prev_link, prev_id = circuit.prev
        return StreamMessageReceived(
            prev_link, prev_id, message.command, message.stream_id, message.data
        )

    def _pass_joined(
        self, circuit: RelayedCircuit, partner: RelayedCircuit, body: bytes | memoryview
    ) -> None:
        # The peeled layer's flag and pass-on bytes land where the partner's backward
        # layer wants them (its flag at body[0]), so the cell is decrypted and re-sealed
        # where it lies, in the place it takes on the partner's prev link.
        link = partner.prev[0]
        cell, writer = self.out.buffer(link)
        out = cell[CELL_HEADER:]
        if peel_joined_into(circuit.crypto, memoryview(body), circuit.depth, out):
            detail = "a message for the rendezvous point after the join"
            raise CircuitFailure(DestroyReason.PROTOCOL_ERROR, detail)
        circuit.step(RelayInput.FORWARD)
        reseal_joined(partner.crypto, out, partner.depth)
        cell[:CELL_HEADER] = partner.prev_header
        self.out.done(link, cell, writer)

    def _extend(self, circuit: RelayedCircuit, message: RelayMessage) -> CircuitEvent:
        if circuit.depth >= MAX_DEPTH:
            raise CircuitFailure(DestroyReason.HOP_LIMIT, f"EXTEND at depth {circuit.depth}")
        if not self.relay:
            raise CircuitFailure(DestroyReason.NOT_A_RELAY, "EXTEND, but this node is no relay")
        extend = decode_extend(bytes(message.data))
        circuit.step(RelayInput.EXTEND)
        circuit.onionskin = extend.onionskin
        self._pending[circuit.serial] = circuit
        return ExtendRequested(circuit.serial, extend.identity, extend.endpoints)

    def _originate(self, circuit: RelayedCircuit, message: RelayMessage) -> None:
        link = circuit.prev[0]
        cell, writer = self.out.buffer(link)
        body = cell[CELL_HEADER:]
        size = relay_plaintext_size(circuit.depth)
        write_relay_message(body[1 : 1 + size], message.command, message.stream_id, message.data)
        seal_layer(circuit.crypto, body, circuit.depth, originated=True)
        cell[:CELL_HEADER] = circuit.prev_header
        self.out.done(link, cell, writer)

    def _wrap_backward(self, circuit: RelayedCircuit, received: bytes | memoryview) -> None:
        link = circuit.prev[0]
        cell, writer = self.out.buffer(link)
        body = cell[CELL_HEADER:]
        size = relay_plaintext_size(circuit.depth)
        body[1 : 1 + size] = memoryview(received)[:size]
        seal_layer(circuit.crypto, body, circuit.depth, originated=False)
        cell[:CELL_HEADER] = circuit.prev_header
        self.out.done(link, cell, writer)
