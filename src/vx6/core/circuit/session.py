"""Streams over one circuit, sans-IO: the stream half of a circuit's two ends.

Theory of operation. A circuit carries streams exactly as a link does: the same stream
table, credit flow control, 0-RTT data and half-close (`core/link_streams.py`), so the
port forwarding above it is written once. Only the carrier differs: each stream frame
becomes one relay message (`wire.relay_streams.stream_message`), and DATA is cut to the largest
payload one cell carries to the other end. The client opens streams (odd ids); the exit
answers them. A circuit has no handshake in which to announce a window, so both ends use
`CIRCUIT_WINDOW`; with at most `CIRCUIT_MAX_STREAMS` streams that bounds the bytes in
flight on a circuit, and so what any relay on it may have to queue.

The adapter feeds relay messages for streams to `message_received`, sends whatever
`messages()` returns through its circuit (ClientCircuit.send or RelayCore.send), and
dispatches `events()` (the link's stream events). A peer that breaks the stream rules
(data beyond credit, frames for unknown streams, malformed messages) ends the whole
circuit, not the node: `failed` holds the reason and the adapter destroys the circuit.

Client authentication rides on the same circuit: the client's first message is AUTH,
its identity key and a signature over the circuit binding it shares with the exit
(`crypto.keys.circuit_auth_proof`); relays see only ciphertext. Without AUTH the exit
treats the client as anonymous, which only public services accept.
"""

from __future__ import annotations

from vx6.core import events as ev
from vx6.core.link_config import LinkConfig
from vx6.core.link_streams import StreamOps
from vx6.core.streams import Stream, StreamTable
from vx6.errors import CloseCode, LinkError, RemoteProtocolError
from vx6.wire import frames as fr
from vx6.wire.cells import RelayCommand, RelayMessage, RelayMessageFields
from vx6.wire.relay_streams import is_stream_control, stream_frame, stream_message

# The window decides how much data is in flight on a circuit of up to seven processes,
# and so how many cells each of them handles per wake-up: 5 relays on loopback moved
# about 110 MB/s with 1 MiB and 155 MB/s with 4 MiB (docs/benchmarks.md). Eight streams
# of 4 MiB keep what a relay may have to queue for one circuit under its
# `RelayLimits.max_circuit_buffer` (tests/unit/test_circuit_session.py checks the sum).
CIRCUIT_WINDOW = 4 * 1024 * 1024
CIRCUIT_MAX_STREAMS = 8


class CircuitStreams(StreamOps):
    def __init__(
        self,
        *,
        initiator: bool,
        max_data: int,
        window: int = CIRCUIT_WINDOW,
        max_streams: int = CIRCUIT_MAX_STREAMS,
    ) -> None:
        self.config = LinkConfig(window=window, max_streams=max_streams)
        self.streams = StreamTable(
            odd_ids=initiator, window=window, max_streams=max_streams, initial_credit=window
        )
        self.max_data = max_data
        self.closed = False
        self.failed: str | None = None
        self.bytes_out = 0
        self._waiting_since: float | None = None
        self._events: list[ev.Event] = []
        self._messages: list[RelayMessage] = []

    # ------------------------------------------------------------------ output
    def messages(self) -> list[RelayMessage]:
        out, self._messages = self._messages, []
        return out

    def events(self) -> list[ev.Event]:
        out, self._events = self._events, []
        return out

    # ------------------------------------------------------------------ input
    def message_received(self, message: RelayMessageFields) -> None:
        """One relay message for a stream (DATA or a stream control command)."""
        if self.closed:
            return
        try:
            if message.command == RelayCommand.DATA:
                if message.stream_id == 0:
                    raise RemoteProtocolError(CloseCode.PROTOCOL_ERROR, "DATA on stream 0")
                self._on_stream_data(message.stream_id, message.data)
            elif is_stream_control(message.command):
                self._on_stream_frame(stream_frame(message))
            else:
                raise RemoteProtocolError(
                    CloseCode.PROTOCOL_ERROR, f"relay command {message.command} on a stream"
                )
        except RemoteProtocolError as exc:  # DecodeError included: its reason is its text
            self.fail(exc.reason)

    def fail(self, reason: str) -> None:
        """The circuit is going away: nothing more is sent or accepted."""
        if not self.closed:
            self.closed = True
            self.failed = reason

    # ------------------------------------------------------------------ StreamOps hooks
    def _send_frame(self, frame: fr.ControlFrame) -> None:
        self._messages.append(stream_message(frame))

    def _require_open(self) -> None:
        if self.closed:
            raise LinkError(CloseCode.PROTOCOL_ERROR, "circuit is closed")

    def _send_data(self, stream: Stream, data: bytes | memoryview) -> bytes | None:
        total = len(data)
        count = min(total, stream.send_credit)
        if count <= 0:
            stream.blocked = True
            return bytes(data)
        view = memoryview(data)
        sid, step = stream.stream_id, self.max_data
        for pos in range(0, count, step):
            # A view, not a copy: the carrier drains `messages()` into cells before the
            # call that handed us `data` returns (see CircuitCarrier._pump).
            chunk = view[pos : min(pos + step, count)]
            self._messages.append(RelayMessage(RelayCommand.DATA, sid, chunk))
        self.bytes_out += count
        stream.send_credit -= count
        if stream.send_credit <= 0:
            stream.blocked = True
        return bytes(view[count:]) if count < total else None
