"""asyncio adapter for the sans-IO link core (vx6.core.link).

Theory of operation. `LinkProtocol` owns one TCP connection and one `core.link.Link`.
Bytes from the socket go into the core; after every call into the core the protocol
drains `data_to_send()` to the socket and dispatches `events()`: stream events go to the
`StreamSink` registered for that stream id, link-level events to the `LinkOwner` (the
node). One timer handle is kept armed at the core's `next_deadline()`.

Backpressure in both directions: when the TCP socket's write buffer passes its high-water
mark the link tells every sink to stop reading its local socket, and resumes them when it
drains; per-stream credit is handled by the core and surfaces as `on_writable`.

Resource bounds against a hostile peer (memory before authentication: see
net/link_memory.py). A read whose messages exceed the core's per-turn budget stops the
reading, which goes on at the next loop turn. While the socket is paused for writing,
the control output the core makes (PONGs, OPEN_FAILs, CREDITs) is counted; past
`LinkConfig.max_unsent_control` the link is closed with RESOURCE_LIMIT, and
`send_records` sends nothing (the records hub retries at its next reconcile). A link
closed while its output is stuck is aborted, not flushed forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from vx6.core import events as ev
from vx6.core.link import Link
from vx6.core.link_config import LinkConfig
from vx6.crypto.keys import Identity, StaticKey, fingerprint
from vx6.errors import CloseCode, LinkError, RemoteProtocolError, StreamError
from vx6.net.carrier import StreamSink, dispatch_stream_event
from vx6.net.link_memory import link_proof, read_buffer
from vx6.net.ratelog import RATELOG
from vx6.wire.frames import MAX_DATA_PAYLOAD

log = logging.getLogger("vx6.link")

LINK_HIGH_WATER = 1024 * 1024
LINK_LOW_WATER = 256 * 1024
CLOSE_GRACE = 5.0  # a closed link's last output may take this long to drain, then abort


class LinkOwner(Protocol):
    def link_established(self, link: LinkProtocol) -> None: ...
    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None: ...
    def stream_requested(self, link: LinkProtocol, sid: int, service: str, flags: int) -> None: ...
    def records_received(self, link: LinkProtocol, records: tuple[bytes, ...]) -> None: ...
    def cells_received(
        self, link: LinkProtocol, chunks: tuple[bytes | memoryview, ...]
    ) -> None: ...
    def link_paused(self, link: LinkProtocol, paused: bool) -> None: ...


# Closes that are nobody's fault: logged at INFO (the others at WARNING); all of them go
# through the rate-limited log, since a peer decides how often a link closes.
_QUIET_CODES = (CloseCode.NORMAL, CloseCode.SHUTDOWN)


class LinkProtocol(asyncio.BufferedProtocol):
    def __init__(
        self,
        owner: LinkOwner,
        *,
        initiator: bool,
        identity: Identity,
        link_key: StaticKey,
        remote_link_key: bytes | None = None,
        expected_identity: bytes | None = None,
        config: LinkConfig | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self.clock = clock or self.loop.time
        self.core = Link(
            initiator=initiator,
            identity=identity,
            link_key=link_key,
            ephemeral=os.urandom(32),
            now=self.clock(),
            remote_link_key=remote_link_key,
            expected_identity=expected_identity,
            config=config,
            link_proof=link_proof(identity, link_key),
        )
        self.transport: asyncio.Transport | None = None
        self.sinks: dict[int, StreamSink] = {}
        self.established: asyncio.Future[None] = self.loop.create_future()
        self.closed_future: asyncio.Future[None] = self.loop.create_future()
        self.peer_address: tuple[str, int] | None = None
        self.rtt: float | None = None
        self.close_reason = ""
        self._timer: asyncio.Handle | None = None
        # When the armed timer fires, kept here: uvloop's call_at with a time already
        # past returns a plain Handle (as call_soon), which has no when().
        self._timer_when = 0.0
        self.dialled: tuple[str, int] | None = None  # the address we dialled, if we did
        self.local_address: tuple[str, int] | None = None
        self._paused = False
        self._control_mark = 0  # core.control_bytes_out when writing paused
        self._reading_paused = False  # by us, for the per-turn budget
        self._pong_waiters: list[asyncio.Future[float]] = []
        self._read_view: memoryview | None = None  # see _read_buffer

    # ---------------------------------------------------------------- asyncio side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = self.transport.get_extra_info("peername")
        if peer:
            self.peer_address = (peer[0], peer[1])
        local = self.transport.get_extra_info("sockname")
        if local:
            self.local_address = (local[0], local[1])
        self.transport.set_write_buffer_limits(high=LINK_HIGH_WATER, low=LINK_LOW_WATER)
        set_nodelay(transport)
        self._pump()

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._read_view
        if view is None:
            view = self._read_view = read_buffer(self.core.established)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        assert self._read_view is not None
        with self._read_view[:nbytes] as data:
            self._feed(data)

    def _continue_backlog(self) -> None:
        if not self.core.closed and self.transport is not None:
            self._feed(b"")  # the messages over the last turn's budget

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.core.receive(data, self.clock())
            self._pace_reading()
            self._pump()
        except Exception as exc:
            self._receive_failed(exc)

    def _receive_failed(self, exc: Exception) -> None:
        """What escaped handling the peer's input (the core, or a handler it reached
        through `_dispatch`). The peer's protocol error closes the link with its code;
        anything else is a bug of ours: this link is closed with INTERNAL_ERROR and the
        traceback logged, the node and its other links go on. Both are rate-limited:
        the peer decides how often."""
        if isinstance(exc, RemoteProtocolError):
            code, reason = exc.code, exc.reason  # the close itself is logged in _finish
        else:
            RATELOG.exception(
                log,
                "link-internal-error",
                "internal error on link %s; closing it",
                self.peer_address,
            )
            code, reason = CloseCode.INTERNAL_ERROR, "internal error"
        try:
            self.core.close(code, reason)
            self._pump()
        except Exception:  # the close path failed too: drop the connection outright
            RATELOG.exception(
                log, "link-internal-error", "closing link %s failed", self.peer_address
            )
            if self.transport is not None:
                self.transport.abort()  # connection_lost finishes the link

    def _pace_reading(self) -> None:
        """Over this turn's budget: read nothing more and go on with the backlog at the
        next loop turn, so other links and timers get their turn in between; once it is
        handled, read again."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.core.backlogged:
            if not self._reading_paused:
                self._reading_paused = True
                transport.pause_reading()
            self.loop.call_soon(self._continue_backlog)
        elif self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def eof_received(self) -> bool:
        if not self.core.closed:
            self._finish(CloseCode.PROTOCOL_ERROR, "peer closed the connection", by_peer=True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer:
            self._timer.cancel()
        if not self.closed_future.done():
            reason = f"connection lost: {exc}" if exc else "connection closed"
            self._finish(CloseCode.NORMAL, reason, by_peer=True)

    def pause_writing(self) -> None:
        self._paused = True
        self._control_mark = self.core.control_bytes_out
        for sink in list(self.sinks.values()):
            sink.on_link_paused(True)
        self.owner.link_paused(self, True)

    def resume_writing(self) -> None:
        self._paused = False
        for sink in list(self.sinks.values()):
            sink.on_link_paused(False)
        self.owner.link_paused(self, False)

    # ---------------------------------------------------------------- core pumping
    def _write_out(self) -> None:
        out = self.core.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def _pump(self) -> None:
        if (
            self._paused
            and self.core.control_bytes_out - self._control_mark
            > self.core.config.max_unsent_control
        ):
            # The peer makes us answer but does not read the answers.
            self.core.close(CloseCode.RESOURCE_LIMIT, "peer does not read what it asks for")
        self._write_out()
        for event in self.core.events():
            self._dispatch(event)
        if self.core.closed:
            return
        self._arm_timer()

    def _arm_timer(self) -> None:
        # Activity only pushes the core's deadline later, so an armed timer that would
        # fire early is kept (it re-arms when it fires) instead of being replaced on
        # every frame: the data path creates no timer objects.
        deadline = self.core.next_deadline()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        # The core's deadlines are on the injected clock, the loop's timers on its own:
        # convert through "seconds from now", so any monotonic clock works.
        when = self.loop.time() + max(0.0, deadline - self.clock())
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.core.handle_timer(self.clock())
            self._pump()
        except Exception as exc:
            self._receive_failed(exc)

    def _dispatch(self, event: ev.Event) -> None:
        if dispatch_stream_event(self.sinks, event):
            return
        if isinstance(event, ev.CellsReceived):
            self.owner.cells_received(self, event.chunks)
        elif isinstance(event, ev.StreamOpenRequested):
            self.owner.stream_requested(self, event.stream_id, event.service, event.flags)
        elif isinstance(event, ev.RecordsReceived):
            self.owner.records_received(self, event.records)
        elif isinstance(event, ev.PongReceived):
            self.rtt = event.rtt
            waiters, self._pong_waiters = self._pong_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(event.rtt)
        elif isinstance(event, ev.LinkEstablished):
            self._read_view = None  # authenticated: the next read gets the full buffer
            if not self.established.done():
                self.established.set_result(None)
            self.owner.link_established(self)
        elif isinstance(event, ev.LinkClosed):
            self._finish(event.code, event.reason, event.by_peer)

    def _finish(self, code: int, reason: str, by_peer: bool) -> None:
        if self.closed_future.done():
            return
        self.close_reason = reason
        who = fingerprint(self.core.peer_identity) if self.core.peer_identity else self.peer_address
        side = "peer" if by_peer else "we"
        name = _code_name(code)
        if code in _QUIET_CODES:
            # Still a channel a peer drives (connect, handshake, leave, again): rate-limited
            # like the rest, at INFO.
            RATELOG.info(log, "link-closed", "link %s closed (%s, %s): %s", who, name, side, reason)
        else:
            # Ours by code; the peer's in one category (its code and reason are its own).
            kind = "by-peer" if by_peer else (name if name.isidentifier() else "other")
            category = f"link-closed-{kind}"
            RATELOG.warning(log, category, "link %s closed (%s, %s): %s", who, name, side, reason)
        if not self.established.done():
            try:
                close_code = CloseCode(code)
            except ValueError:
                close_code = CloseCode.PROTOCOL_ERROR
            failure = self.core.failure  # the very error, e.g. IdentityMismatch with its key
            if failure is None or failure.code != close_code:
                failure = LinkError(close_code, reason)
            self.established.set_exception(failure)
            self.established.exception()  # mark retrieved: the dialer may have gone away
        self.closed_future.set_result(None)
        sinks, self.sinks = self.sinks, {}
        for sink in sinks.values():
            sink.on_reset(StreamError.LINK_LOST)
        if self._timer:
            self._timer.cancel()
        if self.transport is not None:
            if self._paused:
                # Its output is stuck behind a peer that does not read: flushing it
                # would keep the socket and its buffer forever.
                self.transport.abort()
            else:
                self.transport.close()  # the CLOSE frame goes out first
                if self.transport.get_write_buffer_size():
                    self.loop.call_later(CLOSE_GRACE, self.transport.abort)
        self.owner.link_closed(self, code, reason, by_peer)

    # ---------------------------------------------------------------- node-facing API
    @property
    def peer_identity(self) -> bytes | None:
        return self.core.peer_identity

    @property
    def is_open(self) -> bool:
        return self.core.established and not self.closed_future.done()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def send_quantum(self) -> int:
        return MAX_DATA_PAYLOAD

    def open_stream(self, service: str, flags: int, sink: StreamSink) -> int:
        sid = self.core.open_stream(service, flags, self.clock())
        self.sinks[sid] = sink
        self._pump()
        return sid

    def attach(self, sid: int, sink: StreamSink) -> None:
        self.sinks[sid] = sink

    def accept_stream(self, sid: int) -> None:
        self.core.accept_stream(sid)
        self._pump()

    def reject_stream(self, sid: int, code: StreamError, reason: str) -> None:
        self.sinks.pop(sid, None)
        self.core.reject_stream(sid, code, reason)
        self._pump()

    def send(self, sid: int, data: bytes | memoryview) -> bool:
        more = self.core.send(sid, data)
        self._write_out()  # the data path: no event dispatch, no timer
        return more and not self._paused

    def consumed(self, sid: int, n: int) -> None:
        self.core.consumed(sid, n)
        self._pump()

    def finish(self, sid: int) -> None:
        self.core.finish(sid)
        self._pump()

    def reset(self, sid: int, code: StreamError = StreamError.CANCELLED) -> None:
        self.sinks.pop(sid, None)
        self.core.reset(sid, code)
        self._pump()

    def send_cells(self, cells: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send these cells after any the router wrote into the link in place (with an
        empty list: just those)."""
        if self.is_open:
            self.core.send_cells(cells)
            self._write_out()

    def send_records(self, records: list[bytes]) -> bool:
        """Send these records; False (nothing sent) if the link is closed or its peer is
        not reading what we already sent: the caller tries again later."""
        if not self.is_open or self._paused:
            return False
        if records:
            self.core.send_records(records)
            self._pump()
        return True

    def ping(self) -> asyncio.Future[float]:
        """Send a PING; the future resolves to the round-trip time in seconds."""
        fut: asyncio.Future[float] = self.loop.create_future()
        if self.is_open:
            self._pong_waiters.append(fut)
            self.core.ping(self.clock())
            self._pump()
        else:
            fut.set_exception(LinkError(CloseCode.NORMAL, "link is closed"))
        return fut

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        self.core.close(code, reason)
        self._pump()


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Frames are whole messages: send them now, never wait for Nagle."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _code_name(code: int) -> str:
    try:
        return CloseCode(code).name
    except ValueError:
        return f"code {code}"
