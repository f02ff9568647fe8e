"""One node-to-node link, sans-IO: handshake, framing, streams, keepalive, close.

Theory of operation. The caller feeds every byte read from the TCP connection to
`receive(data, now)`, writes out whatever `data_to_send()` returns, handles what
`events()` returns, and calls `handle_timer(now)` at `next_deadline()`. Nothing here
touches a socket or a clock. On the wire every Noise message is a 2-byte big-endian
length then the message; after the handshake every message decrypts to one frame
(wire/frames.py).

Failure policy: anything the peer does wrong (bad frame, broken AEAD tag, data beyond
credit, a frame for a stream that never existed) raises RemoteProtocolError inside, which closes
the whole link with a CLOSE frame carrying the code, and one `LinkClosed` event saying
why. Errors that concern one stream only (e.g. our application resets it) stay on that
stream. After `LinkClosed` the link accepts nothing more.

Resource bounds (a hostile peer must not exhaust the node). Before authentication a
handshake message may be at most MAX_HANDSHAKE_MESSAGE bytes and the handshake must be
done `handshake_timeout` after the link was made, however the peer trickles its bytes.
One `receive` call handles at most `frames_per_turn` messages; the rest stays in the
input buffer (`backlogged`), and the adapter stops reading and calls `receive(b"", now)`
on a later loop turn, so one link cannot monopolise the event loop. PING, RECORDS and
refused OPENs (what makes the node answer or work for nothing) take a token from a
per-link bucket (`control_rate` a second, `control_burst` at most); a peer that runs it
dry is closed with RATE_LIMITED (closing, not dropping: an honest node never comes near it, and
a dropped PING would only make the peer retry). `control_bytes_out` counts the control
output, so the adapter can bound what queues while the peer does not read.
"""

from __future__ import annotations

from vx6.core import events as ev
from vx6.core.budget import RateBudget
from vx6.core.handshake import HandshakeResult, LinkHandshake
from vx6.core.link_cells import CellOps
from vx6.core.link_config import LinkConfig
from vx6.core.link_streams import StreamOps
from vx6.core.streams import Stream, StreamState, StreamTable
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import (
    CloseCode,
    CryptoError,
    DecodeError,
    LinkError,
    RemoteProtocolError,
    StreamError,
)
from vx6.errors import TransitionError as StreamTransitionError
from vx6.wire import frames as fr
from vx6.wire.cells import cells_frame_body

# Frames that make the node answer or work: each takes a token of the rate limit. An
# OPEN takes one only when it is refused (here over max_streams, or by the node through
# reject_stream): an honest client may open streams as fast as it likes.
_METERED = (fr.Ping, fr.Records)


