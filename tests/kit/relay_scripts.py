"""Programs the relay namespace tests (test_netns_relay.py) run inside test namespaces,
and the small host-side reader that collects what they print.

Run as `python relay_scripts.py COMMAND ARGS...` inside a namespace:

* `relay MARKER_HEX VX6-ARGS...`: a real vx6 node (`vx6 VX6-ARGS...`) whose relay core
  says in its log if MARKER ever appears in a RELAY cell it handles (as received, or as
  it passes it on after its own layer), and can be told to tamper: SIGUSR1 arms it, and
  the next RELAY cell it passes on along a circuit where it is the third hop gets one
  byte of its body flipped (once; SIGUSR2 disarms). Test only: the patches live in this
  process, never in src/.
* `target MARKER_HEX`: an echo server on 127.0.0.1 that reports one JSON line per
  connection (its first 16 bytes as a tag, bytes, SHA-256, how many MARKERs it saw).
* `bulk PORT NBYTES [MARKER_HEX] [PROGRESS]`: a client that sends a tag and then NBYTES
  (random, or MARKER repeated) while reading the echo, and reports both hashes and how
  the connection ended ("eof", "reset", "timeout"). Prints "progress" once PROGRESS bytes
  came back.
* `interactive PORT`: echo 64 KiB, print "ready", wait (bounded) for SIGUSR1, then send
  1 MiB more and report how the connection ended.
* `capture IFNAME MARKER_HEX [SECONDS [SIDE_A SIDE_B]]`: an AF_PACKET capture of every
  frame on IFNAME until SIGTERM (or SECONDS, default 120); reports bytes, packets, drops
  and MARKER hits (also across frames), and with SIDE_A and SIDE_B (comma-separated IP
  addresses) the IPv6/IPv4 packets from an address of one side to one of the other,
  counted by kind ("between": {"tcp": n, "udp 4242-4242": n, "icmpv6 136": n, ...}; UDP
  by its two ports, lower first), with the first 1000 such frames whole (hex) as
  "between_frames", for the test to look into.
* `hoplimit REGISTRY KEY x 7`: dial the first relay, build a circuit through the first
  six keys with vx6's own ClientCircuit, then ask the sixth to EXTEND to the seventh;
  reports how the circuit ended.
* `flood REGISTRY KEY COUNT CONTROL`: COUNT valid CREATE cells at once over one link to
  relay KEY; counts CREATED and DESTROY answers, then reads the relay's circuit table
  from its control socket while the link is still up.

Every program is bounded in time and bytes and ends by printing one JSON line.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

MiB = 1024 * 1024
CHUNK = 256 * 1024
IO_TIMEOUT = 30.0
TAG_LEN = 16
TAMPER_DEPTH = 3
SCRIPT = Path(__file__).resolve()


def _out(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


# ---------------------------------------------------------------- host side
class Lines:
    """Collects the lines a spawned program prints (in a thread), for bounded waits."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()

    def wait(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {what} after {timeout}s; got {self.lines[-8:]}")
                self._cond.wait(left)

    def json(self, timeout: float, what: str, **match: Any) -> dict[str, Any]:
        def ok(line: str) -> bool:
            if not line.startswith("{"):
                return False
            obj = json.loads(line)
            return all(obj.get(k) == v for k, v in match.items())

        result: dict[str, Any] = json.loads(self.wait(ok, timeout, what))
        return result


# ---------------------------------------------------------------- data
_POOL = os.urandom(8 * MiB + CHUNK)


def source(nbytes: int, marker: bytes | None) -> Iterator[memoryview]:
    """NBYTES of random data, or of MARKER repeated (whole markers only)."""
    block = marker * (CHUNK // len(marker)) if marker else b""
    view = memoryview(block or _POOL)
    sent, index = 0, 0
    while sent < nbytes:
        n = min(CHUNK, nbytes - sent)
        offset = 0 if marker else (index * 7919 * 64) % (8 * MiB)
        yield view[offset : offset + min(n, len(view) - offset)]
        sent += min(n, len(view) - offset)
        index += 1


def duplex(
    sock: socket.socket, first: bytes, nbytes: int, marker: bytes | None, progress: int = 0
) -> dict[str, Any]:
    """Send `first` then NBYTES while reading to the end, concurrently; how it went."""
    sent_sha, got_sha = hashlib.sha256(), hashlib.sha256()
    box: dict[str, Any] = {"sent": 0, "send_error": None, "markers_sent": 0}

    def sender() -> None:
        try:
            for chunk in [memoryview(first), *source(nbytes, marker)]:
                sock.sendall(chunk)
                sent_sha.update(chunk)
                box["sent"] += len(chunk)
                if marker:
                    box["markers_sent"] += bytes(chunk).count(marker)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            box["send_error"] = repr(exc)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    buf = bytearray(CHUNK)
    received, end, started = 0, "eof", time.monotonic()
    try:
        while n := sock.recv_into(buf):
            got_sha.update(memoryview(buf)[:n])
            received += n
            if progress and received >= progress:
                print("progress", flush=True)
                progress = 0
            if time.monotonic() - started > 90:
                end = "deadline"
                break
    except ConnectionResetError:
        end = "reset"
    except TimeoutError:
        end = "timeout"
    thread.join(IO_TIMEOUT)
    sock.close()
    if end == "eof" and "ConnectionResetError" in str(box["send_error"]):
        end = "reset"  # the kernel reports an RST once: here the sender got it
    return {
        **box,
        "sent_sha": sent_sha.hexdigest(),
        "received": received,
        "received_sha": got_sha.hexdigest(),
        "end": end,
        "seconds": round(time.monotonic() - started, 3),
    }


def bulk(port: str, nbytes: str, marker_hex: str = "", progress: str = "0") -> None:
    tag = os.urandom(TAG_LEN // 2).hex().encode()
    marker = bytes.fromhex(marker_hex) or None
    with socket.create_connection(("127.0.0.1", int(port)), timeout=IO_TIMEOUT) as sock:
        _out({"tag": tag.decode(), **duplex(sock, tag, int(nbytes), marker, int(progress))})


def interactive(port: str) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    tag = os.urandom(TAG_LEN // 2).hex().encode()
    with socket.create_connection(("127.0.0.1", int(port)), timeout=IO_TIMEOUT) as sock:
        first = tag + os.urandom(64 * 1024 - TAG_LEN)
        sock.sendall(first)
        echoed = b""
        while len(echoed) < len(first) and (data := sock.recv(len(first) - len(echoed))):
            echoed += data
        print("ready", flush=True)
        go = signal.sigtimedwait({signal.SIGUSR1}, IO_TIMEOUT)
        result = duplex(sock, b"", MiB, None) if go else {"end": "never armed"}
        _out({"tag": tag.decode(), "first_echo_ok": echoed == first, **result})


# ---------------------------------------------------------------- owner-side target
def target(marker_hex: str) -> None:
    marker = bytes.fromhex(marker_hex)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    print(srv.getsockname()[1], flush=True)
    lock = threading.Lock()

    def serve(conn: socket.socket) -> None:
        digest, total, hits, tail, head = hashlib.sha256(), 0, 0, b"", b""
        buf = bytearray(CHUNK)
        end = "eof"
        try:
            while n := conn.recv_into(buf):
                data = bytes(buf[:n])
                conn.sendall(data)
                digest.update(data)
                total += n
                head = (head + data[:TAG_LEN])[:TAG_LEN]
                window = tail + data
                hits += window.count(marker)
                tail = window[-(len(marker) - 1) :]
            conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            end = type(exc).__name__
        finally:
            conn.close()
        if total:  # `vx6 connect` probes the target once with an empty connection
            report = {"tag": head.decode(errors="replace"), "received": total, "end": end}
            with lock:
                _out({**report, "sha256": digest.hexdigest(), "markers": hits})

    while True:
        conn, _ = srv.accept()
        conn.settimeout(IO_TIMEOUT * 2)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


# ---------------------------------------------------------------- capture
def _ip_pair(frame: bytes) -> tuple[bytes, bytes, str] | None:
    """(source, destination, kind) of an Ethernet frame carrying IPv6 or IPv4, else None;
    the kind is "tcp", "udp LOW-HIGH" (its ports), "icmpv6 TYPE" or "ip PROTOCOL"."""
    ethertype = frame[12:14]
    if ethertype == b"\x86\xdd" and len(frame) >= 54:
        src, dst, proto, l4 = frame[22:38], frame[38:54], frame[20], frame[54:]
    elif ethertype == b"\x08\x00" and len(frame) >= 34:
        src, dst, proto, l4 = (
            frame[26:30],
            frame[30:34],
            frame[23],
            frame[14 + 4 * (frame[14] & 15) :],
        )
    else:
        return None
    if proto == 6:
        kind = "tcp"
    elif proto == 17 and len(l4) >= 4:
        ports = sorted(struct.unpack("!HH", l4[:4]))
        kind = f"udp {ports[0]}-{ports[1]}"
    elif proto == 58 and l4:
        kind = f"icmpv6 {l4[0]}"
    else:
        kind = f"ip {proto}"
    return src, dst, kind


def _addresses(text: str) -> set[bytes]:
    """Comma-separated IP addresses as the packed bytes a frame holds."""
    return {
        socket.inet_pton(socket.AF_INET6 if ":" in x else socket.AF_INET, x)
        for x in text.split(",")
        if x
    }


def capture(ifname: str, marker_hex: str, seconds: str = "120", a: str = "", b: str = "") -> None:
    marker = bytes.fromhex(marker_hex)
    side_a, side_b = _addresses(a), _addresses(b)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 * MiB)  # SO_RCVBUFFORCE (root)
    sock.bind((ifname, 0))
    sock.settimeout(0.05)
    print("ready", flush=True)
    buf = bytearray(256 * 1024)
    total = packets = hits = 0
    between: collections.Counter[str] = collections.Counter()
    frames: list[str] = []
    tail = b""
    deadline = time.monotonic() + float(seconds)
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            n = sock.recv_into(buf)
        except TimeoutError:
            continue
        total += n
        packets += 1
        frame = bytes(buf[:n])
        window = tail + frame
        hits += window.count(marker)
        tail = window[-(len(marker) - 1) :]
        src, dst, kind = _ip_pair(frame) or (b"", b"", "")
        if (src in side_a and dst in side_b) or (src in side_b and dst in side_a):
            between[kind] += 1
            if len(frames) < 1000:
                frames.append(frame.hex())
    _, drops = struct.unpack("II", sock.getsockopt(263, 6, 8))  # PACKET_STATISTICS
    result = {"bytes": total, "packets": packets, "hits": hits, "drops": drops}
    if side_a:
        result |= {"between": dict(between), "between_frames": frames}
    _out(result)


# ---------------------------------------------------------------- raw circuits
class CellCollector:
    """The least a LinkOwner must do: cells go into a queue, everything else is ignored."""

    def __init__(self) -> None:
        self.cells: asyncio.Queue[Any] = asyncio.Queue()

    def link_established(self, link: Any) -> None:
        pass

    def link_closed(self, link: Any, code: int, reason: str, by_peer: bool) -> None:
        self.cells.put_nowait(None)

    def stream_requested(self, link: Any, sid: int, service: str, flags: int) -> None:
        from vx6.errors import StreamError

        link.reject_stream(sid, StreamError.PROTOCOL_ERROR, "no streams here")

    def records_received(self, link: Any, records: tuple[bytes, ...]) -> None:
        pass

    def cells_received(self, link: Any, chunks: tuple[bytes | memoryview, ...]) -> None:
        from vx6.wire.cells import CELL_SIZE, decode_cell

        for chunk in chunks if isinstance(chunks, tuple) else (chunks,):
            for offset in range(0, len(chunk), CELL_SIZE):
                self.cells.put_nowait(decode_cell(bytes(chunk[offset : offset + CELL_SIZE])))

    def link_paused(self, link: Any, paused: bool) -> None:
        pass

    async def next(self, timeout: float = 15.0) -> Any:
        async with asyncio.timeout(timeout):
            cell = await self.cells.get()
        if cell is None:
            raise ConnectionError("the link closed")
        return cell


def hop_specs(registry: str, keys: list[str]) -> list[Any]:
    """HopSpecs for node keys, from their signed node records in a node's registry."""
    from vx6.core.circuit.client import HopSpec
    from vx6.crypto.keys import key_from_text
    from vx6.node.pool import hop_endpoints
    from vx6.store.registry import Registry
    from vx6.wire.records import Kind, NodeBody, decode_body, decode_record

    specs = []
    with Registry(registry) as reg:
        for text in keys:
            key = key_from_text(text)
            stored = reg.get_record(int(Kind.NODE), key, "")
            assert stored is not None, f"no node record for {text}"
            body = decode_body(Kind.NODE, decode_record(stored.raw).body)
            assert isinstance(body, NodeBody)
            specs.append(HopSpec(key, body.onion_key, hop_endpoints(body.addresses)))
    return specs


async def dial_first(owner: CellCollector, spec: Any) -> Any:
    from vx6.crypto.keys import Identity, StaticKey
    from vx6.net.dial import dial

    where = spec.endpoints[0]
    return await dial(
        owner,
        where.host,
        where.port,
        identity=Identity(os.urandom(32)),
        link_key=StaticKey(os.urandom(32)),
        expected_identity=spec.identity,
    )


def emit(link: Any, circuit: Any, events: list[Any]) -> list[Any]:
    """Send the cells the circuit wrote; return the CircuitDestroyed events."""
    from vx6.core.circuit.events import CircuitDestroyed

    link.send_cells([cell for cells in circuit.out.take().values() for cell in cells])
    return [e for e in events if isinstance(e, CircuitDestroyed)]


async def hop_limit(registry: str, *keys: str) -> dict[str, Any]:
    from vx6.core.circuit.client import ClientCircuit, ClientState
    from vx6.crypto.keys import node_id
    from vx6.crypto.onion import ntor_client_start
    from vx6.wire.cells import Extend, RelayCommand, encode_extend

    specs = hop_specs(registry, list(keys))
    path, beyond = specs[:6], specs[6]
    owner = CellCollector()
    link = await dial_first(owner, path[0])
    circuit = ClientCircuit(1, 1, path, [os.urandom(32) for _ in path])
    emit(link, circuit, circuit.start())
    while circuit.state is not ClientState.OPEN:
        if gone := emit(link, circuit, circuit.cell_received(await owner.next())):
            return {"hops_keyed": circuit.hops_keyed, "destroyed": gone[0].reason.name}
    keyed = circuit.hops_keyed
    _, skin = ntor_client_start(node_id(beyond.identity), beyond.onion_key, os.urandom(32))
    extend = Extend(beyond.identity, skin, beyond.endpoints)
    emit(link, circuit, circuit.send(RelayCommand.EXTEND, 0, encode_extend(extend)))
    while not (gone := emit(link, circuit, circuit.cell_received(await owner.next()))):
        pass
    link.close()
    event = gone[0]
    return {"hops_keyed": keyed, "destroyed": event.reason.name, "local": event.local}


async def flood(registry: str, key: str, count: str, control: str) -> dict[str, Any]:
    from vx6.crypto.keys import node_id
    from vx6.crypto.onion import ntor_client_start
    from vx6.errors import DestroyReason
    from vx6.net.control import request
    from vx6.wire.cells import Create, Created, Destroy, encode_cell

    (spec,) = hop_specs(registry, [key])
    relay_id = node_id(spec.identity)
    cells = [
        encode_cell(
            Create(2 * i + 1, 1, ntor_client_start(relay_id, spec.onion_key, os.urandom(32))[1])
        )
        for i in range(int(count))
    ]
    owner = CellCollector()
    link = await dial_first(owner, spec)
    answers: collections.Counter[str] = collections.Counter()
    started = last = time.monotonic()
    link.send_cells(cells)  # all at once, as fast as the link takes them
    try:
        while sum(answers.values()) < len(cells):
            cell = await owner.next(timeout=20.0)
            if isinstance(cell, Created):
                answers["CREATED"] += 1
            elif isinstance(cell, Destroy):
                answers[DestroyReason(cell.reason).name] += 1
            last = time.monotonic()
    except (TimeoutError, ConnectionError) as exc:
        answers["unanswered:" + type(exc).__name__] = len(cells) - sum(answers.values())
    status = await asyncio.to_thread(request, Path(control), {"op": "status"}, 10.0)
    link.close()
    return {
        "answers": dict(answers),
        "seconds": round(last - started, 3),
        "table": status["circuits"]["relayed_circuits"],
    }


# ---------------------------------------------------------------- the tampering relay
def relay(marker_hex: str, *argv: str) -> int:
    from vx6.app import cli
    from vx6.core.circuit.outbox import CellOutbox
    from vx6.core.circuit.relay import RelayCore
    from vx6.wire.cells import CELL_HEADER

    marker = bytes.fromhex(marker_hex)
    armed = threading.Event()
    original_forward, original_relay, original_send, original_done = (
        RelayCore._forward,
        RelayCore._relay,
        CellOutbox.send,
        CellOutbox.done,
    )
    tamper_this_cell = threading.Event()

    def seen(data: Any) -> None:
        # bytes(): `in` on a memoryview compares items, never a subsequence
        if marker in bytes(data):
            os.write(1, b"RELAY SAW THE PLAINTEXT MARKER\n")

    def relay_cell(self: RelayCore, circuit: Any, from_prev: bool, body: Any, events: Any) -> None:
        """Every RELAY cell's body as it arrives, before this relay's layer comes off."""
        seen(body)
        original_relay(self, circuit, from_prev, body, events)

    def send(self: CellOutbox, link: int, cell: Any) -> None:
        """Every cell this relay queues (control cells, and cells for a busy link)."""
        seen(cell)
        original_send(self, link, cell)

    def cell_done(self: CellOutbox, link: int, cell: Any, writer: Any) -> None:
        """Every RELAY cell this relay writes, after its own layer, before it is final."""
        seen(cell)
        if tamper_this_cell.is_set():
            tamper_this_cell.clear()
            armed.clear()
            cell[CELL_HEADER + 100] ^= 0x01  # inside the next hop's ciphertext
            os.write(1, b"TAMPER: flipped one byte of a RELAY cell at depth 3\n")
        original_done(self, link, cell, writer)

    def forward(self: RelayCore, circuit: Any, body: bytes) -> Any:
        if armed.is_set() and circuit.depth == TAMPER_DEPTH and circuit.next is not None:
            tamper_this_cell.set()
        try:
            return original_forward(self, circuit, body)
        finally:
            tamper_this_cell.clear()

    def arm(*_: Any) -> None:
        armed.set()
        os.write(1, b"TAMPER: armed\n")

    RelayCore._forward = forward  # type: ignore[method-assign]
    RelayCore._relay = relay_cell  # type: ignore[method-assign]
    CellOutbox.send = send  # type: ignore[method-assign]
    CellOutbox.done = cell_done  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, arm)
    signal.signal(signal.SIGUSR2, lambda *_: armed.clear())
    return cli.main(list(argv))


def main() -> None:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "relay":
        sys.exit(relay(*args))
    elif command in ("hoplimit", "flood"):
        coro = hop_limit(*args) if command == "hoplimit" else flood(*args)
        _out(asyncio.run(coro))
    else:
        {"target": target, "bulk": bulk, "interactive": interactive, "capture": capture}[command](
            *args
        )


if __name__ == "__main__":
    main()
