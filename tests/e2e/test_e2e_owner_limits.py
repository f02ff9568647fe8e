"""A hostile peer against the owner side of real node processes (the hardening issue,
findings 1, 9 and 11): streams whose link dies while their target connections are being
set up leave no socket behind; a client over the configured bound per key is refused
with RESOURCE_LIMIT while another client's stream goes on; and a client whose only link
to the owner is its sync link pins the owner's name on the first success."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import knows_owner
from kit.net import (
    RawPeer,
    TCPServer,
    connect,
    counters,
    echo_handler,
    echo_once,
    expose,
    forward_to,
    recv_exact,
    stderr_line,
    unique,
)
from vx6.app.localnet import LocalNet, LocalNode, wait_for
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import StreamError
from vx6.net.addresses import parse_endpoint
from vx6.net.dial import dial
from vx6.net.link import LinkProtocol

pytestmark = pytest.mark.timeout(90)

BOUND = 20.0  # every wait here is bounded by this


class Answer:
    """A stream sink that remembers the owner's answer to OPEN and the bytes back."""

    def __init__(self) -> None:
        self.opened = False
        self.failed: tuple[int, str] | None = None
        self.reset: int | None = None
        self.data = bytearray()

    def on_opened(self) -> None:
        self.opened = True

    def on_open_failed(self, code: int, reason: str) -> None:
        self.failed = (code, reason)

    def on_data(self, data: bytes | memoryview) -> None:
        self.data += data

    def on_end(self) -> None:
        pass

    def on_reset(self, code: int) -> None:
        self.reset = code

    def on_writable(self) -> None:
        pass

    def on_link_paused(self, paused: bool) -> None:
        pass


async def raw_link(node: LocalNode) -> LinkProtocol:
    """A link to `node` under a freshly generated identity, as any stranger can make."""
    host, port = parse_endpoint(node.listen)
    return await dial(
        RawPeer(), host, port, identity=Identity(os.urandom(32)), link_key=StaticKey(os.urandom(32))
    )


async def until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(BOUND):
        while not predicate():
            await asyncio.sleep(0.02)  # polling a bounded condition


def sockets_to(pid: int, port: int) -> int:
    """How many of process `pid`'s open sockets are TCP connections (in any state, so
    also connects in progress) to 127.0.0.1:`port`: its socket inodes from /proc/PID/fd
    matched against the kernel's table of IPv4 TCP sockets."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    remote = f"0100007F:{port:04X}"
    found = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == remote and fields[9] in inodes:
            found += 1
    return found


class SlowTarget:
    """A listener that takes one connection into its queue and then makes every further
    connect wait (the kernel drops SYNs to a full queue), until `start_accepting`: from
    then on it accepts everything that arrives and holds it open, as a busy sshd would."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start_accepting(self) -> None:
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def slow_target() -> Iterator[SlowTarget]:
    target = SlowTarget()
    yield target
    target.close()


def start_with_limits(net: LocalNet, name: str, table: str, **kwargs: object) -> LocalNode:
    home = net.base / name
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f"[owner_limits]\n{table}\n")
    return net.start(name, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- finding 1
def test_streams_whose_link_dies_while_their_target_connects_leave_no_socket(
    localnet: LocalNet, slow_target: SlowTarget
) -> None:
    owner = localnet.start(unique("leaky"))
    service = expose(owner, f"127.0.0.1:{slow_target.port}", public=True)
    pid = owner.process.pid
    opens = 30  # within the default 32 pending connects per key

    async def attack() -> None:
        link = await raw_link(owner)
        for _ in range(opens):
            link.open_stream(service, 0, Answer())
        # Every OPEN has its connect under way (one in the queue, the rest waiting)...
        await until(lambda: sockets_to(pid, slow_target.port) == opens, "all the connects")
        link.close()  # ...when the link goes away
        await until(lambda: link.closed_future.done(), "the link to close")

    asyncio.run(attack())
    wait_for(lambda: owner.call("status")["links"] == 0, BOUND, "the owner to drop the link")
    # The target gets to its queue only now: a connect still under way completes at its
    # next SYN retry (1 s, 3 s after the first), and the old pipe kept what completed.
    slow_target.start_accepting()
    wait_for(lambda: sockets_to(pid, slow_target.port) == 0, BOUND, "no target sockets left")
    assert owner.call("status")["streams_owner_active"] == 0
    # The connects were stopped, not just closed once they completed: across the SYN
    # retries the target sees at most the one connection that was already in its queue.
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: len(slow_target.held) > 1, 4.0, "a connect that was not stopped")
    assert len(slow_target.held) <= 1
    assert sockets_to(pid, slow_target.port) == 0


