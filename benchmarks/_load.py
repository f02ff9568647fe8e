"""Load generators for bench_forward.py: target servers and the clients that drive them.

Theory of operation. The targets run in their own processes (`python _load.py echo` or
`python _load.py bulk`), so they never share a GIL with the measuring process; each prints
its OS-chosen port on one line and then serves until its stdin closes (the parent died
or is done) or its lifetime runs out, so nothing outlives a benchmark run.

* echo: one selectors (epoll) loop, no thread per connection, so accepting a connection
  costs the same for every sample of the new-connection test.
* bulk: one thread per connection. Each connection opens with a 13-byte header
  (mode, byte budget, time limit in ms). Mode S (sink): read until EOF, answer with the
  8-byte count received, close. Mode D (duplex): stream `budget` bytes back (or until the
  time limit) while reading until EOF, then close.

The clients move data with large `sendall`s of one preallocated memoryview and
`recv_into` one preallocated bytearray, so the Python cost per byte is negligible. Every
client bounds its run by a byte budget and a time limit (the sender stops early at the
limit and the figure is computed from the bytes that actually arrived) and every socket
has a timeout, so a stalled path raises instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

CHUNK = 1 << 20
HEADER = struct.Struct("!cQI")
COUNT = struct.Struct("!Q")
SERVER_LIFETIME = 900.0
STALL_SLACK = 30.0
PAYLOAD = memoryview(os.urandom(CHUNK))

Addr = tuple[str, int]


# ---------------------------------------------------------------------------- servers
def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def _die_with_parent() -> None:
    def watch() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    reaper = threading.Timer(SERVER_LIFETIME, lambda: os._exit(3))
    reaper.daemon = True
    reaper.start()


def _announce(sock: socket.socket) -> None:
    print(sock.getsockname()[1], flush=True)


def serve_echo() -> None:
    listener = _listener()
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    _die_with_parent()
    _announce(listener)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                _accept_all(listener, sel)
                continue
            conn: socket.socket = key.data
            try:
                n = conn.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if n == 0:
                sel.unregister(conn)
                conn.close()
                continue
            try:
                sent = conn.send(view[:n])
                if sent < n:  # rare for small echoes: finish the write blocking
                    conn.setblocking(True)
                    conn.sendall(view[sent:n])
                    conn.setblocking(False)
            except OSError:
                sel.unregister(conn)
                conn.close()


def _accept_all(listener: socket.socket, sel: selectors.BaseSelector) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sel.register(conn, selectors.EVENT_READ, conn)


def serve_bulk() -> None:
    listener = _listener()
    _die_with_parent()
    _announce(listener)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_bulk_connection, args=(conn,), daemon=True).start()


def _bulk_connection(conn: socket.socket) -> None:
    with conn:
        try:
            header = _recv_exact(conn, HEADER.size)
            mode, budget, limit_ms = HEADER.unpack(header)
            if mode == b"S":
                conn.sendall(COUNT.pack(_drain(conn)))
            elif mode == b"D":
                deadline = time.monotonic() + limit_ms / 1000
                pump = threading.Thread(target=_pump_quietly, args=(conn, budget, deadline))
                pump.start()
                _drain(conn)
                pump.join()
        except OSError:
            pass


def _pump_quietly(conn: socket.socket, budget: int, deadline: float) -> None:
    with contextlib.suppress(OSError):
        _pump(conn, budget, deadline)


# ---------------------------------------------------------------------------- primitives
def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError(f"EOF after {got} of {size} bytes")
        got += n
    return bytes(buf)


def _drain(sock: socket.socket) -> int:
    buf = bytearray(CHUNK)
    total = 0
    while n := sock.recv_into(buf):
        total += n
    return total


def _pump(sock: socket.socket, budget: int, deadline: float) -> int:
    """Send up to `budget` bytes, stopping early at `deadline`; return what was sent."""
    sent = 0
    while sent < budget and time.monotonic() < deadline:
        step = min(CHUNK, budget - sent)
        sock.sendall(PAYLOAD[:step])
        sent += step
    return sent


def _connect(addr: Addr, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock


# ---------------------------------------------------------------------------- clients
@dataclass
class Transfer:
    up: int
    down: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return (self.up + self.down) / self.seconds / 1e6


def one_way(addr: Addr, budget: int, limit: float) -> Transfer:
    """Stream up to `budget` bytes to the sink; the clock stops when the sink confirms."""
    with _connect(addr, limit + STALL_SLACK) as sock:
        sock.sendall(HEADER.pack(b"S", 0, 0))
        start = time.perf_counter()
        sent = _pump(sock, budget, time.monotonic() + limit)
        sock.shutdown(socket.SHUT_WR)
        (received,) = COUNT.unpack(_recv_exact(sock, COUNT.size))
        seconds = time.perf_counter() - start
    if received != sent:
        raise ConnectionError(f"sink received {received} bytes of {sent}")
    return Transfer(received, 0, seconds)


def duplex(addr: Addr, budget: int, limit: float) -> Transfer:
    """Stream up while the target streams down; the clock stops at the target's EOF."""
    with _connect(addr, limit + STALL_SLACK) as sock:
        sock.sendall(HEADER.pack(b"D", budget, int(limit * 1000)))
        start = time.perf_counter()
        up: list[int] = []
        failure: list[BaseException] = []

        def send_up() -> None:
            try:
                up.append(_pump(sock, budget, time.monotonic() + limit))
                sock.shutdown(socket.SHUT_WR)
            except BaseException as exc:  # reported by the measuring thread
                failure.append(exc)

        sender = threading.Thread(target=send_up, daemon=True)
        sender.start()
        down = _drain(sock)
        seconds = time.perf_counter() - start
        sender.join(STALL_SLACK)
    if failure or not up:
        raise ConnectionError(f"upstream failed: {failure[0] if failure else 'stalled'}")
    return Transfer(up[0], down, seconds)


