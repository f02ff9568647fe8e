"""Owner-side stream setup: admission within the node's bounds, then one connection to
the service's target per stream.

Theory of operation. A stream request that passed the service's checks (owner.py) is
admitted only within `OwnerLimits`: streams held open, and target connections still being
set up (probes included), are counted node-wide and per client key: the authenticated key
of a link or circuit client, or for an anonymous circuit client its circuit. A quarter of
each node-wide bound is kept for services with an allow-list, so strangers on a public
service cannot crowd out the keys the owner chose to trust. Over a bound the stream is
refused with RESOURCE_LIMIT, counted exactly (`streams_refused_limit`) and logged through
RATELOG. The stream bound is also held under half the process's file descriptor limit:
each stream is one descriptor, and the node needs the rest for links and its own work.

Each admitted stream gets one `TargetConnect`, the only holder of its setup state:
CONNECTING, then exactly one of CONNECTED (the target connection's `connection_made`:
the stream is accepted there and the timer cancelled), FAILED (the connect raised or the
timer fired first: the stream is refused) or CANCELLED (the stream went away first: its
link or circuit died, or the peer reset it; the connect is cancelled). Whichever comes
first wins and the rest are no-ops, so a refusal after the accept cannot happen, and a
connection that completes after its stream is gone is closed at once (the pipe declines
it). The pending-connect lease is given back on leaving CONNECTING; the stream lease when
the pipe is done.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
from collections.abc import Callable
from enum import Enum, auto
from typing import Any, cast

from vx6.crypto.keys import fingerprint
from vx6.errors import StreamError
from vx6.net.carrier import StreamCarrier
from vx6.net.pipe import StreamPipe
from vx6.net.ratelog import RATELOG
from vx6.store.config import OwnerLimits, ServiceConfig

log = logging.getLogger("vx6.owner")

TRUSTED_RESERVE = 4  # 1/4 of each node-wide bound is kept for allow-listed services
# What a connect fails with when the node, not the target, is out of resources.
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Lease:
    """One unit held in a `Budget`; `release` gives it back once, later calls do nothing."""

    __slots__ = ("_budget", "_key")

    def __init__(self, budget: Budget, key: object) -> None:
        self._budget: Budget | None = budget
        self._key = key

    def release(self) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            budget.give_back(self._key)


class Budget:
    """Units held against a node-wide and a per-key cap. Only keys holding something are
    in the table, so it never has more entries than the node-wide cap."""

    def __init__(self, total: int, per_key: int) -> None:
        self.total = total
        self.per_key = per_key
        self.held = 0
        self._by_key: dict[object, int] = {}

    def refusal(self, key: object, trusted: bool) -> str | None:
        """Why one more unit for `key` is over a cap, or None if it fits."""
        shared = self.total if trusted else self.total - self.total // TRUSTED_RESERVE
        if self.held >= shared:
            return f"node-wide limit of {shared}" + ("" if trusted else " for public services")
        if self._by_key.get(key, 0) >= self.per_key:
            return f"limit of {self.per_key} per client"
        return None

    def take(self, key: object) -> Lease:
        self.held += 1
        self._by_key[key] = self._by_key.get(key, 0) + 1
        return Lease(self, key)

    def give_back(self, key: object) -> None:
        self.held -= 1
        left = self._by_key.pop(key) - 1
        if left:
            self._by_key[key] = left


class ConnectState(Enum):
    CONNECTING = auto()
    CONNECTED = auto()
    FAILED = auto()
    CANCELLED = auto()


class TargetConnect:
    """One connection to a target being set up, with its timeout (see the module doc)."""

    def __init__(
        self,
        host: str,
        port: int,
        factory: Callable[[], asyncio.BaseProtocol],
        *,
        timeout: float,
        lease: Lease,
        on_connected: Callable[[], None],
        on_failed: Callable[[StreamError, str], None],
    ) -> None:
        self.state = ConnectState.CONNECTING
        self._lease = lease
        self._on_connected = on_connected
        self._on_failed = on_failed
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(loop.create_connection(factory, host, port))
        self._task.add_done_callback(self._connect_done)
        self._timer = loop.call_later(timeout, self._timed_out)

    def connected(self) -> bool:
        """The target's connection_made: True if the stream is accepted; False if it had
        already failed or gone away (the caller then closes the connection)."""
        if not self._leave(ConnectState.CONNECTED):
            return False
        self._on_connected()
        return True

    def cancel(self) -> None:
        """The stream is gone: stop connecting (a no-op once connected or failed)."""
        self._leave(ConnectState.CANCELLED)

    def _timed_out(self) -> None:
        if self._leave(ConnectState.FAILED):
            self._on_failed(StreamError.TARGET_REFUSED, "timeout")

    def _connect_done(self, task: asyncio.Task[tuple[asyncio.BaseTransport, Any]]) -> None:
        if task.cancelled():
            return  # by _leave: whoever left CONNECTING has dealt with the stream
        exc = task.exception()
        if exc is None:
            if self.state is not ConnectState.CONNECTED:
                # never reached connection_made: close it here
                cast(asyncio.Transport, task.result()[0]).abort()
            return
        if self._leave(ConnectState.FAILED):
            if isinstance(exc, OSError) and _out_of_resources(exc):
                self._on_failed(StreamError.RESOURCE_LIMIT, _describe(exc))
            elif isinstance(exc, OSError):
                self._on_failed(StreamError.TARGET_REFUSED, _describe(exc))
            else:  # not the target's fault either: say so, refuse the stream
                log.error("connecting to a target failed unexpectedly", exc_info=exc)
                self._on_failed(StreamError.TARGET_REFUSED, "internal error")

    def _leave(self, new: ConnectState) -> bool:
        if self.state is not ConnectState.CONNECTING:
            return False
        self.state = new
        self._timer.cancel()
        self._lease.release()
        if new is not ConnectState.CONNECTED:
            self._task.cancel()  # closes a socket still connecting; no-op once done
        return True


def _out_of_resources(exc: OSError) -> bool:
    return exc.errno in _OUT_OF_RESOURCES or "Too many open files" in str(exc)


def _describe(exc: OSError) -> str:
    if _out_of_resources(exc):
        return f"the owner's node is out of file descriptors or buffers ({exc})"
    return str(exc) or type(exc).__name__


def fd_bound(streams: int) -> int:
    """`streams`, held under half the soft limit on open files (see the module doc)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return streams
    return max(1, min(streams, soft // 2))


class OwnerStreams:
    """The owner's streams: admission, their target connections, and their counts."""

    def __init__(self, limits: OwnerLimits, count: Callable[[str], None]) -> None:
        cap = fd_bound(limits.streams)
        if cap < limits.streams:
            log.info("owner streams limited to %d (half the open-file limit)", cap)
        self.streams = Budget(cap, limits.streams_per_key)
        self.pending = Budget(limits.pending_connects, limits.pending_connects_per_key)
        self.active: set[StreamPipe] = set()
        self.streams_total = 0
        self._count = count

    def open(
        self, carrier: StreamCarrier, sid: int, svc: ServiceConfig, probe: bool, timeout: float
    ) -> None:
        """Admit the stream and connect it to `svc`'s target, or refuse it."""
        peer = carrier.peer_identity
        key: object = peer if peer is not None else carrier  # anonymous: per circuit
        trusted = not svc.public
        refusal = self.pending.refusal(key, trusted)
        what = "target connections being set up"
        if refusal is None and not probe:
            refusal, what = self.streams.refusal(key, trusted), "open streams"
        if refusal is not None:
            self._count("streams_refused_limit")
            who = fingerprint(peer) if peer else "an anonymous circuit client"
            RATELOG.warning(
                log, "owner-stream-limit", "refused stream from %s to %s: %s over the %s",
                who, svc.name, what, refusal,
            )  # fmt: skip
            carrier.reject_stream(sid, StreamError.RESOURCE_LIMIT, f"{what}: {refusal}")
            return
        pending = self.pending.take(key)
        if probe:
            self._probe(carrier, sid, svc, pending, timeout)
            return
        stream = self.streams.take(key)
        self.streams_total += 1

        def done(pipe: StreamPipe) -> None:
            self.active.discard(pipe)
            stream.release()
            connect.cancel()  # the link or circuit died, or the peer reset: stop there

        def failed(code: StreamError, reason: str) -> None:
            self._refused(carrier, sid, svc, code, reason)
            pipe.close()  # no socket yet: just done (the stream is refused, no reset)

        pipe = StreamPipe(on_done=done, on_connected=lambda: connect.connected())
        self.active.add(pipe)
        carrier.attach(sid, pipe)
        pipe.bind(carrier, sid)
        connect = TargetConnect(
            svc.target_host,
            svc.target_port,
            lambda: pipe,
            timeout=timeout,
            lease=pending,
            on_connected=lambda: carrier.accept_stream(sid),
            on_failed=failed,
        )

    def _probe(
        self, carrier: StreamCarrier, sid: int, svc: ServiceConfig, pending: Lease, timeout: float
    ) -> None:
        def answered() -> None:
            carrier.accept_stream(sid)
            carrier.finish(sid)

        def failed(code: StreamError, reason: str) -> None:
            self._refused(carrier, sid, svc, code, reason)

        connect = TargetConnect(
            svc.target_host,
            svc.target_port,
            lambda: _ProbeProtocol(connect),
            timeout=timeout,
            lease=pending,
            on_connected=answered,
            on_failed=failed,
        )
        carrier.attach(sid, _ProbeSink(connect))

    def _refused(
        self, carrier: StreamCarrier, sid: int, svc: ServiceConfig, code: StreamError, reason: str
    ) -> None:
        target = f"{svc.target_host}:{svc.target_port}"
        if code is StreamError.RESOURCE_LIMIT:
            self._count("streams_refused_fd_limit")
            RATELOG.log(
                log, logging.ERROR, "owner-target-out-of-fds",
                "cannot connect to target %s of %s: %s", target, svc.name, reason,
            )  # fmt: skip
        else:
            self._count("streams_refused_target")
            RATELOG.warning(
                log, "owner-target-refused", "target %s of %s refused: %s", target, svc.name, reason
            )
        carrier.reject_stream(sid, code, f"{target}: {reason}")


class _ProbeProtocol(asyncio.Protocol):
    """Connects, then closes at once: a probe that the target accepts connections."""

    def __init__(self, connect: TargetConnect) -> None:
        self._connect = connect

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
        self._connect.connected()


class _ProbeSink:
    """A probe stream's sink: only notices the stream going away, to stop the connect."""

    def __init__(self, connect: TargetConnect) -> None:
        self._connect = connect

    def on_opened(self) -> None:
        pass

    def on_open_failed(self, code: int, reason: str) -> None:
        self._connect.cancel()

    def on_data(self, data: bytes | memoryview) -> None:
        pass  # a probe carries no data; the window bounds what a peer can send

    def on_end(self) -> None:
        pass

    def on_reset(self, code: int) -> None:
        self._connect.cancel()

    def on_writable(self) -> None:
        pass

    def on_link_paused(self, paused: bool) -> None:
        pass
