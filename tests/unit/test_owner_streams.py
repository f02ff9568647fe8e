"""The owner side's stream setup in-process, with real sockets on loopback and a carrier
whose streams follow the real lifecycle table (core/streams.py): the bounds on streams
and on target connections being set up, the target timeout that can no longer fire after
the accept, a connection that completes after its stream is gone, and a connect that
fails because the node is out of file descriptors (owner_streams.py)."""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import vx6.node.owner as owner_module
from vx6.core.streams import Stream, StreamInput, StreamState
from vx6.errors import StreamError, UsageError
from vx6.net.carrier import StreamSink
from vx6.net.ports import SYSTEM_CLOCK
from vx6.net.ratelog import RATELOG
from vx6.node.owner import OwnerSide
from vx6.node.owner_streams import fd_bound
from vx6.node.resolver import Resolver
from vx6.store.config import NodeConfig, OwnerLimits, ServiceConfig, load_config
from vx6.store.registry import Registry
from vx6.wire.frames import OPEN_FLAG_PROBE

pytestmark = pytest.mark.timeout(60)

BOUND = 10.0  # every wait here is bounded by this


class FakeCarrier:
    """A StreamCarrier that records what the owner side did, each stream driven through
    the real state table: an input its state does not allow raises TransitionError."""

    send_quantum = 16384
    paused = False

    def __init__(self, peer: bytes | None) -> None:
        self.peer_identity = peer
        self.streams: dict[int, Stream] = {}
        self.sinks: dict[int, StreamSink] = {}
        self.accepted: list[int] = []
        self.rejected: dict[int, tuple[StreamError, str]] = {}
        self.finished: list[int] = []
        self.received: dict[int, bytearray] = {}
        self._next = 0

    def request(self, side: OwnerSide, service: str, flags: int = 0) -> int:
        self._next += 2
        sid = self._next
        self.streams[sid] = Stream(sid, StreamState.ACCEPTING, 1 << 20, 1 << 20)
        side.stream_requested(self, sid, service, flags)  # type: ignore[arg-type]
        return sid

    def lose(self) -> None:
        """The link dies: every sink learns LINK_LOST, as LinkProtocol._finish does."""
        sinks, self.sinks = self.sinks, {}
        for sink in sinks.values():
            sink.on_reset(StreamError.LINK_LOST)

    def attach(self, sid: int, sink: StreamSink) -> None:
        self.sinks[sid] = sink

    def accept_stream(self, sid: int) -> None:
        self.streams[sid].apply(StreamInput.ACCEPT)
        self.accepted.append(sid)

    def reject_stream(self, sid: int, code: StreamError, reason: str) -> None:
        self.sinks.pop(sid, None)
        self.rejected[sid] = (code, reason)  # kept even if the state table refuses it
        self.streams[sid].apply(StreamInput.REJECT)

    def send(self, sid: int, data: bytes | memoryview) -> bool:
        self.received.setdefault(sid, bytearray()).extend(data)
        return True

    def consumed(self, sid: int, n: int) -> None:
        pass

    def finish(self, sid: int) -> None:
        self.finished.append(sid)

    def reset(self, sid: int, code: StreamError = StreamError.CANCELLED) -> None:
        self.sinks.pop(sid, None)
        stream = self.streams[sid]
        if stream.state is not StreamState.CLOSED:
            stream.apply(StreamInput.RESET)


async def _no_lookup(target: bytes) -> bool:
    return False


class FakeNode:
    """The owner side's collaborators (registry, counters, a publisher that publishes
    nothing), with background-task failures kept."""

    def __init__(self, registry: Registry, limits: OwnerLimits) -> None:
        self.registry = registry
        self.limits = limits
        self.counters: dict[str, int] = {}
        self.failures: list[BaseException] = []

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def publish_service(self, name: str, public: bool, withdrawn: bool = False) -> None:
        pass

    def spawn(self, coro: Any) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception as exc:
                self.failures.append(exc)

        asyncio.get_running_loop().create_task(guarded())


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry.sqlite")
    yield reg
    reg.close()


def _listener(backlog: int = 64) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


def _side(node: FakeNode, port: int, *, public: bool = True, name: str = "svc") -> OwnerSide:
    side = OwnerSide(
        {},
        node.limits,
        registry=node.registry,
        resolver=Resolver(node.registry, _no_lookup, SYSTEM_CLOCK),
        publisher=node,
        count=node.count,
        clock=SYSTEM_CLOCK,
        spawn=lambda coro: coro.close(),
    )
    allow = () if public else ("k" * 52,)
    side.services[name] = ServiceConfig(name, "127.0.0.1", port, allow, public)
    return side


async def _until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(BOUND):
        while not predicate():
            await asyncio.sleep(0.01)  # polling a bounded condition
    assert predicate(), what


def _run(
    registry: Registry, body: Callable[[FakeNode], Awaitable[None]], limits: OwnerLimits
) -> FakeNode:
    node = FakeNode(registry, limits)

    async def main() -> None:
        errors: list[object] = []
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: errors.append(ctx))
        await body(node)
        await asyncio.sleep(0)
        assert not errors, errors

    asyncio.run(main())
    assert not node.failures, node.failures
    return node


