"""What every attack of bench_hostile.py shares, and the processes the suite starts.

Theory of operation. Each attack runs in its own process (`python _attack_kit.py attack
NAME JSON`), so a busy attacker never shares a GIL or an event loop with the honest
measurement or with the benchmark's sampling. It speaks the protocol with vx6's own
code (`vx6.net.dial.dial` with fresh identities; `send_plain` seals frames whose content
it chooses), prints one JSON line of what it achieved and exits. Every loop is bounded
by a count and by `Budget`, a deadline; every network wait has a timeout; everything
goes to loopback only. An attack must outlive a node that fights back: a link the victim
closes or refuses is counted and, within the bounds, replaced.

`python _attack_kit.py hold INTERVAL` is a target server: it accepts one connection per
INTERVAL seconds (0: as fast as it can), reads and discards what arrives and holds every
connection open, until its stdin closes. A large INTERVAL makes a target that is slow
to accept (the victim's connects wait in the backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import selectors
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _setup  # noqa: F401  (makes vx6 importable from a bare checkout)

from vx6.crypto.keys import Identity, StaticKey, key_from_text
from vx6.errors import StreamError
from vx6.net.dial import dial
from vx6.net.link import LinkProtocol
from vx6.wire.cells import CELL_SIZE, CellCommand

LOOPBACK = ("127.0.0.1", "::1")
DIAL_TIMEOUT = 5.0
HOLD_LIFETIME = 1200.0
CELL_NAMES = {int(c): c.name for c in CellCommand}


def raise_nofile() -> None:
    """Attackers and targets hold many sockets: lift the soft limit to the hard one."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Budget:
    """A deadline: `left()` seconds remain, `over` once it has passed."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    @property
    def over(self) -> bool:
        return time.monotonic() >= self.deadline


class Target:
    """Where the victim is and what it offers (from the benchmark, as JSON)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.host: str = spec["host"]
        self.port: int = int(spec["port"])
        self.dht_host: str = spec["dht_host"]
        self.dht_port: int = int(spec["dht_port"])
        if self.host not in LOOPBACK or self.dht_host not in LOOPBACK:
            raise SystemExit(f"refusing a non-loopback target {self.host}, {self.dht_host}")
        self.key = key_from_text(spec["key"])
        self.name: str = spec["name"]
        self.onion = bytes.fromhex(spec["onion"]) if spec.get("onion") else None
        self.services: dict[str, str] = spec.get("services", {})
        self.registry = Path(spec["registry"])
        # The victim's control socket: hidden-role rows read its counters at their peak.
        self.control: str | None = spec.get("control")
        # Hidden-service rows: the victim's alias, a target that accepts and never
        # answers, and the DHT endpoints of every node (the victim's first).
        self.alias: str | None = spec.get("alias")
        self.hold_port = int(spec.get("hold_port", 0))
        self.dht: list[str] = spec.get("dht", [])


class Peer:
    """A LinkOwner that only counts: records, cells, closes; streams it is offered are
    refused."""

    def __init__(self, stats: Counter[str]) -> None:
        self.stats = stats
        self.record_bytes = 0

    def link_established(self, link: LinkProtocol) -> None:
        pass

    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        if by_peer:
            self.stats["closed_by_victim"] += 1

    def stream_requested(self, link: LinkProtocol, sid: int, service: str, flags: int) -> None:
        link.reject_stream(sid, StreamError.UNKNOWN_SERVICE, "attacker")

    def records_received(self, link: LinkProtocol, records: tuple[bytes, ...]) -> None:
        self.stats["records_in"] += len(records)
        self.stats["record_bytes_in"] += sum(len(r) for r in records)

    def cells_received(self, link: LinkProtocol, chunks: tuple[bytes | memoryview, ...]) -> None:
        for chunk in chunks:
            self.stats["cell_bytes_in"] += len(chunk)
            for offset in range(0, len(chunk) - CELL_SIZE + 1, CELL_SIZE):
                command = chunk[offset + 4]  # after the 4-byte circuit id
                self.stats[f"cells_in_{CELL_NAMES.get(command, command)}"] += 1

    def link_paused(self, link: LinkProtocol, paused: bool) -> None:
        pass


