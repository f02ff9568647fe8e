"""Test-side network helpers for the end-to-end tests: local target servers run in
threads (echo, hash-after-EOF, bulk duplex, endless pusher, HTTP), streaming transfer
helpers that hash on the fly, and small wrappers around LocalNet nodes (expose a
service and open a forward to it, read a node's RSS, run the CLI), and a bare peer's
link to a node (`RawPeer`, `StubOwner`, `dial_node`, `push_records`).

Theory of operation. Every server listens on 127.0.0.1 with port 0, serves each
connection in its own daemon thread, and reports per-connection results through a
queue, so a test waits for an outcome with a bounded `get(timeout=...)` instead of
sleeping. Transfer data is sliced from one random buffer at offsets that depend on a
seed and the chunk index: cheap to produce at GB/s, distinct per connection, and any
loss, duplication or reordering changes the SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.server
import itertools
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vx6.app.localnet import LocalNode
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import StreamError
from vx6.net.addresses import parse_endpoint
from vx6.net.dial import dial
from vx6.net.link import LinkProtocol

MiB = 1024 * 1024
CHUNK = 256 * 1024
IO_TIMEOUT = 30.0  # no single socket operation in these tests may block longer

_POOL_SIZE = 8 * MiB
_POOL = os.urandom(_POOL_SIZE + CHUNK)
_names = itertools.count(1)


def unique(prefix: str) -> str:
    """A fresh label for a service or forward, so tests sharing a network never clash."""
    return f"{prefix}{next(_names)}"


# ---------------------------------------------------------------- data and transfers
def chunks(total: int, seed: int, size: int = CHUNK) -> Iterator[memoryview]:
    """`total` bytes of seed-dependent data as memoryviews over a shared random pool."""
    view = memoryview(_POOL)
    sent = 0
    for index in itertools.count():
        if sent >= total:
            return
        n = min(size, total - sent)
        offset = (seed * 1_000_003 + index * 7_919 * 64) % _POOL_SIZE
        yield view[offset : offset + n]
        sent += n


def payload(total: int, seed: int) -> bytes:
    """The whole of `chunks(total, seed)` as bytes (only for small transfers)."""
    return b"".join(chunks(total, seed))


def expected_sha(total: int, seed: int) -> str:
    digest = hashlib.sha256()
    for chunk in chunks(total, seed):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Transfer:
    nbytes: int
    sha256: str


def send_stream(sock: socket.socket, total: int, seed: int, shut: bool = True) -> Transfer:
    """Send `total` seeded bytes, hashing as they go; optionally half-close after."""
    digest = hashlib.sha256()
    sent = 0
    for chunk in chunks(total, seed):
        sock.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
    if shut:
        sock.shutdown(socket.SHUT_WR)
    return Transfer(sent, digest.hexdigest())


def recv_stream(sock: socket.socket, limit: int | None = None) -> Transfer:
    """Read until EOF (or `limit` bytes), hashing on the fly; never holds the data."""
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = 0
    while limit is None or got < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - got)
        n = sock.recv_into(view[:want])
        if n == 0:
            break
        digest.update(view[:n])
        got += n
    return Transfer(got, digest.hexdigest())


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes (MSG_WAITALL does not wait on a socket with a timeout)."""
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def read_to_end(sock: socket.socket) -> str:
    """Read until the connection ends; say how: "eof" (FIN) or "reset" (RST)."""
    try:
        while sock.recv(CHUNK):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"


def refused_outcome(port: int, payload: bytes, timeout: float = IO_TIMEOUT) -> str:
    """Connect to a forward that is expected to refuse, send `payload` and say how the
    connection ended: "eof" or "reset". The forward may reset the connection before
    `connect()` returns (the RST can beat a slow test thread), during the send, or at
    the read; all are the same refusal."""
    try:
        with connect(port, timeout=timeout) as sock:
            with contextlib.suppress(BrokenPipeError):
                sock.sendall(payload)
            return read_to_end(sock)
    except ConnectionResetError:
        return "reset"


def recv_all(sock: socket.socket) -> bytes:
    parts = []
    while data := sock.recv(CHUNK):
        parts.append(data)
    return b"".join(parts)


