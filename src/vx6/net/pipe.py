"""StreamPipe: one local TCP connection joined to one stream of a link.

Theory of operation. The same class serves both ends of a forward: on the client it
wraps the connection accepted on the forwarded port, on the owner it wraps the
connection made to the service's target. It is the asyncio protocol of the local
socket and, at the same time, the `StreamSink` of the link stream.

Local -> link: bytes read from the socket go straight to `link.send`; when that says
"no more" (no credit, or the link's TCP buffer is full) the socket's reading pauses until
`on_writable` / `on_link_paused(False)`.

Link -> local: bytes from the stream are written to the socket; credit goes back to the
peer only for bytes the socket has really taken (written minus still buffered), so a
local reader that stalls stops the remote sender after one window, and memory per
stream stays bounded.

Half-close travels both ways (EOF <-> FIN); a reset or a lost link aborts the local
socket so the application sees an error rather than a clean end. A local connection that
completes after its stream is gone (or that `on_connected` declines) is aborted at once,
so no socket outlives its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import cast

from vx6.errors import StreamError, StreamFailed
from vx6.net.carrier import StreamCarrier
from vx6.net.link import set_nodelay

log = logging.getLogger("vx6.pipe")

LOCAL_HIGH_WATER = 256 * 1024
LOCAL_LOW_WATER = 64 * 1024


READ_BUFFER = 256 * 1024
# One read buffer for every pipe of the process (one event loop thread): whatever is read
# is encrypted or copied by the carrier before `data_received` returns (uvloop's write
# keeps a reference, so nothing written may point into it), so a buffer per connection
# would only cost memory: ~9 MiB less RSS with 32 parallel streams.
_shared_read: memoryview | None = None
_LINGER_RESET = struct.pack("ii", 1, 0)


class StreamPipe(asyncio.BufferedProtocol):
    def __init__(
        self,
        *,
        on_done: Callable[[StreamPipe], None] | None = None,
        on_connected: Callable[[], bool] | None = None,
    ) -> None:
        self.link: StreamCarrier | None = None
        self._read_size = READ_BUFFER
        self.sid = 0
        self.transport: asyncio.Transport | None = None
        self._early: list[
            bytes | memoryview
        ] = []  # stream bytes that arrived before the socket existed
        self._early_up: list[bytes] = []  # socket bytes read before the stream existed
        self._written = 0
        self._reported = 0
        self._credit_blocked = False
        self._link_paused = False
        self._reading = True
        self._local_eof = False
        self._remote_end = False
        self._done = False
        self._on_done = on_done
        self._on_connected = on_connected
        self.bytes_up = 0
        self.bytes_down = 0
        self.error: str | None = None
        self._opened: asyncio.Future[None] | None = None
        self._read_view: memoryview | None = None

    async def wait_opened(self) -> None:
        """Wait for the owner's answer to OPEN; raise StreamFailed if it refused."""
        if self._opened is None:
            self._opened = asyncio.get_running_loop().create_future()
        await self._opened

    # ------------------------------------------------------------ binding
    def bind(self, link: StreamCarrier, sid: int) -> None:
        """Join this pipe to a stream; reading starts once both sides exist."""
        self.link = link
        self.sid = sid
        # Reads of whole frames or cells: a 256 KiB read through 5 relays was 16 full
        # cells and one of 1824 bytes, which costs every hop as much as a full one.
        quantum = link.send_quantum
        self._read_size = max(quantum, READ_BUFFER // quantum * quantum)
        self._link_paused = link.paused
        early, self._early_up = self._early_up, []
        for chunk in early:
            self.data_received(chunk)
        if self._local_eof:
            link.finish(sid)
        self._update_reading()

    # ------------------------------------------------------------ local socket side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._done:
            # The stream went away (its link died, the peer reset it, the owner gave up
            # waiting) before this connection completed: nothing would ever close it.
            cast(asyncio.Transport, transport).abort()
            return
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=LOCAL_HIGH_WATER, low=LOCAL_LOW_WATER)
        set_nodelay(transport)
        # e.g. the owner accepts the stream before any reply, unless it already gave up
        if self._on_connected is not None and not self._on_connected():
            self.transport = None
            cast(asyncio.Transport, transport).abort()
            self._finish()
            return
        self._update_reading()
        early, self._early = self._early, []
        for chunk in early:
            self._write(chunk)
        if self._remote_end:
            self._write_eof()

    def get_buffer(self, sizehint: int) -> memoryview:
        global _shared_read
        if _shared_read is None:
            _shared_read = memoryview(bytearray(READ_BUFFER))
        self._read_view = _shared_read[: self._read_size]
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        assert self._read_view is not None
        with self._read_view[:nbytes] as data:
            self.data_received(data)  # the link encrypts or copies before we return

    def data_received(self, data: bytes | memoryview) -> None:
        link = self.link
        if link is None:  # reading is paused until bind(); keep anything already read
            self._early_up.append(bytes(data))
            return
        self.bytes_up += len(data)
        if not link.send(self.sid, data):
            self._credit_blocked = not link.paused
            self._link_paused = link.paused
            self._update_reading()

    def eof_received(self) -> bool:
        self._local_eof = True
        if self.link is not None:
            self.link.finish(self.sid)
        self._maybe_done()
        return True  # keep our write side open: the reply may still be coming (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self._done:
            if self.link is not None and not (self._local_eof and self._remote_end):
                self.link.reset(self.sid, StreamError.CANCELLED)
            self._finish()

    def pause_writing(self) -> None:
        pass  # credit accounting reads the buffer size directly; see _report

    def resume_writing(self) -> None:
        self._report()

    # ------------------------------------------------------------ stream side (StreamSink)
    def on_opened(self) -> None:
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(None)

    def on_open_failed(self, code: int, reason: str) -> None:
        self.error = reason
        self._fail_opened(code, reason)
        log.info("stream %d refused by owner: %s", self.sid, reason)
        self._abort()

    def on_data(self, data: bytes | memoryview) -> None:
        self.bytes_down += len(data)
        if self.transport is None:
            self._early.append(data)
            return
        self._write(data)

    def on_end(self) -> None:
        self._remote_end = True
        if self.transport is not None:
            self._write_eof()
        self._maybe_done()

    def on_reset(self, code: int) -> None:
        try:
            self.error = StreamError(code).name
        except ValueError:
            self.error = f"code {code}"
        self._fail_opened(code, self.error)
        self._abort()

    def on_writable(self) -> None:
        self._credit_blocked = False
        self._update_reading()

    def on_link_paused(self, paused: bool) -> None:
        self._link_paused = paused
        self._update_reading()

    # ------------------------------------------------------------ helpers
    def _fail_opened(self, code: int, reason: str) -> None:
        if self._opened is not None and not self._opened.done():
            try:
                err = StreamError(code)
            except ValueError:
                err = StreamError.PROTOCOL_ERROR
            self._opened.set_exception(StreamFailed(err, reason))

    def _write(self, data: bytes | memoryview) -> None:
        assert self.transport is not None
        self.transport.write(data)
        self._written += len(data)
        self._report()

    def _report(self) -> None:
        if self.transport is None or self.link is None:
            return
        delivered = self._written - self.transport.get_write_buffer_size()
        delta = delivered - self._reported
        if delta > 0:
            self._reported = delivered
            self.link.consumed(self.sid, delta)

    def _write_eof(self) -> None:
        assert self.transport is not None
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def _update_reading(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        want = self.link is not None and not self._credit_blocked and not self._link_paused
        if want and not self._reading:
            self._reading = True
            self.transport.resume_reading()
        elif not want and self._reading:
            self._reading = False
            self.transport.pause_reading()

    def _maybe_done(self) -> None:
        if self._local_eof and self._remote_end and self.transport is not None:
            self.transport.close()  # flushes what is buffered, then closes

    def _abort(self) -> None:
        if self.transport is not None:
            # A broken stream must reach the application as an error, not as a clean end
            # of data that could pass a truncated reply off as complete: linger 0 makes
            # the close send a TCP RST.
            sock = self.transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self.transport.abort()
        else:
            self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self._on_done is not None:
            self._on_done(self)

    def close(self) -> None:
        """Tear down both sides (node shutdown or forward removal)."""
        if self.link is not None and not self._done:
            self.link.reset(self.sid, StreamError.CANCELLED)
        self._abort()
