"""asyncio side of the two ends of a circuit that carry streams.

Theory of operation. A `CircuitCarrier` joins one sans-IO stream session
(`core.circuit.session.CircuitStreams`) to the sinks of its streams (forwarded
connections, or connections to the owner's target) and implements the same
`StreamCarrier` interface as a link, so `StreamPipe` and the owner side do not care which
path they run over. After every call into the session it drains the relay messages the
session produced into the circuit (`_transmit`), hands the resulting cell events to the
node's router (`submit`), and dispatches the stream events.

* `ClientPath` is the client's end: a `ClientCircuit` it built through N relays to the
  owner. Once built it proves the client's identity to the exit (AUTH) before any stream
  message, so the exit can apply the service's allow-list; the relays see only
  ciphertext.
  Circuits to an introduction or rendezvous point are built without AUTH (the relay
  must not learn who the client is) and hand the hidden-service commands that come back
  on stream 0 to `on_control`. After a rendezvous both ends' circuits are *joined*
  (`join`): the end-to-end layer is the last hop, and the service's end accepts the
  streams the client opens (`accepts_streams`).
* `ExitCircuit` is the owner's end of one circuit, kept by the router beside its
  `RelayCore`, which holds the circuit's crypto. Its `peer_identity` is the client key
  proven by AUTH, or None for an anonymous client (public services only).

A circuit that goes away (DESTROY, a lost link, a broken session) resets every stream on
it with CIRCUIT_LOST, so the local application sees an error, not a clean end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from vx6.core import events as ev
from vx6.core.circuit.client import ClientCircuit, ClientState
from vx6.core.circuit.events import CircuitEvent
from vx6.core.circuit.relay import RelayCore
from vx6.core.circuit.session import CircuitStreams
from vx6.crypto.keys import Identity, check_circuit_auth_proof, circuit_auth_proof, fingerprint
from vx6.crypto.onion import HopCrypto
from vx6.errors import CloseCode, DecodeError, DestroyReason, LinkError, StreamError
from vx6.net.carrier import StreamSink, dispatch_stream_event
from vx6.net.link import LinkProtocol
from vx6.net.ratelog import RATELOG
from vx6.wire.cells import (
    RelayCommand,
    RelayMessage,
    RelayMessageFields,
    decode_auth,
    encode_auth,
)

log = logging.getLogger("vx6.circuit")

Submit = Callable[[list[CircuitEvent]], None]
# A hidden-service command on stream 0 of a circuit this node built: (command, data).
ControlHandler = Callable[[int, bytes], None]

# The relay commands of hidden services (docs/hidden.md section 4): never stream messages.
HIDDEN_COMMANDS = frozenset(range(RelayCommand.ESTABLISH_INTRO, RelayCommand.DHT_FETCHED + 1))


class CircuitCarrier:
    def __init__(
        self, session: CircuitStreams, link: LinkProtocol, circuit_id: int, submit: Submit
    ) -> None:
        self.session = session
        self.link = link
        self.circuit_id = circuit_id
        self.sinks: dict[int, StreamSink] = {}
        self.closed = False
        self.close_reason = ""
        self.congested = False  # set by the router while cells for this link queue up
        self.streams_total = 0
        self.clock: Callable[[], float] = time.monotonic  # the node's, for a ClientPath
        self.first_stream_at: float | None = None  # self.clock() at the first stream
        self._submit = submit

    # ------------------------------------------------------------------ subclass hooks
    def _transmit(self, message: RelayMessage) -> list[CircuitEvent]:
        raise NotImplementedError

    def _destroy(self, reason: DestroyReason) -> None:
        raise NotImplementedError

    @property
    def peer_identity(self) -> bytes | None:
        raise NotImplementedError

    # ------------------------------------------------------------------ plumbing
    @property
    def paused(self) -> bool:
        return self.congested or self.link.paused

    @property
    def is_open(self) -> bool:
        return not self.closed

    def _pump(self) -> None:
        messages = self.session.messages()
        if messages:
            out: list[CircuitEvent] = []
            for message in messages:
                out += self._transmit(message)
            self._submit(out)  # also when `out` is empty: the relay core's cells go out
        for event in _coalesce(self.session.events()):
            if not dispatch_stream_event(self.sinks, event) and isinstance(
                event, ev.StreamOpenRequested
            ):
                self._stream_requested(event.stream_id, event.service, event.flags)
        if self.session.failed is not None and not self.closed:
            RATELOG.warning(
                log,
                "circuit-failed",
                "circuit %d: %s; destroying it",
                self.circuit_id,
                self.session.failed,
            )
            self._destroy(DestroyReason.PROTOCOL_ERROR)

    def _stream_requested(self, sid: int, service: str, flags: int) -> None:
        self.session.reject_stream(sid, StreamError.PROTOCOL_ERROR, "streams go the other way")

    def messages_received(self, messages: Sequence[RelayMessageFields]) -> None:
        """A batch of relay messages for this circuit, in order; one pump after them."""
        for message in messages:
            if self.closed:
                return
            self._message(message)
        self._pump()

    def _message(self, message: RelayMessageFields) -> None:
        self.session.message_received(message)

    def set_congested(self, congested: bool) -> None:
        if congested == self.congested:
            return
        self.congested = congested
        paused = self.paused
        for sink in list(self.sinks.values()):
            sink.on_link_paused(paused)

    def circuit_closed(self, reason: str) -> None:
        """The circuit is gone (DESTROY, lost link, local close): fail its streams."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.session.fail(reason)
        sinks, self.sinks = self.sinks, {}
        for sink in sinks.values():
            sink.on_reset(StreamError.CIRCUIT_LOST)

    # ------------------------------------------------------------------ StreamCarrier
    @property
    def send_quantum(self) -> int:
        return self.session.max_data

    @property
    def active_streams(self) -> int:
        return len(self.session.streams)

    def open_stream(self, service: str, flags: int, sink: StreamSink) -> int:
        if self.closed:
            raise LinkError(CloseCode.NORMAL, "circuit is closed")
        sid = self.session.open_stream(service, flags)
        self.sinks[sid] = sink
        self.streams_total += 1
        if self.first_stream_at is None:
            self.first_stream_at = self.clock()
        self._pump()
        return sid

    def attach(self, sid: int, sink: StreamSink) -> None:
        self.sinks[sid] = sink

    def accept_stream(self, sid: int) -> None:
        self.session.accept_stream(sid)
        self._pump()

    def reject_stream(self, sid: int, code: StreamError, reason: str) -> None:
        self.sinks.pop(sid, None)
        self.session.reject_stream(sid, code, reason)
        self._pump()

    def send(self, sid: int, data: bytes | memoryview) -> bool:
        more = self.session.send(sid, data)
        self._pump()
        return more and not self.paused

    def consumed(self, sid: int, n: int) -> None:
        self.session.consumed(sid, n)
        self._pump()

    def finish(self, sid: int) -> None:
        self.session.finish(sid)
        self._pump()

    def reset(self, sid: int, code: StreamError = StreamError.CANCELLED) -> None:
        self.sinks.pop(sid, None)
        self.session.reset(sid, code)
        self._pump()


