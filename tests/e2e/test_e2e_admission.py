"""Who gets a link, against real node processes on loopback: a flood of links from fresh
keys, a same-source flood, a slowloris of silent connections and a process out of file
descriptors each leave room for honest clients (vx6/core/admission.py, vx6/net/accept.py).
Small caps are set in each node's config.toml so that every flood stays cheap."""

from __future__ import annotations

import asyncio
import os
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kit.net import RawPeer
from vx6.app.localnet import LocalNet, LocalNode, wait_for
from vx6.crypto.keys import Identity, StaticKey, key_to_text
from vx6.errors import LinkError
from vx6.net.addresses import parse_endpoint
from vx6.net.link import LinkProtocol

pytestmark = pytest.mark.timeout(180)

DIAL_TIMEOUT = 5.0
TRUSTED = Identity(os.urandom(32))


@pytest.fixture(scope="module")
def net() -> Iterator[LocalNet]:
    with LocalNet() as local:
        yield local


class Quiet(RawPeer):
    """The smallest LinkOwner: a client that only holds its link open."""

    def stream_requested(self, link: LinkProtocol, sid: int, service: str, flags: int) -> None:
        pass


async def dial_as(
    where: tuple[str, int], identity: Identity | None = None, source: str | None = None
) -> LinkProtocol:
    """A link to the node from a fresh key (or `identity`), optionally from `source`."""
    loop = asyncio.get_running_loop()
    me = identity or Identity(os.urandom(32))

    def factory() -> LinkProtocol:
        return LinkProtocol(
            Quiet(), initiator=True, identity=me, link_key=StaticKey(os.urandom(32))
        )

    async with asyncio.timeout(DIAL_TIMEOUT):
        local = (source, 0) if source else None
        _, link = await loop.create_connection(factory, *where, local_addr=local)
        try:
            await link.established
        except BaseException:
            link.close()
            raise
    return link


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)  # polling interval while waiting for a bounded condition


async def status(node: LocalNode) -> dict[str, Any]:
    return await asyncio.to_thread(node.call, "status")


def start_with_config(net: LocalNet, name: str, config: str, **kwargs: Any) -> LocalNode:
    home = net.base / name
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(config)
    return net.start(name, claim=False, **kwargs)


def counter(reply: dict[str, Any], name: str) -> int:
    return int(reply["counters"].get(name, 0))


# ------------------------------------------------------------ finding 2: link table
def test_a_flood_of_fresh_keys_leaves_room_for_trusted_and_new_clients(net: LocalNet) -> None:
    node = start_with_config(
        net,
        "fresh",
        f"""
[link_limits]
max_links = 16
reserved_links = 4

[services.web]
target = "127.0.0.1:9"
allow = ["{key_to_text(TRUSTED.public)}"]
""",
    )
    where = parse_endpoint(node.listen)

    async def run() -> None:
        attack: list[LinkProtocol] = []
        ours: list[LinkProtocol] = []
        try:
            for _ in range(30):  # every one completes its handshake, from a fresh key
                attack.append(await dial_as(where))
            # Untrusted links may fill 16 - 4; the oldest idle ones gave way.
            await eventually(lambda: sum(link.is_open for link in attack) <= 12, 10, "evictions")
            before = await status(node)
            assert before["links"] <= 12
            assert counter(before, "links_evicted") >= 18
            # A key on a service's allow-list gets in without anyone giving way (the
            # reserve), and so does an untrusted newcomer (an attacker's link does).
            trusted = await dial_as(where, TRUSTED)
            client = Identity(os.urandom(32))
            newcomer = await dial_as(where, client)
            ours += [trusted, newcomer]
            for link in ours:
                await asyncio.wait_for(link.ping(), DIAL_TIMEOUT)
            # A client restarted during the attack (its old link dropped without a word)
            # gets in again at once.
            assert newcomer.transport is not None
            newcomer.transport.abort()
            restarted = await dial_as(where, client)
            ours.append(restarted)
            await asyncio.wait_for(restarted.ping(), DIAL_TIMEOUT)
            # More fresh keys evict each other, never the trusted link.
            for _ in range(12):
                attack.append(await dial_as(where))
            await asyncio.wait_for(trusted.ping(), DIAL_TIMEOUT)
            assert trusted.is_open
            after = await status(node)
            assert after["links"] <= 16
            # and what the node holds is what the clients see open (once closes land)
            await eventually(
                lambda: node.call("status")["links"] == sum(link.is_open for link in attack + ours),
                10,
                "the node's links and the clients' open links to agree",
            )
        finally:
            for link in attack + ours:
                link.close()

    asyncio.run(run())