def duplex(sock: socket.socket, total: int, seed: int) -> tuple[Transfer, Transfer]:
    """Send `total` seeded bytes (then half-close) while reading to EOF, concurrently.
    Returns (sent, received)."""
    box: dict[str, Any] = {}

    def sender() -> None:
        try:
            box["sent"] = send_stream(sock, total, seed)
        except BaseException as exc:  # re-raised in the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    received = recv_stream(sock)
    thread.join(IO_TIMEOUT)
    if "error" in box:
        raise box["error"]
    if thread.is_alive():
        raise TimeoutError("sender did not finish")
    return box["sent"], received


def connect(port: int, timeout: float = IO_TIMEOUT, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    return sock


def echo_once(port: int, data: bytes, timeout: float = IO_TIMEOUT) -> bytes:
    """Send `data` through a forward to an echo target, half-close, return the reply."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def closed_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- target servers
Handler = Callable[[socket.socket, "queue.Queue[Any]"], None]


class TCPServer:
    """A threaded TCP server on 127.0.0.1; `results` collects what handlers report.

    `vx6 connect` probes a service's target once (connect, then close at once), so
    every handler must expect connections that carry no bytes and not report them."""

    def __init__(self, handler: Handler, backlog: int = 512) -> None:
        self._handler = handler
        self.results: queue.Queue[Any] = queue.Queue()
        self.errors: list[BaseException] = []
        self.connections = 0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(backlog)
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # listener shut down
            conn.settimeout(IO_TIMEOUT)
            with self._lock:
                self.connections += 1
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._handler(conn, self.results)
        except OSError as exc:
            self.errors.append(exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def stop_listening(self) -> None:
        """Close the listener (later connections are refused); live ones keep going."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)

    def close(self) -> None:
        self.stop_listening()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> TCPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def echo_handler(conn: socket.socket, results: queue.Queue[Any]) -> None:
    """Echo until EOF, then half-close: the reply ends exactly where the request did."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while n := conn.recv_into(buf):
        conn.sendall(view[:n])
        total += n
    conn.shutdown(socket.SHUT_WR)
    results.put(total)


def sha_after_eof_handler(conn: socket.socket, results: queue.Queue[Any]) -> None:
    """Say nothing until the client's EOF, then reply `<sha256 hex> <byte count>`.
    Connections that send nothing are not reported (see `TCPServer`)."""
    got = recv_stream(conn)
    if got.nbytes == 0:
        return
    conn.sendall(f"{got.sha256} {got.nbytes}".encode())
    conn.shutdown(socket.SHUT_WR)
    results.put(got)


BULK_HEADER = struct.Struct(">QQ")  # bytes the target should send back, its seed


def bulk_handler(conn: socket.socket, results: queue.Queue[Any]) -> None:
    """Duplex bulk target: the client's header says how many seeded bytes to send back;
    meanwhile everything the client sends is hashed. Reports {"sent", "received"}."""
    try:
        header = recv_exact(conn, BULK_HEADER.size)
    except EOFError:
        return  # a probe (see `TCPServer`)
    total, seed = BULK_HEADER.unpack(header)
    box: dict[str, Any] = {}

    def sender() -> None:
        try:
            box["sent"] = send_stream(conn, total, seed)
        except OSError as exc:
            box["error"] = exc

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    received = recv_stream(conn)
    thread.join(IO_TIMEOUT)
    results.put({"sent": box.get("sent"), "received": received, "error": box.get("error")})


class Pusher:
    """A target that writes seeded data into every connection until it breaks or
    `stop` is set. `pushed` is the most bytes the kernel accepted on one connection
    (a probe connection breaks at once and stays far below)."""

    PUSH_SEED = 4242

    def __init__(self) -> None:
        self.per_connection: list[int] = []
        self.stop = threading.Event()
        self.server = TCPServer(self._handle)

    @property
    def pushed(self) -> int:
        return max(self.per_connection, default=0)

    def _handle(self, conn: socket.socket, results: queue.Queue[Any]) -> None:
        conn.settimeout(0.5)  # wake up now and then to notice `stop`
        slot = len(self.per_connection)
        self.per_connection.append(0)
        pending = memoryview(b"")
        chunk_iter = chunks(1 << 40, seed=self.PUSH_SEED)
        try:
            while not self.stop.is_set():
                if not pending:
                    pending = next(chunk_iter)
                try:
                    n = conn.send(pending)
                except TimeoutError:
                    continue  # the stream is stalled downstream: that is the point
                self.per_connection[slot] += n
                pending = pending[n:]
        except OSError as exc:
            results.put(exc)
            return
        results.put(self.per_connection[slot])

    def close(self) -> None:
        self.stop.set()
        self.server.close()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class HTTPFileServer:
    """http.server's ThreadingHTTPServer serving one directory on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietFiles, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- node helpers
def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def local_port(forward_reply: dict[str, Any]) -> int:
    """The forwarded port from a `connect` reply (or a forward's description)."""
    fwd = forward_reply.get("forward", forward_reply)
    return int(str(fwd["local"]).rsplit(":", 1)[1])


def expose(
    owner: LocalNode,
    target: str,
    *,
    allow: list[str] | None = None,
    public: bool = False,
    name: str | None = None,
) -> str:
    """Expose a fresh service on `owner`; returns its service label."""
    label = name or unique("svc")
    owner.call("expose", name=label, target=target, allow=allow or [], public=public)
    return label


def forward_to(client: LocalNode, owner_name: str, service: str, *, via: str | None = None) -> int:
    """Open a forward on `client` to OWNER.SERVICE; returns the local port."""
    reply = client.call(
        "connect", service=f"{owner_name}.{service}", local="0", via=via, name=unique("fwd")
    )
    return local_port(reply)


def counters(node: LocalNode) -> dict[str, int]:
    return dict(node.call("status")["counters"])


def stderr_line(result: Any) -> str:
    """The CLI's stderr, which must be exactly one non-empty line."""
    lines = [ln for ln in result.stderr.decode(errors="replace").splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


class RawPeer:
    """The smallest LinkOwner, for a test that speaks to a node as a bare peer: it
    serves no stream, keeps nothing, and remembers how its links closed. Tests that want
    more (the records a node sent, a future for the close) override a method."""

    def __init__(self) -> None:
        self.closes: list[tuple[int, str, bool]] = []

    def link_established(self, link: LinkProtocol) -> None:
        pass

    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        self.closes.append((code, reason, by_peer))

    def stream_requested(self, link: LinkProtocol, sid: int, service: str, flags: int) -> None:
        link.reject_stream(sid, StreamError.UNKNOWN_SERVICE, "a raw peer serves nothing")

    def records_received(self, link: LinkProtocol, records: tuple[bytes, ...]) -> None:
        pass

    def cells_received(self, link: LinkProtocol, chunks: tuple[bytes | memoryview, ...]) -> None:
        pass

    def link_paused(self, link: LinkProtocol, paused: bool) -> None:
        pass


class StubOwner(RawPeer):
    """A RawPeer with futures: the node's first records answer and the close."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.records: asyncio.Future[tuple[bytes, ...]] = loop.create_future()
        self.closed: asyncio.Future[tuple[int, str, bool]] = loop.create_future()

    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        if not self.closed.done():
            self.closed.set_result((code, reason, by_peer))

    def records_received(self, link: LinkProtocol, records: tuple[bytes, ...]) -> None:
        if not self.records.done():
            self.records.set_result(records)


async def dial_node(node: LocalNode) -> tuple[LinkProtocol, StubOwner]:
    host, port = parse_endpoint(node.listen)
    owner = StubOwner()
    link = await dial(
        owner, host, port, identity=Identity(os.urandom(32)), link_key=StaticKey(os.urandom(32))
    )
    return link, owner


def push_records(node: LocalNode, raws: list[bytes]) -> None:
    """Send records to `node` over a fresh link, as a peer would, and return once the
    node has handled them: on a link's first RECORDS frame the node answers with its own
    records, from the same callback that checks ours, and the control socket answers
    only after that callback."""

    async def run() -> None:
        link, owner = await dial_node(node)
        try:
            link.send_records(raws)
            async with asyncio.timeout(10):
                await owner.records
        finally:
            link.close()

    asyncio.run(run())
