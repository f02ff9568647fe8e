"""The stream half of a link, sans-IO: opening, sending with credit, half-close, reset.

`Link` (core/link.py) inherits these operations; they are here to keep each module a
readable size. Theory of operation of credit flow control: see core/streams.py. The
hot path is `send` -> `_send_data`: each DATA frame of one call is put together in the
link's scratch plaintext (one copy) and sealed by one AEAD pass, whatever its size.
"""

from __future__ import annotations

from vx6.core import events as ev
from vx6.core.link_config import LinkConfig
from vx6.core.streams import (
    CAN_RECEIVE,
    CAN_SEND,
    Stream,
    StreamInput,
    StreamState,
    StreamTable,
)
from vx6.errors import CloseCode, LinkError, RemoteProtocolError, StreamError
from vx6.errors import TransitionError as StreamTransitionError
from vx6.wire import frames as fr


class StreamOps:
    """Mixin: the stream API of `Link`. The attributes below are set by `Link`."""

    config: LinkConfig
    streams: StreamTable
    closed: bool
    bytes_out: int
    _events: list[ev.Event]
    _waiting_since: float | None

    def _send_frame(self, frame: fr.ControlFrame) -> None:
        raise NotImplementedError

    def _require_open(self) -> None:
        raise NotImplementedError

    def open_stream(self, service: str, flags: int = 0, now: float | None = None) -> int:
        """Open a stream to `service`; with `now`, an unanswered open makes the link
        probe its peer quickly (see next_deadline)."""
        self._require_open()
        if now is not None and self._waiting_since is None:
            self._waiting_since = now
        if len(self.streams) >= self.streams.max_streams:
            raise LinkError(CloseCode.RESOURCE_LIMIT, "too many streams on this link")
        stream = self.streams.new_local()
        self._send_frame(fr.Open(stream.stream_id, service, flags))
        return stream.stream_id

    def accept_stream(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None or self.closed:
            return
        stream.apply(StreamInput.ACCEPT)
        self._send_frame(fr.OpenOk(sid))
        self._after_transition(sid)
        self._flush_pending(sid)

    def reject_stream(self, sid: int, code: StreamError, reason: str) -> None:
        stream = self.streams.get(sid)
        if stream is None or self.closed:
            return
        stream.apply(StreamInput.REJECT)
        self.streams.drop(sid)
        self._send_frame(fr.OpenFail(sid, code, reason))

    def send(self, sid: int, data: bytes | memoryview) -> bool:
        """Queue application bytes for a stream. Returns False when the caller should
        stop reading its source until `StreamWritable(sid)`; excess bytes are kept."""
        stream = self.streams.get(sid)
        if (
            stream is None
            or self.closed
            or (stream.state not in CAN_SEND and stream.state is not StreamState.ACCEPTING)
            or stream.fin_sent
            or stream.fin_after_pending
        ):
            return False
        if not data:
            return not stream.blocked
        # Bytes from the target may arrive before our application accepted the stream:
        # keep them (bounded by the caller pausing) until accept_stream() flushes them.
        if stream.pending or stream.send_credit <= 0 or stream.state is StreamState.ACCEPTING:
            data = bytes(data)  # the caller may reuse its buffer
            stream.pending.append(data)
            stream.pending_bytes += len(data)
            stream.blocked = True
            return False
        rest = self._send_data(stream, data)
        if rest is not None:
            stream.pending.append(rest)
            stream.pending_bytes += len(rest)
        return not stream.blocked

    def _send_data(self, stream: Stream, data: bytes | memoryview) -> bytes | None:
        """Send as much as credit allows; return what is left over (and mark blocked).
        The carrier (link or circuit) frames and encrypts."""
        raise NotImplementedError

    def _flush_pending(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        while stream.pending and stream.send_credit > 0:
            chunk = stream.pending.popleft()
            stream.pending_bytes -= len(chunk)
            rest = self._send_data(stream, chunk)
            if rest is not None:
                stream.pending.appendleft(rest)
                stream.pending_bytes += len(rest)
                return
        if stream.pending:
            return
        if stream.fin_after_pending:
            stream.fin_after_pending = False
            self._send_fin(sid)
            return
        if stream.send_credit > 0 and stream.blocked:
            stream.blocked = False
            self._events.append(ev.StreamWritable(sid))

    def consumed(self, sid: int, n: int) -> None:
        """The local application took n bytes of this stream: return credit in batches."""
        stream = self.streams.get(sid)
        if stream is None or self.closed:
            return
        stream.unacked_consumed += n
        if stream.unacked_consumed >= self.config.window // 4:
            inc, stream.unacked_consumed = stream.unacked_consumed, 0
            stream.recv_allowance += inc
            self._send_frame(fr.Credit(sid, inc))

    def finish(self, sid: int) -> None:
        """Half-close our direction once every queued byte has gone out."""
        stream = self.streams.get(sid)
        if stream is None or self.closed or stream.fin_sent or stream.fin_after_pending:
            return
        if stream.pending:
            stream.fin_after_pending = True
            return
        self._send_fin(sid)

    def _send_fin(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        stream.apply(StreamInput.FIN_SENT)
        self._send_frame(fr.Fin(sid))
        self._after_transition(sid)

    def reset(self, sid: int, code: StreamError = StreamError.CANCELLED) -> None:
        stream = self.streams.get(sid)
        if stream is None or self.closed:
            return
        stream.apply(StreamInput.RESET)
        self.streams.drop(sid)
        self._send_frame(fr.Reset(sid, code))

    # ------------------------------------------------------------------ peer's frames
    def _on_stream_data(self, sid: int, payload: bytes | memoryview) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            if self.streams.is_stale_id(sid):
                return  # crossed our RESET; the peer will learn soon enough
            raise RemoteProtocolError(CloseCode.PROTOCOL_ERROR, f"DATA for unknown stream {sid}")
        if stream.state not in CAN_RECEIVE or stream.fin_received:
            raise RemoteProtocolError(CloseCode.PROTOCOL_ERROR, f"DATA on stream {sid} after FIN")
        stream.recv_allowance -= len(payload)
        if stream.recv_allowance < 0:
            raise RemoteProtocolError(CloseCode.FLOW_CONTROL, f"stream {sid} exceeded its credit")
        if payload:
            self._events.append(ev.StreamDataReceived(sid, payload))

    def _on_stream_frame(self, frame: fr.ControlFrame) -> None:
        """OPEN, OPEN_OK, OPEN_FAIL, CREDIT, FIN, RESET from the peer. Anything the peer
        does wrong raises RemoteProtocolError; the carrier closes itself (link or circuit)."""
        try:
            self._apply_stream_frame(frame)
        except StreamTransitionError as exc:
            raise RemoteProtocolError(CloseCode.PROTOCOL_ERROR, str(exc)) from exc

    def _apply_stream_frame(self, frame: fr.ControlFrame) -> None:
        match frame:
            case fr.Open(sid, service, flags):
                if not self.streams.is_new_peer_id(sid):
                    raise RemoteProtocolError(
                        CloseCode.PROTOCOL_ERROR, f"OPEN with bad stream id {sid}"
                    )
                if len(self.streams) >= self.streams.max_streams:
                    self.streams.new_remote(sid).state = StreamState.CLOSED
                    self.streams.drop(sid)
                    self._send_frame(fr.OpenFail(sid, StreamError.RESOURCE_LIMIT, "too many"))
                    return
                self.streams.new_remote(sid)
                self._events.append(ev.StreamOpenRequested(sid, service, flags))
            case fr.OpenOk(sid):
                if (s := self._known(sid)) is not None:
                    s.apply(StreamInput.OPEN_OK)
                    self._events.append(ev.StreamOpened(sid))
                    self._after_transition(sid)
            case fr.OpenFail(sid, code, reason):
                if (s := self._known(sid)) is not None:
                    s.apply(StreamInput.OPEN_FAIL)
                    self.streams.drop(sid)
                    self._events.append(ev.StreamOpenFailed(sid, code, reason))
            case fr.Credit(sid, inc):
                if (s := self._known(sid)) is not None:
                    s.send_credit += inc
                    if s.send_credit > fr.MAX_STREAM_CREDIT:
                        raise RemoteProtocolError(
                            CloseCode.FLOW_CONTROL, "credit beyond any window"
                        )
                    self._flush_pending(sid)
            case fr.Fin(sid):
                if (s := self._known(sid)) is not None:
                    s.apply(StreamInput.FIN_RECEIVED)
                    self._events.append(ev.StreamEnded(sid))
                    self._after_transition(sid)
            case fr.Reset(sid, code):
                if (s := self._known(sid)) is not None:
                    s.apply(StreamInput.RESET)
                    self.streams.drop(sid)
                    self._events.append(ev.StreamReset(sid, code))
            case _:
                raise RemoteProtocolError(
                    CloseCode.PROTOCOL_ERROR, f"{type(frame).__name__} is not a stream frame"
                )

    def _known(self, sid: int) -> Stream | None:
        stream = self.streams.get(sid)
        if stream is None and not self.streams.is_stale_id(sid):
            raise RemoteProtocolError(CloseCode.PROTOCOL_ERROR, f"frame for unknown stream {sid}")
        return stream

    def _after_transition(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None and stream.state is StreamState.CLOSED:
            self.streams.drop(sid)
            self._events.append(ev.StreamClosed(sid))