def parallel(addr: Addr, connections: int, budget: int, limit: float) -> Transfer:
    """`connections` sinks at once, `budget` bytes in all; aggregate of what arrived."""
    share = max(1, budget // connections)
    gate = threading.Barrier(connections + 1, timeout=STALL_SLACK)
    acked = [0] * connections
    failures: list[BaseException] = []
    socks = [_connect(addr, limit + STALL_SLACK) for _ in range(connections)]

    def run(index: int, sock: socket.socket) -> None:
        try:
            sock.sendall(HEADER.pack(b"S", 0, 0))
            gate.wait()
            sent = _pump(sock, share, time.monotonic() + limit)
            sock.shutdown(socket.SHUT_WR)
            (acked[index],) = COUNT.unpack(_recv_exact(sock, COUNT.size))
            if acked[index] != sent:
                raise ConnectionError(f"sink received {acked[index]} bytes of {sent}")
        except BaseException as exc:
            failures.append(exc)
            gate.abort()

    threads = [threading.Thread(target=run, args=(i, s), daemon=True) for i, s in enumerate(socks)]
    try:
        for t in threads:
            t.start()
        try:
            gate.wait()
        except threading.BrokenBarrierError:
            for t in threads:
                t.join(STALL_SLACK)
            raise ConnectionError(f"a connection failed before the start: {failures[:1]}") from None
        start = time.perf_counter()
        for t in threads:
            t.join(limit + STALL_SLACK)
        seconds = time.perf_counter() - start
    finally:
        for s in socks:
            s.close()
    if failures:
        raise ConnectionError(f"{len(failures)} of {connections} connections failed: {failures[0]}")
    return Transfer(sum(acked), 0, seconds)


def round_trips(addr: Addr, count: int, size: int, warmup: int = 200) -> list[int]:
    """`count` echo round trips of `size` bytes on one connection, in nanoseconds."""
    message = PAYLOAD[:size]
    buf = bytearray(size)
    view = memoryview(buf)
    samples: list[int] = []
    clock = time.perf_counter_ns
    with _connect(addr, STALL_SLACK) as sock:
        for i in range(warmup + count):
            start = clock()
            sock.sendall(message)
            got = 0
            while got < size:
                n = sock.recv_into(view[got:])
                if n == 0:
                    raise ConnectionError("echo closed the connection")
                got += n
            if i >= warmup:
                samples.append(clock() - start)
    if buf != message:
        raise ConnectionError("echo returned different bytes")
    return samples


def new_connections(addr: Addr, count: int, warmup: int = 10) -> list[int]:
    """Connect, echo one byte, close; `count` times; nanoseconds to the echoed byte."""
    samples: list[int] = []
    clock = time.perf_counter_ns
    for i in range(warmup + count):
        start = clock()
        with _connect(addr, STALL_SLACK) as sock:
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise ConnectionError("no echo on a new connection")
            if i >= warmup:
                samples.append(clock() - start)
    return samples


# ---------------------------------------------------------------------------- processes
def start_server(kind: str) -> tuple[subprocess.Popen[bytes], Addr]:
    """Start a target server process; its stdin stays open for as long as it should live."""
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        stop_server(proc)
        raise RuntimeError(f"{kind} server did not start (exit {proc.returncode})")
    return proc, ("127.0.0.1", int(line))


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(2.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


if __name__ == "__main__":
    servers = {"echo": serve_echo, "bulk": serve_bulk}
    if len(sys.argv) != 2 or sys.argv[1] not in servers:
        sys.exit(f"usage: {sys.argv[0]} echo|bulk")
    with contextlib.suppress(KeyboardInterrupt):
        servers[sys.argv[1]]()