class ClientPath(CircuitCarrier):
    """The client's circuit to one owner through `hops - 1` relays."""

    def __init__(
        self,
        core: ClientCircuit,
        link: LinkProtocol,
        submit: Submit,
        *,
        owner: bytes,
        relays: tuple[bytes, ...],
        identity: Identity,
        clock: Callable[[], float] | None = None,
        authenticate: bool = True,
        on_control: ControlHandler | None = None,
        accepts_streams: Callable[[ClientPath, int, str, int], None] | None = None,
    ) -> None:
        """`authenticate`: send AUTH (the client's identity) to the last hop once built;
        never to an intro or rendezvous point. `on_control`: where hidden-service
        commands on stream 0 go. `accepts_streams`: this end answers streams (the
        service's end of a rendezvous) and hands each request there."""
        initiator = accepts_streams is None
        super().__init__(
            CircuitStreams(initiator=initiator, max_data=core.max_data),
            link,
            core.circuit_id,
            submit,
        )
        if clock is not None:
            self.clock = clock
        self.core = core
        self.owner = owner
        self.relays = relays
        self._identity = identity
        self._authenticate = authenticate
        self._on_control = on_control
        self._accepts_streams = accepts_streams
        self.peer: bytes | None = None  # the service's end: the client key it proved, if any
        self.on_closed: Callable[[str], None] | None = None  # a role's interest in the end
        self.built: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started = asyncio.get_running_loop().time()
        self.build_seconds: float | None = None

    @property
    def peer_identity(self) -> bytes | None:
        return self.owner if self._accepts_streams is None else self.peer

    @property
    def is_open(self) -> bool:
        return not self.closed and self.core.state in (ClientState.OPEN, ClientState.JOINED)

    def _message(self, message: RelayMessageFields) -> None:
        if message.command in HIDDEN_COMMANDS:
            if self._on_control is None:
                self.session.fail(f"relay command {message.command} on a plain circuit")
            else:
                # RENDEZVOUS2 may have joined the circuit as it arrived (join_on).
                self.session.max_data = self.core.max_data
                self._on_control(message.command, bytes(message.data))
        else:
            self.session.message_received(message)

    def _stream_requested(self, sid: int, service: str, flags: int) -> None:
        if self._accepts_streams is None:
            super()._stream_requested(sid, service, flags)
            return
        self.streams_total += 1
        self._accepts_streams(self, sid, service, flags)

    def send_control(self, command: int, data: bytes) -> None:
        """A hidden-service command to the last hop (stream 0)."""
        if self.closed or self.core.state is not ClientState.OPEN:
            return
        self._submit(self.core.send(command, 0, data))

    def join(self, e2e: HopCrypto) -> None:
        """The rendezvous joined this circuit to the other end's: from now on the
        end-to-end layer is the last hop, and stream data is cut to what it carries."""
        self._submit(self.core.join(e2e))
        self.session.max_data = self.core.max_data
        self._pump()

    def _transmit(self, message: RelayMessage) -> list[CircuitEvent]:
        if self.core.state not in (ClientState.OPEN, ClientState.JOINED):
            return []
        return self.core.send(message.command, message.stream_id, message.data)

    def _destroy(self, reason: DestroyReason) -> None:
        self._submit(self.core.destroy(reason))

    def circuit_built(self) -> None:
        """Every hop is keyed: authenticate to the exit, then streams may flow."""
        if self._authenticate:
            binding = self.core.exit_binding
            proof = circuit_auth_proof(self._identity, self.owner, binding)
            auth = encode_auth(self._identity.public, proof)
            self._submit(self.core.send(RelayCommand.AUTH, 0, auth))
        self.build_seconds = asyncio.get_running_loop().time() - self.started
        if not self.built.done():
            self.built.set_result(None)
        self._pump()

    def circuit_closed(self, reason: str) -> None:
        was_closed = self.closed
        super().circuit_closed(reason)
        if not was_closed and self.on_closed is not None:
            self.on_closed(reason)
        if not self.built.done():
            self.built.set_exception(LinkError(CloseCode.NORMAL, reason))
            self.built.exception()  # retrieved: the builder may have gone away

    def close(self, reason: DestroyReason = DestroyReason.NONE) -> None:
        self._destroy(reason)

    def describe(self) -> dict[str, object]:
        state = "open" if self.is_open else ("closed" if self.closed else "building")
        return {
            "id": self.circuit_id,
            "state": state,
            "hops": len(self.relays),
            "relays": [fingerprint(r) for r in self.relays],
            "streams": self.active_streams,
            "streams_total": self.streams_total,
            "build_ms": None if self.build_seconds is None else round(self.build_seconds * 1e3, 1),
            **({"error": self.close_reason} if self.closed else {}),
        }


