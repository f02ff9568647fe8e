"""A hostile peer must not exhaust a node through one link (core/link.py, net/link.py).

Each finding of the hardening issue has a bounded test here: memory per unauthenticated
connection (no signature, no big buffers before the handshake), an absolute handshake
deadline, the per-turn frame budget, the control-frame rate limit, and the bound on
control output queued for a peer that does not read. Sans-IO cores run on a virtual
clock; the adapter runs on a real event loop, with a fake transport where the test needs
to decide when the socket is "full", and with real loopback sockets otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vx6.core.handshake as handshake_mod
import vx6.net.link as link_mod
import vx6.net.link_memory as memory_mod
from kit.net import RawPeer
from vx6.core.handshake import LinkHandshake
from vx6.core.link import Link
from vx6.core.link_config import LinkConfig
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import CloseCode, StreamError
from vx6.net.link import LinkProtocol
from vx6.net.ratelog import RATELOG
from vx6.wire import frames as fr

ID_A, ID_B = Identity(bytes([1]) * 32), Identity(bytes([2]) * 32)
LINK_A, LINK_B = StaticKey(bytes([11]) * 32), StaticKey(bytes([12]) * 32)
KIB = 1024


def _client(now: float = 0.0, config: LinkConfig | None = None) -> Link:
    return Link(
        initiator=True,
        identity=ID_A,
        link_key=LINK_A,
        ephemeral=bytes([21]) * 32,
        now=now,
        config=config,
    )


def _server(now: float = 0.0, config: LinkConfig | None = None) -> Link:
    return Link(
        initiator=False,
        identity=ID_B,
        link_key=LINK_B,
        ephemeral=bytes([22]) * 32,
        now=now,
        config=config,
    )


def _drain(link: Link) -> bytes:
    return b"".join(link.data_to_send())


def _established_pair(config: LinkConfig | None = None) -> tuple[Link, Link]:
    a, b = _client(), _server(config=config)
    for _ in range(4):
        b.receive(_drain(a), 0.0)
        a.receive(_drain(b), 0.0)
    assert a.established and b.established
    a.events(), b.events()
    return a, b


def _pings(link: Link, count: int) -> bytes:
    for token in range(count):
        link._send_frame(fr.Ping(token))
    return _drain(link)


def _count_messages(raw: bytes) -> int:
    pos = n = 0
    while pos < len(raw):
        pos += 2 + int.from_bytes(raw[pos : pos + 2], "big")
        n += 1
    return n


# --- finding 5: nothing big before authentication --------------------------------------


def test_handshake_construction_signs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = handshake_mod.link_key_proof

    def counting(identity: Identity, link_public: bytes) -> bytes:
        calls.append(link_public)
        return real(identity, link_public)

    monkeypatch.setattr(handshake_mod, "link_key_proof", counting)
    for initiator in (True, False):
        LinkHandshake(initiator=initiator, identity=ID_B, link_key=LINK_B, ephemeral=bytes(32))
    assert calls == []
    # Signed only when the message that carries the proof is built, and once.
    a = LinkHandshake(initiator=True, identity=ID_A, link_key=LINK_A, ephemeral=bytes([5]) * 32)
    b = LinkHandshake(initiator=False, identity=ID_B, link_key=LINK_B, ephemeral=bytes([6]) * 32)
    first = a.start()
    assert calls == []  # XX's first message carries no proof
    second = b.receive(first)
    assert second is not None and calls == [LINK_B.public]
    third = a.receive(second)
    assert third is not None and b.receive(third) is None
    assert calls == [LINK_B.public, LINK_A.public]
    assert a.result is not None and b.result is not None


_PROOF_A = handshake_mod.link_key_proof(ID_A, LINK_A.public)


def test_a_given_proof_is_used_and_nothing_is_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    proof_b = handshake_mod.link_key_proof(ID_B, LINK_B.public)
    monkeypatch.setattr(handshake_mod, "link_key_proof", _forbidden)
    a = Link(
        initiator=True,
        identity=ID_A,
        link_key=LINK_A,
        ephemeral=bytes([21]) * 32,
        now=0.0,
        link_proof=_PROOF_A,
    )
    b = Link(
        initiator=False,
        identity=ID_B,
        link_key=LINK_B,
        ephemeral=bytes([22]) * 32,
        now=0.0,
        link_proof=proof_b,
    )
    for _ in range(3):
        b.receive(_drain(a), 0.0)
        a.receive(_drain(b), 0.0)
    assert a.established and b.established
    assert a.peer_identity == ID_B.public and b.peer_identity == ID_A.public


def _forbidden(identity: Identity, link_public: bytes) -> bytes:
    raise AssertionError("signed a link proof")


def test_an_unauthenticated_link_core_is_small() -> None:
    _server()  # warm up imports and caches
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        links = [_server() for _ in range(50)]
        per_link = (tracemalloc.get_traced_memory()[0] - before) / len(links)
    finally:
        tracemalloc.stop()
    assert per_link < 16 * KIB, per_link  # was 64 KiB of scratch plus a signature


def test_the_scratch_buffer_comes_with_the_first_data() -> None:
    a, b = _established_pair()
    assert a._scratch is None
    sid = a.open_stream("svc")
    b.receive(_drain(a), 0.0)
    b.accept_stream(b.events()[0].stream_id)  # type: ignore[union-attr]
    a.receive(_drain(b), 0.0)
    a.send(sid, b"hello")
    assert a._scratch is not None and len(a._scratch) == fr.MAX_FRAME


def test_a_long_handshake_message_is_refused_before_it_is_buffered() -> None:
    b = _server()
    b.receive(fr.length_prefix(60_000) + bytes(100), 0.0)
    assert b.closed
    closes = [e for e in b.events() if getattr(e, "code", None) == CloseCode.HANDSHAKE_FAILED]
    assert closes and not b._inbuf


# --- the absolute handshake deadline ---------------------------------------------------


def test_a_trickling_peer_is_closed_at_the_absolute_deadline() -> None:
    assert LinkConfig().handshake_timeout <= 5.0
    b = _server(now=100.0, config=LinkConfig(handshake_timeout=5.0))
    first = _drain(_client())
    now = 100.0
    for byte in first:  # one byte a second, each one "activity"
        deadline = b.next_deadline()
        assert deadline == 105.0  # trickled bytes never push it later
        now += 1.0
        if now >= deadline:
            b.handle_timer(now)
            break
        b.receive(bytes([byte]), now)
    assert b.closed and now == 105.0
    assert [e.code for e in b.events() if hasattr(e, "code")] == [CloseCode.HANDSHAKE_FAILED]


# --- finding 3: one link cannot monopolise the loop ------------------------------------


def test_one_read_of_pings_is_answered_a_budget_at_a_time() -> None:
    a, b = _established_pair()  # the defaults
    b.receive(_pings(a, 20_000), 1.0)  # about 540 KiB of PINGs in one read
    assert _count_messages(_drain(b)) == LinkConfig().frames_per_turn


def test_one_receive_handles_at_most_the_budget_and_keeps_the_rest() -> None:
    config = LinkConfig(frames_per_turn=256, control_rate=1e9, control_burst=10**9)
    a, b = _established_pair(config)
    blob = _pings(a, 20_000)  # about 540 KiB of PINGs in one read
    b.receive(blob, 1.0)
    assert b.backlogged
    assert _count_messages(_drain(b)) == 256  # 256 PONGs, the rest waits
    answered = 256
    turns = 1
    while b.backlogged:
        b.receive(b"", 1.0)
        answered += _count_messages(_drain(b))
        turns += 1
    assert answered == 20_000 and turns == -(-20_000 // 256)
    assert not b.closed


def test_a_ping_flood_is_closed_rate_limited() -> None:
    a, b = _established_pair(LinkConfig(control_rate=100.0, control_burst=200))
    b.receive(_pings(a, 150), 1.0)
    assert not b.closed  # within the burst
    b.receive(_pings(a, 100), 1.1)  # 10 tokens came back, 50 left: 100 is too many
    assert b.closed
    closes = [e for e in b.events() if hasattr(e, "reason")]
    assert [e.code for e in closes] == [CloseCode.RATE_LIMITED]  # type: ignore[union-attr]


def test_an_open_flood_is_rate_limited_too() -> None:
    a, b = _established_pair(LinkConfig(control_rate=10.0, control_burst=20, max_streams=8))
    for sid in range(1, 80, 2):
        a._send_frame(fr.Open(sid, "svc", 0))
    b.receive(_drain(a), 1.0)
    assert b.closed
    assert CloseCode.RATE_LIMITED in [getattr(e, "code", None) for e in b.events()]


def test_refused_opens_are_rate_limited_accepted_ones_are_not() -> None:
    a, b = _established_pair(LinkConfig(control_rate=10.0, control_burst=20))
    for sid in range(1, 200, 2):  # 100 opens at once, all accepted: no limit
        a._send_frame(fr.Open(sid, "svc", 0))
    b.receive(_drain(a), 1.0)
    for event in b.events():
        b.accept_stream(event.stream_id)  # type: ignore[union-attr]
    assert not b.closed
    for sid in range(201, 300, 2):  # 50 opens the node refuses
        a._send_frame(fr.Open(sid, "nope", 0))
    b.receive(_drain(a), 2.0)
    for event in b.events():
        if not b.closed:
            b.reject_stream(event.stream_id, StreamError.UNKNOWN_SERVICE, "no")  # type: ignore[union-attr]
    assert b.closed
    assert CloseCode.RATE_LIMITED in [getattr(e, "code", None) for e in b.events()]


def test_an_honest_keepalive_rate_is_never_limited() -> None:
    a, b = _established_pair(LinkConfig(control_rate=5.0, control_burst=10))
    now = 0.0
    for _ in range(2000):  # 4 a second for 500 s: under the rate
        now += 0.25
        b.receive(_pings(a, 1), now)
    assert not b.closed


# --- the adapter on an event loop ------------------------------------------------------


class Owner(RawPeer):
    def __init__(self) -> None:
        self.closed: list[tuple[int, str, bool]] = []
        self.established: list[LinkProtocol] = []

    def link_established(self, link: LinkProtocol) -> None:
        self.established.append(link)

    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        self.closed.append((code, reason, by_peer))


class FakeTransport:
    """Keeps what the protocol writes; past `high` bytes it says "paused" and never drains
    (a peer that does not read)."""

    def __init__(self, proto: LinkProtocol, high: int | None = None) -> None:
        self.proto = proto
        self.high = high
        self.buf = bytearray()
        self.reading = True
        self.closing = False
        self.aborted = False
        self.paused = False
        self.most = 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 9), "sockname": ("127.0.0.1", 4242)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.writelines([data])

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.buf += part
        self.most = max(self.most, len(self.buf))
        if self.high is not None and not self.paused and len(self.buf) > self.high:
            self.paused = True
            self.proto.pause_writing()

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return len(self.buf)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


def _feed(proto: LinkProtocol, data: bytes) -> None:
    """What the event loop does with one read: fill the offered buffer, report it."""
    buf = proto.get_buffer(-1)
    assert len(data) <= len(buf)
    buf[: len(data)] = data
    proto.buffer_updated(len(data))


def _run(body: Callable[[], object]) -> None:
    async def main() -> None:
        await body()  # type: ignore[misc]

    asyncio.run(main())


def _adapter_pair(
    config: LinkConfig, high: int | None = None, clock: Callable[[], float] | None = None
) -> tuple[Link, LinkProtocol, FakeTransport, Owner]:
    owner = Owner()
    proto = LinkProtocol(
        owner, initiator=False, identity=ID_B, link_key=LINK_B, config=config, clock=clock
    )
    transport = FakeTransport(proto, high)
    proto.connection_made(transport)  # type: ignore[arg-type]
    pre_auth = len(proto.get_buffer(-1))
    client = _client()
    for _ in range(3):
        _feed(proto, _drain(client))
        client.receive(transport.take(), 0.0)
    assert client.established and proto.is_open
    sizes.append((pre_auth, len(proto.get_buffer(-1))))
    return client, proto, transport, owner


sizes: list[tuple[int, int]] = []


def test_the_read_buffer_is_small_until_the_handshake_is_done() -> None:
    async def body() -> None:
        _adapter_pair(LinkConfig())
        assert sizes[-1] == (memory_mod.PRE_AUTH_READ, memory_mod.READ_BUFFER)
        assert memory_mod.PRE_AUTH_READ <= 4 * KIB

    _run(body)


def test_a_read_over_the_budget_pauses_reading_until_the_next_turn() -> None:
    async def body() -> None:
        client, proto, transport, _ = _adapter_pair(LinkConfig())
        _feed(proto, _pings(client, 19_000))  # about 512 KiB: one full read
        assert not transport.reading
        assert _count_messages(transport.take()) == 256
        # With the rate limit out of the way, the rest is answered a turn at a time.
        config = LinkConfig(frames_per_turn=256, control_rate=1e9, control_burst=10**9)
        client, proto, transport, _ = _adapter_pair(config)
        _feed(proto, _pings(client, 19_000))
        assert not transport.reading
        assert _count_messages(transport.take()) == 256
        answered = 256
        for _ in range(200):  # loop turns, bounded
            await asyncio.sleep(0)
            answered += _count_messages(transport.take())
            if transport.reading:
                break
        assert transport.reading and answered == 19_000 and proto.is_open

    _run(body)


def test_a_ping_flood_on_a_real_adapter_is_closed_rate_limited() -> None:
    async def body() -> None:
        client, proto, _, owner = _adapter_pair(LinkConfig())
        _feed(proto, _pings(client, 19_000))
        for _ in range(20):
            await asyncio.sleep(0)
            if owner.closed:
                break
        assert [c[0] for c in owner.closed] == [CloseCode.RATE_LIMITED]
        assert RATELOG.count("link-closed-RATE_LIMITED") >= 1

    _run(body)


def test_a_peer_that_never_reads_is_closed_at_the_control_output_bound() -> None:
    async def body() -> None:
        virtual = [0.0]
        client, proto, transport, owner = _adapter_pair(
            LinkConfig(), high=64 * KIB, clock=lambda: virtual[0]
        )
        for _ in range(20_000):  # ~540 KB of PONGs if all were answered: 200 s at 100/s
            virtual[0] += 0.01  # 100 a second: well under the rate limit
            _feed(proto, _pings(client, 1))
            if owner.closed:
                break
        assert [c[0] for c in owner.closed] == [CloseCode.RESOURCE_LIMIT]
        assert transport.aborted  # not left to flush into a peer that never reads
        bound = LinkConfig().max_unsent_control
        assert transport.most <= 64 * KIB + bound + 1 * KIB

    _run(body)


def test_a_closed_link_whose_output_does_not_drain_is_aborted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(link_mod, "CLOSE_GRACE", 0.01)

    async def body() -> None:
        client, proto, transport, owner = _adapter_pair(LinkConfig())
        _feed(proto, _pings(client, 2_000))  # over the burst: RATE_LIMITED
        await _wait(lambda: bool(owner.closed), 5, "closed")
        assert transport.closing and transport.buf  # its output never drains
        await _wait(lambda: transport.aborted, 5, "aborted after the grace period")

    _run(body)


def test_send_records_sends_nothing_while_the_peer_does_not_read() -> None:
    async def body() -> None:
        _, proto, transport, _ = _adapter_pair(LinkConfig())
        assert proto.send_records([b"r" * 100])
        assert transport.take()
        proto.pause_writing()
        assert not proto.send_records([b"r" * 100])
        assert not transport.take()
        proto.resume_writing()
        assert proto.send_records([b"r" * 100])

    _run(body)


# --- real sockets ----------------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _serve(factory: Callable[[], LinkProtocol]) -> tuple[asyncio.Server, int]:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)  # polling a condition, with a bound
    assert predicate(), what


def test_idle_connections_cost_little_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # (A connection over the node's caps is refused by the accept loop before any
    # LinkProtocol exists: tests/unit/test_accept.py.)
    count = 200
    made: list[LinkProtocol] = []
    owner = Owner()

    def factory() -> LinkProtocol:
        proto = LinkProtocol(owner, initiator=False, identity=ID_B, link_key=LINK_B)
        made.append(proto)
        return proto

    async def body() -> None:
        server, port = await _serve(factory)
        warm = socket.create_connection(("127.0.0.1", port))  # the one-off costs first
        warm.sendall(b"\x00")
        await _wait(lambda: len(made) == 1, 10, "first connection")
        await asyncio.sleep(0.05)
        signed: list[bytes] = []
        real = handshake_mod.link_key_proof

        def counting(identity: Identity, link_public: bytes) -> bytes:
            signed.append(link_public)
            return real(identity, link_public)

        monkeypatch.setattr(handshake_mod, "link_key_proof", counting)
        monkeypatch.setattr(memory_mod, "link_key_proof", counting, raising=False)
        before = _rss_kib()
        tracemalloc.start()
        socks = []
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", port))
                socks.append(sock)
            await _wait(lambda: len(made) == count + 1, 30, "all connections accepted")
            for sock in socks:
                with contextlib.suppress(OSError):  # refused ones may be reset already
                    sock.send(b"\x00")  # one byte each: the read buffer is offered
            await _wait(
                lambda: all(p._read_view is not None for p in made),
                10,
                "every accepted connection read its byte",
            )
            traced = tracemalloc.get_traced_memory()[0]
            grown = _rss_kib() - before
        finally:
            tracemalloc.stop()
            for sock in socks:
                sock.close()
            warm.close()
            server.close()
        print(f"{grown / count:.1f} KiB RSS, {traced / count / KIB:.1f} KiB traced per connection")
        assert grown / count < 64 * KIB  # was about 576 KiB
        assert traced / count < 32 * KIB
        assert signed == []  # signed once per process, before the measurement

    _run(body)


def test_a_trickling_peer_is_closed_at_the_deadline_on_a_real_socket() -> None:
    owner = Owner()

    def factory() -> LinkProtocol:
        config = LinkConfig(handshake_timeout=1.0)
        return LinkProtocol(owner, initiator=False, identity=ID_B, link_key=LINK_B, config=config)

    async def body() -> None:
        server, port = await _serve(factory)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        first = _drain(_client())
        sent = 0
        try:
            for byte in first * 3:  # at most ~10 s of trickling
                if owner.closed:
                    break
                writer.write(bytes([byte]))
                sent += 1
                await asyncio.sleep(0.1)  # pacing the trickle, not synchronising
            assert owner.closed, "still open after the trickle"
            assert owner.closed[0][0] == CloseCode.HANDSHAKE_FAILED
            assert sent < len(first)  # closed while the peer was still sending
            async with asyncio.timeout(5):
                assert await reader.read() == b""
        finally:
            writer.close()
            server.close()

    _run(body)


# --- the budget as a property -----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 400),
    budget=st.integers(1, 64),
    cuts=st.lists(st.integers(1, 4000), max_size=20),
)
def test_any_budget_and_any_reads_answer_every_ping_in_order(
    count: int, budget: int, cuts: list[int]
) -> None:
    config = LinkConfig(frames_per_turn=budget, control_rate=1e9, control_burst=10**9)
    a, b = _established_pair(config)
    blob = _pings(a, count)
    pos = 0
    answers = bytearray()
    for size in [*cuts, len(blob)]:
        chunk, pos = blob[pos : pos + size], pos + size
        b.receive(chunk, 1.0)
        while True:
            out = _drain(b)
            assert _count_messages(out) <= budget  # never more than a budget per call
            answers += out
            if not b.backlogged:
                break
            b.receive(b"", 1.0)
        if pos >= len(blob):
            break
    assert not b.closed and _count_messages(bytes(answers)) == count
    # Every PONG decrypts at the client, in nonce order: none lost, repeated or reordered.
    a.receive(bytes(answers), 1.0)
    while a.backlogged:
        a.receive(b"", 1.0)
    assert not a.closed and not a._inbuf


def test_nothing_refers_to_the_read_buffer_once_receive_returns() -> None:
    """What makes one read buffer for every link safe: after each receive the buffer is
    scribbled over (as the next read of another link would) and every byte the
    application got is still intact, including a message cut across reads."""
    a, b = _established_pair(LinkConfig(frames_per_turn=3))
    sid = a.open_stream("svc")
    b.receive(_drain(a), 0.0)
    b.accept_stream(b.events()[0].stream_id)  # type: ignore[union-attr]
    a.receive(_drain(b), 0.0)
    sent = bytes(range(256)) * 800  # 200 KiB: several DATA frames
    a.send(sid, sent)
    for token in range(20):
        a._send_frame(fr.Ping(token))
    wire = _drain(a)
    shared = bytearray(7777)  # reads of an odd size cut messages anywhere
    got: list[bytes | memoryview] = []

    def collect() -> None:
        got.extend(e.data for e in b.events() if hasattr(e, "data"))  # type: ignore[union-attr]

    for pos in range(0, len(wire), len(shared)):
        chunk = wire[pos : pos + len(shared)]
        shared[: len(chunk)] = chunk
        with memoryview(shared)[: len(chunk)] as view:
            b.receive(view, 1.0)
        collect()
        while b.backlogged:
            shared[:] = b"\xff" * len(shared)
            b.receive(b"", 1.0)
            collect()
        shared[:] = b"\xff" * len(shared)
    assert not b.closed
    assert b"".join(bytes(g) for g in got) == sent


def test_a_peer_that_never_reads_is_closed_on_a_real_socket() -> None:
    """Real loopback sockets with small kernel buffers, so the link's own write buffer
    is what fills: a peer that pings and never reads is closed with RESOURCE_LIMIT once
    the unsent control output passes the bound, and the buffer never grows past it."""
    owner = Owner()
    servers: list[LinkProtocol] = []
    bound = 16 * KIB
    config = LinkConfig(max_unsent_control=bound, control_rate=1e9, control_burst=10**9)

    class SmallBufferServer(LinkProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            super().connection_made(transport)

    def factory() -> LinkProtocol:
        proto = SmallBufferServer(
            owner, initiator=False, identity=ID_B, link_key=LINK_B, config=config
        )
        servers.append(proto)
        return proto

    async def body() -> None:
        loop = asyncio.get_running_loop()
        server, port = await _serve(factory)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        client_owner = Owner()
        _, client = await loop.create_connection(
            lambda: LinkProtocol(client_owner, initiator=True, identity=ID_A, link_key=LINK_A),
            sock=sock,
        )
        async with asyncio.timeout(10):
            await client.established
        assert client.transport is not None
        client.transport.pause_reading()  # from now on we never read
        most = 0
        try:
            for _ in range(200):  # at most 200 x 2000 PINGs (~11 MB)
                if owner.closed:
                    break
                for token in range(2000):
                    client.core._send_frame(fr.Ping(token))
                client.transport.writelines(client.core.data_to_send())
                for _ in range(3):
                    await asyncio.sleep(0)  # let the server's reads run
                if servers[0].transport is not None:
                    most = max(most, servers[0].transport.get_write_buffer_size())
                while client.transport.get_write_buffer_size() > 256 * KIB and not owner.closed:
                    await asyncio.sleep(0.001)  # pacing our own sending
        finally:
            client.transport.abort()
            server.close()
        assert [c[0] for c in owner.closed] == [CloseCode.RESOURCE_LIMIT]
        assert most <= link_mod.LINK_HIGH_WATER + bound + 64 * KIB, most

    _run(body)
