"""The node's own accept loop for link connections.

Theory of operation. `asyncio`'s `create_server` accepts for us, but it hides what a
node under attack needs to control: the listen backlog (given `sock=`, uvloop listens
again with its own default), what happens when the process is out of file descriptors
(stdlib logs every failure, libuv quietly drops connections), and the moment to refuse
a connection (before anything is allocated for it). So `serve_links` listens once with
`LISTEN_BACKLOG` and loops over `loop.sock_accept`:

* each accepted socket goes to `admit(sock, (host, port))`, which returns the protocol
  to run on it or None; None closes the socket at once (nothing read, nothing kept);
  otherwise `loop.connect_accepted_socket` wraps it in a transport for that protocol;
* EMFILE/ENFILE/ENOBUFS/ENOMEM pause accepting for 100 ms, doubling up to 1 s while they
  last (the connection waits in the kernel's backlog meanwhile) instead of spinning on a
  readable socket that cannot be accepted; each is counted, and the first of a run and
  the recovery are logged through RATELOG;
* errors that belong to one connection (it was reset before we accepted it) are counted
  and the loop goes on.

The same code runs on uvloop and the standard loop (both implement the two calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable

from vx6.net.ratelog import RATELOG

log = logging.getLogger("vx6.node")

LISTEN_BACKLOG = 512
BACKOFF_MIN = 0.1
BACKOFF_MAX = 1.0
ONE_CONNECTION = frozenset(
    {errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPERM, errno.ETIMEDOUT}
)

Admit = Callable[[socket.socket, tuple[str, int]], asyncio.BaseProtocol | None]


def listen_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening with LISTEN_BACKLOG; for '::' one dual-stack
    socket (IPv6 and IPv4-mapped)."""
    family = socket.AF_INET6 if ":" in host or host == "" else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio enables TCP_NODELAY on accepted sockets only when
    # the listener says it is TCP, and Nagle would hold back small frames (OPEN_OK, 64-byte
    # echoes) behind the peer's delayed ACK for ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host in ("", "::") else 1)
        sock.bind((host or "::", port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_links(
    sock: socket.socket, admit: Admit, count: Callable[[str], None], *, where: str = ""
) -> None:
    """Accept on `sock` until cancelled (the caller closes the socket)."""
    loop = asyncio.get_running_loop()
    backoff = BACKOFF_MIN
    failures = 0  # in the current run of out-of-resources errors
    while True:
        try:
            conn, address = await loop.sock_accept(sock)
        except OSError as exc:
            if exc.errno in ONE_CONNECTION:
                count("accept_failed")
                continue
            count("accept_out_of_resources")
            if not failures:  # one line per episode (and RATELOG bounds the episodes)
                RATELOG.warning(
                    log,
                    "accept-out-of-resources",
                    "cannot accept links on %s: %s; pausing accepts (%.1f s, doubling to %.0f s)",
                    where,
                    os.strerror(exc.errno) if exc.errno else exc,
                    backoff,
                    BACKOFF_MAX,
                )
            failures += 1
            await asyncio.sleep(backoff)  # backoff while out of descriptors, not sync
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        if failures:
            RATELOG.info(
                log,
                "accept-resumed",
                "accepting links on %s again after %d failed attempts",
                where,
                failures,
            )
            failures, backoff = 0, BACKOFF_MIN
        try:
            protocol = admit(conn, (str(address[0]), int(address[1])))
        except Exception:
            # A bug of ours: this connection is dropped, the node keeps accepting.
            RATELOG.exception(
                log, "accept-internal-error", "internal error admitting a link from %s", address
            )
            protocol = None
        if protocol is None:
            conn.close()
            continue
        await _run_on(loop, protocol, conn, count)


async def _run_on(
    loop: asyncio.AbstractEventLoop,
    protocol: asyncio.BaseProtocol,
    conn: socket.socket,
    count: Callable[[str], None],
) -> None:
    try:
        await loop.connect_accepted_socket(lambda: protocol, conn)
    except Exception as exc:  # any failure here is this connection's alone
        # Reset before we wrapped it, or no memory for a transport: the protocol hears
        # of the loss (idempotently) so that its owner forgets it.
        count("accept_failed")
        RATELOG.info(log, "accept-failed", "accepted link connection lost: %s", exc)
        with contextlib.suppress(OSError):
            conn.close()
        protocol.connection_lost(exc)