# ---------------------------------------------------------------- finding 9
def test_a_client_over_its_stream_bound_is_refused_and_another_client_still_connects(
    localnet: LocalNet,
) -> None:
    owner_name = unique("capped")
    owner = start_with_limits(localnet, owner_name, "streams_per_key = 3")
    bob = localnet.start(unique("bob"), peers=(owner.listen,))
    with TCPServer(echo_handler) as echo:
        service = expose(owner, echo.address, public=True)
        wait_for(lambda: knows_owner(bob, owner_name), BOUND, "bob to learn the owner")
        refused_before = counters(owner).get("streams_refused_limit", 0)

        async def greedy() -> int:
            link = await raw_link(owner)
            held = [Answer() for _ in range(3)]
            for answer in held:
                link.open_stream(service, 0, answer)
            await until(lambda: all(a.opened for a in held), "three streams to open")
            over = Answer()
            link.open_stream(service, 0, over)
            await until(lambda: over.failed is not None, "the answer to the fourth")
            assert over.failed is not None and over.failed[0] == StreamError.RESOURCE_LIMIT
            assert "per client" in over.failed[1], over.failed
            # Another client's stream works while the greedy one holds its three.
            port = forward_to(bob, owner_name, service)
            assert await asyncio.to_thread(echo_once, port, b"still served") == b"still served"
            assert all(a.reset is None for a in held)
            link.close()
            return port

        port = asyncio.run(greedy())
        assert counters(owner).get("streams_refused_limit", 0) == refused_before + 1
        assert "refused stream from" in owner.log_text()
        # A real client over the bound reads the existing message.
        wait_for(lambda: owner.call("status")["streams_owner_active"] == 0, BOUND, "no streams")
        with contextlib.ExitStack() as stack:
            for i in range(3):
                sock = stack.enter_context(connect(port))
                sock.sendall(b"%d" % i)
                assert recv_exact(sock, 1) == b"%d" % i
            result = bob.cli("nc", f"{owner_name}.{service}", input_bytes=b"one more\n")
        assert result.returncode != 0
        assert stderr_line(result).startswith("vx6: the owner's node is over its stream limit")


# ---------------------------------------------------------------- finding 11
def test_a_client_whose_only_link_is_the_sync_link_pins_the_name(localnet: LocalNet) -> None:
    owner_name = unique("synced")
    owner = localnet.start(owner_name)
    client = localnet.start(unique("client"), peers=(owner.listen,))
    wait_for(lambda: knows_owner(client, owner_name), BOUND, "the client to learn the owner")
    assert client.call("status")["links"] == 1  # the sync link is the only one
    assert client.call("resolve", address=f"{owner_name}.x")["pinned"] is False
    with TCPServer(echo_handler) as echo:
        service = expose(owner, echo.address, allow=[client.key])
        port = forward_to(client, owner_name, service)
        assert echo_once(port, b"over the sync link") == b"over the sync link"
    assert client.call("status")["links"] == 1  # no second link was dialled
    resolved = client.call("resolve", address=f"{owner_name}.x")
    assert resolved["pinned"] is True and resolved["key"] == owner.key
