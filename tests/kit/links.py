"""In-memory link pairs: two sans-IO link cores (core/link.py) pumped against each
other under a virtual clock, no sockets and no sleeps.

Theory of operation. A `Net` holds two `Peer`s (a: initiator, b: responder), each one
`Link` plus what its application saw, joined by two `Wire`s (one per direction) that hold
the bytes written and not yet delivered. `pump()` delivers everything both ways until
neither side has anything left to say (optionally in pieces chosen by a splitter), and
`tick(now)` advances the virtual clock and fires the cores' due timers. A tapped wire
also decrypts a copy of the traffic and counts DATA and CREDIT per stream.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict, deque
from collections.abc import Callable

from vx6.core import events as ev
from vx6.core.link import Link
from vx6.core.link_config import LinkConfig
from vx6.crypto.keys import Identity, StaticKey
from vx6.crypto.noise import CipherState
from vx6.wire import frames as fr

ID_A, ID_B, ID_C = (Identity(bytes([n]) * 32) for n in (1, 2, 3))
LINK_A, LINK_B, LINK_C = (StaticKey(bytes([n]) * 32) for n in (11, 12, 13))
EPHEMERAL_A, EPHEMERAL_B = bytes([21]) * 32, bytes([22]) * 32
KIB, MIB = 1024, 1024 * 1024

Splitter = Callable[[int], list[int]]


class Peer:
    """One link plus what its application has seen; optionally accepts and consumes."""

    def __init__(self, name: str, link: Link) -> None:
        self.name = name
        self.link = link
        self.log: list[ev.Event] = []
        self.received: dict[int, bytearray] = defaultdict(bytearray)
        self.auto_accept = True
        self.auto_consume = True

    def collect(self) -> list[ev.Event]:
        new = self.link.events()
        for event in new:
            if isinstance(event, ev.StreamDataReceived):
                self.received[event.stream_id] += event.data
                if self.auto_consume:
                    self.link.consumed(event.stream_id, len(event.data))
            elif isinstance(event, ev.StreamOpenRequested) and self.auto_accept:
                self.link.accept_stream(event.stream_id)
        self.log.extend(new)
        return new

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.log if isinstance(e, kind)]

    @property
    def closed_with(self) -> ev.LinkClosed | None:
        closes = self.of(ev.LinkClosed)
        assert len(closes) <= 1, closes
        return closes[0] if closes else None


class Wire:
    """One direction of the connection: bytes the sender wrote and the receiver has not
    read yet. Once `tap()` is called it also decrypts a copy of every transport message
    (a shadow CipherState sharing the sender's AEAD key with its own nonce) and counts,
    per stream, DATA bytes written and CREDIT granted, and which of those have arrived."""

    def __init__(self, sender: Peer, receiver: Peer) -> None:
        self.sender = sender
        self.receiver = receiver
        self.buffer = bytearray()
        self.written = 0  # bytes ever put on this wire
        self.delivered = 0
        self._shadow: CipherState | None = None
        self._in_flight: deque[tuple[int, bytes]] = deque()  # (end offset, plaintext)
        self.data_written: Counter[int] = Counter()
        self.data_arrived: Counter[int] = Counter()
        self.credit_arrived: Counter[int] = Counter()
        # (frame type, stream id) of every stream frame: DATA, OPEN ... RESET
        self.frames_written: Counter[tuple[int, int]] = Counter()
        self.frames_arrived: Counter[tuple[int, int]] = Counter()

    def tap(self) -> None:
        keys = self.sender.link._keys
        assert keys is not None and not self.buffer
        shadow = CipherState(bytes(32))
        shadow._aead = keys.send._aead  # type: ignore[misc]
        shadow.nonce = keys.send.nonce
        self._shadow = shadow

    def take(self) -> None:
        # One piece may be a length prefix and the next its message: join what was written.
        written = b"".join(self.sender.link.data_to_send())
        if written:
            self._append(written)

    def _append(self, chunk: bytes) -> None:
        if self._shadow is not None:
            pos = 0
            while pos < len(chunk):
                end = pos + 2 + int.from_bytes(chunk[pos : pos + 2], "big")
                plain = self._shadow.decrypt(chunk[pos + 2 : end])
                self._in_flight.append((self.written + end, plain))
                self._count(plain, self.frames_written, self.data_written)
                pos = end
        self.buffer += chunk
        self.written += len(chunk)

    def inject(self, plaintext: bytes) -> None:
        """Encrypt a hand-made frame with the sender's own CipherState and queue it after
        everything the sender wrote so far."""
        self.take()
        keys = self.sender.link._keys
        assert keys is not None
        sealed = keys.send.encrypt(plaintext)
        self._append(fr.length_prefix(len(sealed)) + sealed)

    def push_raw(self, raw: bytes) -> None:
        assert self._shadow is None
        self.buffer += raw
        self.written += len(raw)

    def deliver(self, n: int, now: float) -> None:
        chunk = bytes(self.buffer[:n])
        del self.buffer[:n]
        self.delivered += len(chunk)
        self.receiver.link.receive(chunk, now)
        while self.receiver.link.backlogged:  # over one turn's budget: the next turns
            self.receiver.link.receive(b"", now)
        while self._in_flight and self._in_flight[0][0] <= self.delivered:
            plain = self._in_flight.popleft()[1]
            self._count(plain, self.frames_arrived, self.data_arrived)
            if plain[:1] == bytes([fr.FrameType.CREDIT]) and len(plain) == 9:
                self.credit_arrived[int.from_bytes(plain[1:5], "big")] += int.from_bytes(
                    plain[5:9], "big"
                )

    @staticmethod
    def _count(plain: bytes, frames: Counter[tuple[int, int]], data: Counter[int]) -> None:
        if plain and fr.FrameType.DATA <= plain[0] <= fr.FrameType.RESET and len(plain) >= 5:
            sid = int.from_bytes(plain[1:5], "big")
            frames[(plain[0], sid)] += 1
            if plain[0] == fr.FrameType.DATA:
                data[sid] += len(plain) - 5


class Net:
    """Two peers (a: initiator, b: responder) joined by two wires, and a virtual clock."""

    def __init__(self, a: Link, b: Link, now: float = 0.0) -> None:
        self.a, self.b = Peer("a", a), Peer("b", b)
        self.ab, self.ba = Wire(self.a, self.b), Wire(self.b, self.a)
        self.now = now

    def settle(self) -> None:
        """Let both applications react and collect what the links wrote."""
        for _ in range(3):
            self.a.collect()
            self.b.collect()
        self.ab.take()
        self.ba.take()

    def pump(self, split: Splitter | None = None, max_rounds: int = 100_000) -> None:
        """Deliver everything both ways until nobody has anything left to say."""
        for _ in range(max_rounds):
            self.settle()
            if not self.ab.buffer and not self.ba.buffer:
                return
            for wire in (self.ab, self.ba):
                sizes = split(len(wire.buffer)) if split else [len(wire.buffer)]
                for size in sizes:
                    wire.deliver(size, self.now)
                    self.settle()
        raise AssertionError("pump did not settle")

    def tick(self, now: float) -> None:
        self.now = now
        for peer in (self.a, self.b):
            deadline = peer.link.next_deadline()
            if deadline is not None and now >= deadline:
                peer.link.handle_timer(now)
        self.settle()

    def tap(self) -> None:
        self.settle()
        assert not self.ab.buffer and not self.ba.buffer
        self.ab.tap()
        self.ba.tap()


def make_links(
    *,
    ik: bool = False,
    config_a: LinkConfig | None = None,
    config_b: LinkConfig | None = None,
    expected_by_a: bytes | None = None,
    expected_by_b: bytes | None = None,
    remote_key: bytes | None = None,
    now: float = 0.0,
) -> tuple[Link, Link]:
    a = Link(
        initiator=True,
        identity=ID_A,
        link_key=LINK_A,
        ephemeral=EPHEMERAL_A,
        now=now,
        remote_link_key=remote_key or (LINK_B.public if ik else None),
        expected_identity=expected_by_a,
        config=config_a,
    )
    b = Link(
        initiator=False,
        identity=ID_B,
        link_key=LINK_B,
        ephemeral=EPHEMERAL_B,
        now=now,
        expected_identity=expected_by_b,
        config=config_b,
    )
    return a, b


def make_net(*, handshake: bool = True, **kwargs: object) -> Net:
    net = Net(*make_links(**kwargs))  # type: ignore[arg-type]
    if handshake:
        net.pump()
        assert net.a.link.established and net.b.link.established
    return net


def pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)
