"""The stream half of a link, sans-IO: opening, sending with credit, half-close, reset.

`Link` (core/link.py) inherits these operations; they are here to keep each module a
readable size. Theory of operation of credit flow control: see core/streams.py. The
hot path is `send` -> `_send_data`: every DATA frame of one call is encrypted straight
into one output buffer (2-byte length, then ciphertext), so a chunk costs one copy into
the scratch plaintext and one AEAD pass, whatever its size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vx6.core import events as ev
from vx6.core.handshake import HandshakeResult
from vx6.core.streams import CAN_SEND, Stream, StreamInput, StreamState, StreamTable
from vx6.errors import CloseCode, LinkError, StreamError
from vx6.wire import frames as fr

if TYPE_CHECKING:
    from vx6.core.link import LinkConfig


class StreamOps:
    """Mixin: the stream API of `Link`. The attributes below are set by `Link`."""

    config: LinkConfig
    streams: StreamTable
    closed: bool
    bytes_out: int
    _keys: HandshakeResult | None
    _out: list[bytes]
    _events: list[ev.Event]
    _scratch: bytearray
    _scratch_view: memoryview
    _waiting_since: float | None

    def _send_frame(self, frame: fr.ControlFrame) -> None:
        raise NotImplementedError

    def _require_open(self) -> None:
        raise NotImplementedError

    def _after_transition(self, sid: int) -> None:
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

        The hot path: every frame of this call is encrypted straight into one output
        buffer (length prefix, then ciphertext), so a chunk costs one copy into the
        scratch plaintext and one AEAD pass, whatever its size."""
        assert self._keys is not None
        total = len(data)
        count = min(total, stream.send_credit)
        if count <= 0:
            stream.blocked = True
            return bytes(data)
        frames = -(-count // fr.MAX_DATA_PAYLOAD)
        overhead = 2 + fr.DATA_HEADER + fr.AEAD_TAG
        out = bytearray(count + frames * overhead)
        out_view = memoryview(out)
        scratch = self._scratch
        scratch[: fr.DATA_HEADER] = fr.data_header(stream.stream_id)
        view = memoryview(data)
        encrypt_into = self._keys.send.encrypt_into
        pos = offset = 0
        while pos < count:
            n = min(count - pos, fr.MAX_DATA_PAYLOAD)
            plain_len = fr.DATA_HEADER + n
            scratch[fr.DATA_HEADER : plain_len] = view[pos : pos + n]
            sealed = plain_len + fr.AEAD_TAG
            out[offset] = sealed >> 8
            out[offset + 1] = sealed & 0xFF
            encrypt_into(self._scratch_view[:plain_len], out_view[offset + 2 : offset + 2 + sealed])
            offset += 2 + sealed
            pos += n
        out_view.release()
        self._out.append(out)  # type: ignore[arg-type]
        self.bytes_out += len(out)
        stream.send_credit -= count
        if stream.send_credit <= 0:
            stream.blocked = True
        return bytes(view[count:]) if count < total else None

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