class Link(StreamOps, CellOps):
    def __init__(
        self,
        *,
        initiator: bool,
        identity: Identity,
        link_key: StaticKey,
        ephemeral: bytes,
        now: float,
        remote_link_key: bytes | None = None,
        expected_identity: bytes | None = None,
        config: LinkConfig | None = None,
        link_proof: bytes | None = None,
    ) -> None:
        self.config = config or LinkConfig()
        self.initiator = initiator
        self._hs: LinkHandshake | None = LinkHandshake(
            initiator=initiator,
            identity=identity,
            link_key=link_key,
            ephemeral=ephemeral,
            remote_link_key=remote_link_key,
            expected_identity=expected_identity,
            window=self.config.window,
            link_proof=link_proof,
        )
        self._keys: HandshakeResult | None = None
        self.streams = StreamTable(
            odd_ids=initiator,
            window=self.config.window,
            max_streams=self.config.max_streams,
            initial_credit=0,  # set from the peer's handshake
        )
        self._out: list[bytes] = []
        self._events: list[ev.Event] = []
        self._inbuf = bytearray()
        self._scratch: bytearray | None = None  # made when the link first sends DATA
        self._scratch_view = memoryview(b"")
        self._cell_frame: memoryview | None = None
        self._cells_pending = 0
        self._last_heard = now
        self._started = now
        self._ping_token = 0
        self._ping_sent_at: float | None = None
        self._rtt_start: float | None = None
        self._waiting_since: float | None = None
        self._control = RateBudget.full(self.config.control_rate, self.config.control_burst, now)
        self.closed = False
        self.failure: LinkError | None = None  # why input closed the link, kept for the dialler
        self.backlogged = False  # whole messages wait in the input buffer (see receive)
        self.bytes_in = 0
        self.bytes_out = 0
        self.control_bytes_out = 0
        if initiator:
            self._emit_raw(self._hs.start())

    # ------------------------------------------------------------------ properties
    @property
    def established(self) -> bool:
        return self._keys is not None and not self.closed

    @property
    def peer_identity(self) -> bytes | None:
        return self._keys.peer_identity if self._keys else None

    @property
    def peer_link_key(self) -> bytes | None:
        return self._keys.peer_link_key if self._keys else None

    # ------------------------------------------------------------------ output
    def data_to_send(self) -> list[bytes]:
        if self._cells_pending:
            self._seal_cells()
        out, self._out = self._out, []
        return out

    def events(self) -> list[ev.Event]:
        out, self._events = self._events, []
        return out

    def _emit_raw(self, message: bytes) -> None:
        self._out.append(fr.length_prefix(len(message)) + message)

    def _emit_frame(self, plaintext: bytes) -> None:
        assert self._keys is not None
        ct = self._keys.send.encrypt(plaintext)
        self.bytes_out += len(ct) + 2
        if plaintext[0] != fr.FrameType.CREDIT:
            # CREDIT is not counted: it follows data the peer sent (about 30 bytes per
            # window/4 received), and an honest bulk upload must not be closed for it.
            self.control_bytes_out += len(ct) + 2
        self._out.append(fr.length_prefix(len(ct)) + ct)

    def _send_frame(self, frame: fr.ControlFrame) -> None:
        self._emit_frame(fr.encode_frame(frame))

    # ------------------------------------------------------------------ input
    def receive(self, data: bytes | memoryview, now: float) -> None:
        """Feed bytes read from the connection. Whole messages are decrypted straight
        out of `data`; only what is left (an incomplete tail, or the messages beyond
        this turn's budget: then `backlogged` is set) is copied out for the next call,
        so nothing refers to `data` once this returns. `receive(b"", now)` goes on with
        a backlog."""
        self.backlogged = False
        if self.closed:
            return
        self._last_heard = now
        self._ping_sent_at = None
        self.bytes_in += len(data)
        src: bytes | bytearray | memoryview
        if self._inbuf:
            self._inbuf += data
            src = self._inbuf
        else:
            src = data
        view = memoryview(src)
        total, pos = len(src), 0
        budget = self.config.frames_per_turn
        try:
            while total - pos >= 2:
                end = pos + 2 + ((src[pos] << 8) | src[pos + 1])
                if end > total:
                    if self._keys is None and end - pos - 2 > fr.MAX_HANDSHAKE_MESSAGE:
                        raise RemoteProtocolError(
                            CloseCode.HANDSHAKE_FAILED, "handshake message too long"
                        )
                    break
                if budget <= 0:
                    self.backlogged = True
                    break
                budget -= 1
                with view[pos + 2 : end] as message:
                    pos = end
                    if self._keys is None:
                        self._on_handshake(bytes(message))
                    else:
                        self._on_message(message, now)
                if self.closed:
                    return
        except RemoteProtocolError as exc:
            self.failure = exc
            self._fail(exc.code, exc.reason)
            return
        finally:
            view.release()
            if self.closed:
                self._inbuf = bytearray()
            elif src is self._inbuf:
                del self._inbuf[:pos]
            elif pos < total:
                self._inbuf = bytearray(src[pos:])

    def _on_handshake(self, message: bytes) -> None:
        assert self._hs is not None
        reply = self._hs.receive(message)
        if reply is not None:
            self._emit_raw(reply)
        if self._hs.result is not None:
            self._keys = self._hs.result
            self._hs = None
            self.streams.initial_credit = self._keys.peer_window
            self._events.append(
                ev.LinkEstablished(self._keys.peer_identity, self._keys.peer_link_key)
            )

    def _on_message(self, message: memoryview, now: float) -> None:
        assert self._keys is not None
        try:
            plain = self._keys.receive.decrypt(message)
        except CryptoError as exc:
            raise RemoteProtocolError(
                CloseCode.DECRYPT_FAILED, "frame failed authentication"
            ) from exc
        if not plain:
            raise RemoteProtocolError(CloseCode.PROTOCOL_ERROR, "empty frame")
        if plain[0] == fr.FrameType.DATA:
            self._on_data(plain)
            return
        if plain[0] == fr.FrameType.CELLS:
            self._on_cells(plain)
            return
        try:
            frame = fr.decode_control(plain)
        except DecodeError as exc:
            raise RemoteProtocolError(CloseCode.PROTOCOL_ERROR, str(exc)) from exc
        try:
            self._on_control(frame, now)
        except StreamTransitionError as exc:
            raise RemoteProtocolError(CloseCode.PROTOCOL_ERROR, str(exc)) from exc

    def _on_data(self, plain: bytes) -> None:
        try:
            sid, payload = fr.decode_data(plain)
        except DecodeError as exc:
            raise RemoteProtocolError(CloseCode.PROTOCOL_ERROR, str(exc)) from exc
        self._on_stream_data(sid, payload)  # no copy: the write takes the view

    def _on_cells(self, plain: bytes) -> None:
        try:
            chunk = cells_frame_body(plain)
        except DecodeError as exc:
            raise RemoteProtocolError(CloseCode.PROTOCOL_ERROR, str(exc)) from exc
        last = self._events[-1] if self._events else None
        if isinstance(last, ev.CellsReceived):
            self._events[-1] = ev.CellsReceived((*last.chunks, chunk))
        else:
            self._events.append(ev.CellsReceived((chunk,)))

    def _take_token(self, now: float) -> None:
        if not self._control.take(1, now):
            raise RemoteProtocolError(CloseCode.RATE_LIMITED, "control frames faster than allowed")

    def _on_control(self, frame: fr.ControlFrame, now: float) -> None:
        if isinstance(frame, _METERED) or (
            isinstance(frame, fr.Open) and len(self.streams) >= self.streams.max_streams
        ):
            self._take_token(now)
        match frame:
            case fr.Ping(token):
                self._send_frame(fr.Pong(token))
            case fr.Pong(token):
                if token == self._ping_token and self._rtt_start is not None:
                    self._events.append(ev.PongReceived(token, now - self._rtt_start))
                    self._rtt_start = None
            case fr.Close(code, reason):
                self.closed = True
                self._events.append(ev.LinkClosed(code, reason, by_peer=True))
            case fr.Records(records):
                self._events.append(ev.RecordsReceived(records))
            case _:
                self._on_stream_frame(frame)

    def reject_stream(self, sid: int, code: StreamError, reason: str) -> None:
        """Refuse a stream the peer opened; a refusal costs a token of the rate limit
        (as of the last receive: the node refuses from the event that reported it)."""
        super().reject_stream(sid, code, reason)
        if not self.closed:
            try:
                self._take_token(self._last_heard)
            except RemoteProtocolError as exc:
                self._fail(exc.code, exc.reason)

    def send_records(self, records: list[bytes]) -> None:
        self._require_open()
        for i in range(0, len(records), fr.MAX_RECORDS_PER_FRAME):
            self._send_frame(fr.Records(tuple(records[i : i + fr.MAX_RECORDS_PER_FRAME])))

    def _send_data(self, stream: Stream, data: bytes | memoryview) -> bytes | None:
        """Send as much as credit allows; return what is left over (and mark blocked).

        The hot path: each frame's plaintext is put together in the scratch buffer (one
        copy) and sealed by one AEAD pass into a fresh ciphertext, whatever its size."""
        assert self._keys is not None
        total = len(data)
        count = min(total, stream.send_credit)
        if count <= 0:
            stream.blocked = True
            return bytes(data)
        scratch = self._scratch
        if scratch is None:  # links that never send DATA never pay for it
            scratch = self._scratch = bytearray(fr.MAX_FRAME)
            self._scratch_view = memoryview(scratch)
        scratch[: fr.DATA_HEADER] = fr.data_header(stream.stream_id)
        view = memoryview(data)
        pos = 0
        while pos < count:
            n = min(count - pos, fr.MAX_DATA_PAYLOAD)
            plain_len = fr.DATA_HEADER + n
            scratch[fr.DATA_HEADER : plain_len] = view[pos : pos + n]
            self._seal(self._scratch_view[:plain_len])
            pos += n
        stream.send_credit -= count
        if stream.send_credit <= 0:
            stream.blocked = True
        return bytes(view[count:]) if count < total else None

    def _seal(self, plaintext: memoryview) -> None:
        """Queue one frame's plaintext as one Noise message: a length prefix and a
        ciphertext of their own. No output buffer is filled with zeros first or joined:
        the adapter hands the list to the socket as it is (`writelines`, one writev)."""
        assert self._keys is not None
        ciphertext = self._keys.send.encrypt(plaintext)
        self._out += (fr.length_prefix(len(ciphertext)), ciphertext)
        self.bytes_out += len(ciphertext) + 2

    def ping(self, now: float) -> None:
        self._require_open()
        self._ping_token = (self._ping_token + 1) & 0xFFFFFFFFFFFFFFFF
        self._rtt_start = now
        self._send_frame(fr.Ping(self._ping_token))

    def _require_open(self) -> None:
        if self._keys is None or self.closed:
            raise LinkError(CloseCode.PROTOCOL_ERROR, "link is not established")

    # ------------------------------------------------------------------ timers & close
    def _awaiting_answer(self) -> float | None:
        """While a stream open is unanswered, the time since when we expect to hear
        from the peer soon (None if nothing is outstanding)."""
        if self._waiting_since is None:
            return None
        if not any(st.state is StreamState.OPENING for st in self.streams.streams.values()):
            self._waiting_since = None
            return None
        return max(self._last_heard, self._waiting_since)

    def next_deadline(self) -> float | None:
        if self.closed:
            return None
        if self._keys is None:
            return self._started + self.config.handshake_timeout
        if self._ping_sent_at is None:
            deadline = self._last_heard + self.config.keepalive
        else:
            deadline = self._last_heard + self.config.idle_timeout
        since = self._awaiting_answer()
        if since is not None:
            # A dead peer (e.g. it changed address) must not swallow new streams for the
            # whole idle timeout: probe quickly while an open is unanswered.
            probe = self.config.probe_after + (
                self.config.probe_timeout if self._ping_sent_at is not None else 0.0
            )
            deadline = min(deadline, since + probe)
        return deadline

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self._keys is None:
            if now >= self._started + self.config.handshake_timeout:
                self._fail(CloseCode.HANDSHAKE_FAILED, "handshake timed out")
            return
        since = self._awaiting_answer()
        cfg = self.config
        if now >= self._last_heard + cfg.idle_timeout:
            self._fail(CloseCode.IDLE_TIMEOUT, "peer silent too long")
        elif (
            since is not None
            and self._ping_sent_at is not None
            and now >= since + cfg.probe_after + cfg.probe_timeout
        ):
            self._fail(
                CloseCode.IDLE_TIMEOUT, "peer stopped answering (a stream open went unanswered)"
            )
        elif self._ping_sent_at is None and (
            now >= self._last_heard + cfg.keepalive
            or (since is not None and now >= since + cfg.probe_after)
        ):
            self._ping_sent_at = now
            self.ping(now)

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        if self.closed:
            return
        if self._keys is not None:
            self._seal_cells()  # cells already written go before the CLOSE
            self._send_frame(fr.Close(code, reason))
        self.closed = True
        self._events.append(ev.LinkClosed(code, reason, by_peer=False))

    def _fail(self, code: CloseCode, reason: str) -> None:
        self.close(code, reason)