def test_a_same_source_flood_is_refused_while_another_source_gets_in(net: LocalNet) -> None:
    # Loopback normally counts per address and port (so test networks work); here the
    # config counts it per address, so that 127.0.0.1 and 127.0.0.2 are two hosts.
    node = start_with_config(
        net,
        "sources",
        """
listen = ["127.0.0.1:0"]
[link_limits]
links_per_host = 4
pending_per_source = 3
per_port_networks = []
""",
        listen="127.0.0.1:0",
    )
    where = parse_endpoint(node.listen)

    async def run() -> None:
        links: list[LinkProtocol] = []
        silent: list[socket.socket] = []
        try:
            refused = 0
            for _ in range(8):
                try:
                    links.append(await dial_as(where, source="127.0.0.1"))
                except (LinkError, OSError):
                    refused += 1
            assert (len(links), refused) == (4, 4)
            other = await dial_as(where, source="127.0.0.2")
            links.append(other)
            await asyncio.wait_for(other.ping(), DIAL_TIMEOUT)
            # Connections that never start a handshake: three wait, the rest are closed.
            for _ in range(5):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("127.0.0.3", 0))
                sock.connect(where)
                silent.append(sock)
            await eventually(
                lambda: counter(node.call("status"), "links_refused_pending_per_source") >= 2,
                10,
                "the silent connections beyond the per-source cap to be refused",
            )
            reply = await status(node)
            assert counter(reply, "links_refused_pending_per_source") == 2
            assert counter(reply, "links_refused_links_per_host") == 4
            assert all(link.is_open for link in links)
        finally:
            for link in links:
                link.close()
            for sock in silent:
                sock.close()

    asyncio.run(run())


class Slowloris:
    """Silent TCP connections from a thread, reopened (at a bounded pace and count) as
    soon as the node closes one."""

    def __init__(self, where: tuple[str, int], hold: int, reopen_limit: int) -> None:
        self.where = where
        self.socks = [self._open() for _ in range(hold)]
        self.reopened = 0
        self.limit = reopen_limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.connect(self.where)
        return sock

    def _run(self) -> None:
        while not self._stop.is_set() and self.reopened < self.limit:
            readable, _, _ = select.select(self.socks, [], [], 0.05)
            for sock in readable:
                if sock.recv(1) == b"":  # the node closed it: open another
                    self.socks.remove(sock)
                    sock.close()
                    self.socks.append(self._open())
                    self.reopened += 1
                    time.sleep(0.005)  # the attacker's pace: 200 connections/s at most

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.socks:
            sock.close()


def test_a_slowloris_beyond_the_pending_caps_does_not_block_a_handshake(net: LocalNet) -> None:
    node = start_with_config(net, "loris", "[link_limits]\npending_total = 32\nmax_links = 64\n")
    where = parse_endpoint(node.listen)
    loris = Slowloris(where, hold=100, reopen_limit=400)
    try:
        wait_for(
            lambda: counter(node.call("status"), "links_evicted") >= 60,
            15,
            "the oldest silent connections to be evicted",
        )

        async def honest() -> None:
            for _ in range(5):
                link = await dial_as(where)
                await asyncio.wait_for(link.ping(), DIAL_TIMEOUT)
                link.close()

        asyncio.run(honest())
    finally:
        loris.close()
    assert loris.reopened > 0, "the node never closed a silent connection"


# ------------------------------------------------------------ finding 16: backlog
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_listening_socket_has_a_backlog_of_512(net: LocalNet, loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    node = net.start(f"backlog-{loop}", claim=False, env={"VX6_EVENT_LOOP": loop})
    _, port = parse_endpoint(node.listen)
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "LISTEN" and out[2] == "512", out  # Send-Q of a listener: its backlog


# ------------------------------------------------------------ finding 9: descriptors
def start_limited(net: LocalNet, name: str, soft: int, hard: int, loop: str = "auto") -> LocalNode:
    """A node started with RLIMIT_NOFILE (soft, hard), as a shell's `ulimit -n` would."""
    return net.start(name, claim=False, env={"VX6_EVENT_LOOP": loop}, open_files=(soft, hard))


def open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/PID/limits")


def test_the_node_raises_its_open_files_limit_to_the_hard_limit(net: LocalNet) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit here ({hard}) leaves nothing to raise")
    node = start_limited(net, "fdlimit", 256, hard)
    soft_now, hard_now = open_files_limits(node.process.pid)
    assert soft_now == hard_now > 256


def test_the_systemd_unit_sets_limit_nofile(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vx6", "--home", str(tmp_path / "h"), "unit"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "\nLimitNOFILE=65536\n" in out


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_out_of_descriptors_the_accept_loop_logs_once_and_backs_off(
    net: LocalNet, loop: str
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    node = start_limited(net, f"emfile-{loop}", 64, 64, loop=loop)
    where = parse_endpoint(node.listen)
    flood: list[socket.socket] = []
    line = "cannot accept links"
    started = time.monotonic()
    try:
        for _ in range(120):  # more than the node has descriptors for
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.connect(where)  # the kernel's backlog takes what the node cannot
            flood.append(sock)
        wait_for(lambda: line in node.log_text(), 15, "the out-of-descriptors log line")
        started = time.monotonic()
        time.sleep(1.5)  # the flood's duration (a bounded load), not synchronisation
        assert node.process.poll() is None
    finally:
        for sock in flood:
            sock.close()
        held = time.monotonic() - started

    async def honest() -> None:
        link = await dial_as(where)
        await asyncio.wait_for(link.ping(), DIAL_TIMEOUT)
        link.close()

    asyncio.run(honest())
    reply = node.call("status")
    failures = counter(reply, "accept_out_of_resources")
    # At least 100 ms between retries while out of descriptors: a spinning loop would
    # have counted thousands.
    assert 1 <= failures <= held / 0.1 + 3, failures
    assert 1 <= node.log_text().count(line) <= 3  # one per run of failures, RATELOG-bounded
    assert node.process.poll() is None
