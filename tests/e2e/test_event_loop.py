"""The node's event loop: uvloop when installed, the standard library's loop when
VX6_EVENT_LOOP=asyncio says so. Every other end-to-end test runs on the default, so this
module runs a small network on the stdlib loop to keep that one covered too: a forward
allowed by name, bulk both ways with checksums, and a stream the owner has to refuse."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
from collections.abc import Iterator

import pytest

from conftest import Trio, knows_owner
from kit.net import (
    BULK_HEADER,
    IO_TIMEOUT,
    MiB,
    TCPServer,
    connect,
    duplex,
    echo_once,
    expose,
    forward_to,
    refused_outcome,
)
from vx6.app.localnet import LocalNet, wait_for
from vx6.errors import UsageError
from vx6.net.eventloop import ENV_VAR, choose_loop

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
STDLIB = {ENV_VAR: "asyncio"}


# ------------------------------------------------------------------ choosing the loop
def test_default_is_uvloop_when_installed() -> None:
    factory, description = choose_loop("")
    if HAVE_UVLOOP:
        assert factory is not None and description.startswith("uvloop")
        loop = factory()
        try:
            assert isinstance(loop, asyncio.AbstractEventLoop)
        finally:
            loop.close()
    else:
        assert factory is None and "not installed" in description


def test_asyncio_forces_the_stdlib_loop() -> None:
    assert choose_loop("asyncio") == (None, f"asyncio (forced by {ENV_VAR})")
    assert choose_loop(" AsyncIO ")[0] is None


def test_unknown_choice_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=ENV_VAR):
        choose_loop("trio")


@pytest.mark.skipif(HAVE_UVLOOP, reason="uvloop is installed")
def test_insisting_on_a_missing_uvloop_fails() -> None:
    with pytest.raises(UsageError, match="not installed"):
        choose_loop("uvloop")


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
@pytest.mark.skipif(
    os.environ.get(ENV_VAR, "").strip().lower() == "asyncio", reason=f"{ENV_VAR}=asyncio"
)
def test_nodes_run_on_uvloop_by_default(trio: Trio) -> None:
    for node in (trio.hub, trio.alice, trio.bob):
        assert "event loop: uvloop" in node.log_text(), node.name


# ------------------------------------------------------------------ a network on asyncio
@pytest.fixture(scope="module")
def stdlib_trio() -> Iterator[Trio]:
    with LocalNet() as net:
        hub = net.start("hub", env=STDLIB)
        alice = net.start("alice", peers=(hub.listen,), env=STDLIB)
        bob = net.start("bob", peers=(hub.listen,), env=STDLIB)
        wait_for(
            lambda: knows_owner(bob, "alice") and knows_owner(alice, "bob"),
            15,
            "alice and bob to learn each other's records via hub",
        )
        yield Trio(net, hub, alice, bob)


@pytest.mark.timeout(60)
def test_forward_on_the_stdlib_loop(
    stdlib_trio: Trio, echo_server: TCPServer, bulk_server: TCPServer
) -> None:
    alice, bob = stdlib_trio.alice, stdlib_trio.bob
    for node in (alice, bob, stdlib_trio.hub):
        assert f"event loop: asyncio (forced by {ENV_VAR})" in node.log_text(), node.name

    # Allowed by name: the owner resolves "bob" through its registry.
    echo = expose(alice, echo_server.address, allow=["bob"])
    port = forward_to(bob, "alice", echo)
    for i in range(3):  # the later ones reuse the link and the remembered answers
        assert echo_once(port, b"ping %d" % i) == b"ping %d" % i

    bulk = expose(alice, bulk_server.address, allow=[bob.key])
    port = forward_to(bob, "alice", bulk)
    nbytes = 16 * MiB + 3
    with connect(port) as sock:
        sock.sendall(BULK_HEADER.pack(nbytes, 8))
        sent, received = duplex(sock, nbytes, 7)
    target = bulk_server.results.get(timeout=IO_TIMEOUT)
    assert target["error"] is None
    assert sent.sha256 == target["received"].sha256 and sent.nbytes == nbytes
    assert target["sent"].sha256 == received.sha256 and received.nbytes == nbytes


@pytest.mark.timeout(60)
def test_refused_stream_resets_on_the_stdlib_loop(stdlib_trio: Trio) -> None:
    alice, bob = stdlib_trio.alice, stdlib_trio.bob
    # A target that is up while the forward is set up (connect probes it), then gone.
    with socket.socket() as target:
        target.bind(("127.0.0.1", 0))
        target.listen(4)
        host, target_port = target.getsockname()
        service = expose(alice, f"{host}:{target_port}", allow=[bob.key])
        port = forward_to(bob, "alice", service)
    outcome = refused_outcome(port, b"anyone?", timeout=10)
    # The owner could not reach the target: the client's connection is reset (SO_LINGER
    # 0), never closed cleanly as if the reply were complete.
    assert outcome == "reset"