class ExitCircuit(CircuitCarrier):
    """The owner's end of one circuit; the crypto lives in the shared RelayCore."""

    def __init__(
        self,
        relay: RelayCore,
        link: LinkProtocol,
        link_id: int,
        circuit_id: int,
        submit: Submit,
        *,
        own_identity: bytes,
        max_data: int,
        on_stream: Callable[[ExitCircuit, int, str, int], None],
    ) -> None:
        super().__init__(
            CircuitStreams(initiator=False, max_data=max_data), link, circuit_id, submit
        )
        self._relay = relay
        self._link_id = link_id
        self._own_identity = own_identity
        self._on_stream = on_stream
        self._client: bytes | None = None
        self._authenticated = False

    @property
    def peer_identity(self) -> bytes | None:
        return self._client

    def _transmit(self, message: RelayMessage) -> list[CircuitEvent]:
        return self._relay.send(
            self._link_id,
            self.circuit_id,
            message.command,
            message.stream_id,
            message.data,
        )

    def _destroy(self, reason: DestroyReason) -> None:
        self._submit(self._relay.destroy(self._link_id, self.circuit_id, reason))

    def _stream_requested(self, sid: int, service: str, flags: int) -> None:
        self.streams_total += 1
        self._on_stream(self, sid, service, flags)

    def _message(self, message: RelayMessageFields) -> None:
        if message.command == RelayCommand.AUTH:
            self._authenticate(bytes(message.data))
        else:
            self.session.message_received(message)

    def _authenticate(self, data: bytes) -> None:
        """AUTH: once, before any stream, with a proof over this circuit's binding."""
        binding = self._relay.binding(self._link_id, self.circuit_id)
        reason = None
        if self._authenticated or self.streams_total:
            reason = "a second AUTH, or AUTH after streams began"
        elif binding is None:
            reason = "AUTH on a circuit that does not end here"
        else:
            try:
                client, proof = decode_auth(data)
            except DecodeError as exc:
                reason = str(exc)
            else:
                if check_circuit_auth_proof(client, self._own_identity, binding, proof):
                    self._client = client
                else:
                    reason = "AUTH proof does not verify"
        self._authenticated = True
        if reason is not None:
            RATELOG.warning(
                log,
                "circuit-auth-refused",
                "circuit %d: %s; destroying it",
                self.circuit_id,
                reason,
            )
            self._destroy(DestroyReason.PROTOCOL_ERROR)


def _coalesce(events: list[ev.Event]) -> list[ev.Event]:
    """Join runs of data for one stream (one cell each) into one event, so the local
    socket gets one write per batch of cells instead of one per cell."""
    out: list[ev.Event] = []
    parts: list[bytes | memoryview] = []  # the data of out[-1] while a run grows
    for event in events:
        last = out[-1] if out else None
        if (
            isinstance(event, ev.StreamDataReceived)
            and isinstance(last, ev.StreamDataReceived)
            and last.stream_id == event.stream_id
        ):
            if not parts:
                parts = [last.data]
            parts.append(event.data)
            continue
        _join_run(out, parts)
        parts = []
        out.append(event)
    _join_run(out, parts)
    return out


def _join_run(out: list[ev.Event], parts: list[bytes | memoryview]) -> None:
    if parts:
        last = out[-1]
        assert isinstance(last, ev.StreamDataReceived)
        out[-1] = ev.StreamDataReceived(last.stream_id, b"".join(parts))