class NullSink:
    """A stream end that accepts everything and remembers how the open went."""

    def __init__(self, stats: Counter[str]) -> None:
        self.stats = stats

    def on_opened(self) -> None:
        self.stats["streams_opened"] += 1

    def on_open_failed(self, code: int, reason: str) -> None:
        self.stats["streams_refused"] += 1

    def on_data(self, data: bytes | memoryview) -> None:
        pass

    def on_end(self) -> None:
        pass

    def on_reset(self, code: int) -> None:
        self.stats["streams_reset"] += 1

    def on_writable(self) -> None:
        pass

    def on_link_paused(self, paused: bool) -> None:
        pass


def fresh_identity() -> tuple[Identity, StaticKey]:
    return Identity(os.urandom(32)), StaticKey(os.urandom(32))


async def open_link(
    t: Target,
    stats: Counter[str],
    keys: tuple[Identity, StaticKey] | None = None,
    timeout: float = DIAL_TIMEOUT,
) -> LinkProtocol | None:
    """A link to the victim under `keys` (fresh ones by default), or None (counted)."""
    identity, link_key = keys or fresh_identity()
    stats["dials"] += 1
    try:
        link = await dial(
            Peer(stats), t.host, t.port, identity=identity, link_key=link_key, timeout=timeout
        )
    except (OSError, TimeoutError, Exception) as exc:  # refused, reset, timed out, closed
        stats[f"dial_failed_{type(exc).__name__}"] += 1
        return None
    stats["links_up"] += 1
    return link


def send_plain(link: LinkProtocol, plaintext: bytes) -> bool:
    """Seal one frame whose plaintext we choose and write it; False if the link is gone."""
    if not link.is_open or link.transport is None or link.transport.is_closing():
        return False
    link.core._emit_frame(plaintext)
    link._write_out()
    return True


def backlog(link: LinkProtocol) -> int:
    """Bytes our side has queued but the kernel has not taken (the victim not reading)."""
    return link.transport.get_write_buffer_size() if link.transport is not None else 0


async def bounded_gather(jobs: list[Any], limit: int) -> list[Any]:
    """Run coroutines at most `limit` at a time (handshakes cost both sides CPU)."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Any) -> Any:
        async with gate:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs), return_exceptions=True)


def close_all(links: list[LinkProtocol | None]) -> None:
    for link in links:
        if link is not None:
            with contextlib.suppress(Exception):
                link.close()


# ---------------------------------------------------------------- the hold target
def serve_hold(interval: float) -> None:
    raise_nofile()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4 if interval > 0 else 4096)
    print(listener.getsockname()[1], flush=True)
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(0)), daemon=True).start()
    threading.Timer(HOLD_LIFETIME, lambda: os._exit(3)).start()
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    if interval <= 0:
        sel.register(listener, selectors.EVENT_READ, None)
    buf = bytearray(65536)
    next_accept = time.monotonic()
    while True:
        wait = max(0.0, next_accept - time.monotonic()) if interval > 0 else None
        events = sel.select(timeout=wait)
        if interval > 0 and time.monotonic() >= next_accept:
            _accept(listener, sel, 1)  # slow to accept: one per interval
            next_accept = time.monotonic() + interval
        for key, _ in events:
            if key.data is None:
                _accept(listener, sel, 256)
                continue
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                if conn.recv_into(buf):
                    continue
            except OSError:
                pass
            sel.unregister(conn)
            conn.close()


def _accept(listener: socket.socket, sel: selectors.BaseSelector, most: int) -> None:
    with contextlib.suppress(BlockingIOError, OSError):
        for _ in range(most):
            conn, _addr = listener.accept()
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ, True)


async def _run(attack: Any, target: Target, params: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await attack(target, params)
    return result


def main() -> None:
    if sys.argv[1:2] == ["hold"]:
        serve_hold(float(sys.argv[2]))
        return
    if sys.argv[1:2] != ["attack"] or len(sys.argv) != 4:
        sys.exit("usage: _attack_kit.py hold INTERVAL | attack NAME JSON")
    import _attacks
    import _attacks_descriptors
    import _attacks_discovery
    import _attacks_hidden
    import _attacks_more
    import _attacks_replay

    raise_nofile()
    name, spec = sys.argv[2], json.loads(sys.argv[3])
    table = {
        **_attacks.ATTACKS,
        **_attacks_more.ATTACKS,
        **_attacks_discovery.ATTACKS,
        **_attacks_hidden.ATTACKS,
        **_attacks_descriptors.ATTACKS,
        **_attacks_replay.ATTACKS,
    }
    started = time.monotonic()
    achieved: dict[str, Any] = asyncio.run(
        _run(table[name], Target(spec["target"]), spec["params"])
    )
    achieved["attack_seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(achieved), flush=True)


if __name__ == "__main__":
    main()