# ---------------------------------------------------------------- finding 13
def test_a_target_that_answers_just_before_the_timeout_is_never_refused_after_the_accept(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection exists (connection_made ran, the stream is accepted) but the
    connect call returns only after the timeout: the old code then refused the accepted
    stream (TransitionError: REJECT in OPEN in a background task)."""
    timeout = 0.2
    monkeypatch.setattr(owner_module, "TARGET_CONNECT_TIMEOUT", timeout)
    target = _listener()

    async def body(node: FakeNode) -> None:
        loop = asyncio.get_running_loop()
        real = loop.create_connection

        async def late(*args: Any, **kwargs: Any) -> Any:
            made = await real(*args, **kwargs)
            await asyncio.sleep(timeout * 3)  # connected, but slow to return
            return made

        monkeypatch.setattr(loop, "create_connection", late)
        side = _side(node, target.getsockname()[1])
        carrier = FakeCarrier(b"c" * 32)
        sid = carrier.request(side, "svc")
        await _until(lambda: sid in carrier.accepted, "the accept")
        await asyncio.sleep(timeout * 4)  # past the timeout and the late return
        assert carrier.rejected == {}
        assert carrier.streams[sid].state is StreamState.OPEN
        (pipe,) = side.active
        assert pipe.transport is not None and not pipe.transport.is_closing()
        server, _ = target.accept()
        server.sendall(b"still here")
        await _until(lambda: bytes(carrier.received.get(sid, b"")) == b"still here", "data")
        server.close()

    _run(registry, body, OwnerLimits())
    target.close()


def test_a_target_that_never_answers_is_refused_once_by_the_timeout(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owner_module, "TARGET_CONNECT_TIMEOUT", 0.2)
    target = _listener(backlog=0)
    filler = socket.create_connection(target.getsockname())  # the accept queue is full

    async def body(node: FakeNode) -> None:
        side = _side(node, target.getsockname()[1])
        carrier = FakeCarrier(b"c" * 32)
        sid = carrier.request(side, "svc")
        await _until(lambda: sid in carrier.rejected, "the refusal")
        code, reason = carrier.rejected[sid]
        assert code is StreamError.TARGET_REFUSED and "timeout" in reason
        assert carrier.accepted == [] and not side.active
        assert side.streams.pending.held == side.streams.streams.held == 0

    node = _run(registry, body, OwnerLimits())
    assert node.counters.get("streams_refused_target") == 1
    filler.close()
    target.close()


# ---------------------------------------------------------------- finding 1
def test_a_stream_whose_link_dies_while_connecting_leaves_no_socket(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link goes away before the target connection completes; the connection
    completes later anyway. Nothing may keep that socket (the old pipe kept it)."""
    target = _listener()

    async def body(node: FakeNode) -> None:
        loop = asyncio.get_running_loop()
        real = loop.create_connection
        gate = asyncio.Event()
        made: list[asyncio.BaseTransport] = []
        started: list[int] = []

        async def held_back(factory: Any, *args: Any, **kwargs: Any) -> Any:
            started.append(1)

            # Connect only after the link is gone; shielded, as a connect that the
            # cancel cannot stop any more (it already completed in the kernel).
            async def connect() -> Any:
                await gate.wait()
                pair = await real(factory, *args, **kwargs)
                made.append(pair[0])
                return pair

            return await asyncio.shield(loop.create_task(connect()))

        monkeypatch.setattr(loop, "create_connection", held_back)
        side = _side(node, target.getsockname()[1])
        carrier = FakeCarrier(b"c" * 32)
        for _ in range(5):
            carrier.request(side, "svc")
        assert side.streams.pending.held == 5
        await _until(lambda: len(started) == 5, "the connects to start")
        carrier.lose()
        assert side.streams.pending.held == side.streams.streams.held == 0
        assert not side.active
        gate.set()
        await _until(lambda: len(made) == 5, "the late connections")
        await _until(lambda: all(t.is_closing() for t in made), "late connections closed")
        assert carrier.accepted == []

    _run(registry, body, OwnerLimits())
    target.close()


# ---------------------------------------------------------------- finding 9
def test_the_stream_over_the_per_key_bound_is_refused_and_another_key_still_gets_in(
    registry: Registry,
) -> None:
    target = _listener()
    limits = OwnerLimits(streams=16, streams_per_key=3, pending_connects=16)
    before = RATELOG.count("owner-stream-limit")

    async def body(node: FakeNode) -> None:
        side = _side(node, target.getsockname()[1])
        greedy, other = FakeCarrier(b"g" * 32), FakeCarrier(b"o" * 32)
        held = [greedy.request(side, "svc") for _ in range(3)]
        await _until(lambda: len(greedy.accepted) == 3, "three streams")
        over = greedy.request(side, "svc")
        assert greedy.rejected[over][0] is StreamError.RESOURCE_LIMIT
        assert "per client" in greedy.rejected[over][1]
        # Another key on another carrier (the same key would share the bound) gets in.
        sid = other.request(side, "svc")
        await _until(lambda: sid in other.accepted, "the other key's stream")
        # A stream that ends gives its place back.
        greedy.sinks[held[0]].on_reset(StreamError.CANCELLED)
        await _until(lambda: len(side.active) == 3, "the reset stream to end")
        again = greedy.request(side, "svc")
        await _until(lambda: again in greedy.accepted, "a stream in the freed place")
        greedy.lose()
        other.lose()

    node = _run(registry, body, limits)
    assert node.counters["streams_refused_limit"] == 1
    assert RATELOG.count("owner-stream-limit") == before + 1
    target.close()


def test_node_wide_bounds_keep_a_quarter_for_allow_listed_services(registry: Registry) -> None:
    target = _listener()
    limits = OwnerLimits(streams=4, streams_per_key=4, pending_connects=4)

    async def body(node: FakeNode) -> None:
        side = _side(node, target.getsockname()[1])
        side.services["priv"] = ServiceConfig("priv", "127.0.0.1", target.getsockname()[1])
        side.allowed_keys = lambda svc: frozenset({b"t" * 32})  # type: ignore[method-assign]
        strangers = [FakeCarrier(bytes([i]) * 32) for i in range(4)]
        for c in strangers[:3]:
            c.request(side, "svc")
        await _until(lambda: all(c.accepted for c in strangers[:3]), "three public streams")
        last = strangers[3].request(side, "svc")
        assert strangers[3].rejected[last][0] is StreamError.RESOURCE_LIMIT
        trusted = FakeCarrier(b"t" * 32)
        sid = trusted.request(side, "priv")
        await _until(lambda: sid in trusted.accepted, "the allow-listed stream")
        beyond = trusted.request(side, "priv")
        assert "node-wide" in trusted.rejected[beyond][1]
        for c in [*strangers, trusted]:
            c.lose()

    _run(registry, body, limits)
    target.close()


def test_probes_and_anonymous_circuits_count_against_pending_connects(
    registry: Registry,
) -> None:
    """Anonymous circuit clients (no key) are bounded per circuit; probes hold a
    pending connect like any stream, and a probe whose link dies stops connecting."""
    target = _listener(backlog=0)
    filler = socket.create_connection(target.getsockname())  # every connect now waits
    limits = OwnerLimits(pending_connects=3, pending_connects_per_key=2)

    async def body(node: FakeNode) -> None:
        side = _side(node, target.getsockname()[1])
        circuit_a, circuit_b = FakeCarrier(None), FakeCarrier(None)
        circuit_a.request(side, "svc", OPEN_FLAG_PROBE)
        circuit_a.request(side, "svc")
        third = circuit_a.request(side, "svc", OPEN_FLAG_PROBE)
        assert circuit_a.rejected[third][0] is StreamError.RESOURCE_LIMIT
        circuit_b.request(side, "svc")  # another circuit: its own per-key share
        fourth = circuit_b.request(side, "svc")
        assert "node-wide" in circuit_b.rejected[fourth][1]
        assert side.streams.pending.held == 3
        circuit_a.lose()
        circuit_b.lose()
        assert side.streams.pending.held == 0

    node = _run(registry, body, limits)
    assert node.counters["streams_refused_limit"] == 2
    filler.close()
    target.close()


# ---------------------------------------------------------------- EMFILE
def test_out_of_file_descriptors_on_the_target_connect_is_refused_and_logged(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = RATELOG.count("owner-target-out-of-fds")

    async def body(node: FakeNode) -> None:
        loop = asyncio.get_running_loop()

        async def no_fds(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(loop, "create_connection", no_fds)
        side = _side(node, 9)
        carrier = FakeCarrier(b"c" * 32)
        sid = carrier.request(side, "svc")
        await _until(lambda: sid in carrier.rejected, "the refusal")
        code, reason = carrier.rejected[sid]
        assert code is StreamError.RESOURCE_LIMIT
        assert "file descriptors" in reason
        assert side.streams.pending.held == side.streams.streams.held == 0

    node = _run(registry, body, OwnerLimits())
    assert node.counters["streams_refused_fd_limit"] == 1
    assert RATELOG.count("owner-target-out-of-fds") == before + 1


# ---------------------------------------------------------------- configuration
def test_owner_limits_come_from_the_config_file_and_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert load_config(path).owner_limits == OwnerLimits(4096, 256, 512, 128)
    path.write_text("[owner_limits]\nstreams = 100\npending_connects_per_key = 4\n")
    cfg = load_config(path)
    assert cfg.owner_limits == OwnerLimits(100, 256, 512, 4)
    assert cfg.with_flags(NodeConfig()).owner_limits == cfg.owner_limits
    for bad in ("streams = 0", "streams = true", 'streams = "9"', "stream = 5"):
        path.write_text(f"[owner_limits]\n{bad}\n")
        with pytest.raises(UsageError, match="owner_limits"):
            load_config(path)


def test_the_stream_bound_stays_under_half_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fd_bound(10**9) == max(1, soft // 2)
    assert fd_bound(3) == 3
