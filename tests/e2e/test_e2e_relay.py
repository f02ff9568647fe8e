"""Relay proxy mode end to end on loopback (issue 4): real node processes, a client, an
owner and six relays; forwards through 1 and 5 relays carry bulk data intact both ways,
the owner applies its allow-list to the key the client proved inside the circuit, a
stream survives on a ready circuit, and a relay that dies mid-transfer ends the stream
with a clear error while the next connection succeeds over a rebuilt circuit."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import knows_owner
from kit.net import (
    BULK_HEADER,
    IO_TIMEOUT,
    MiB,
    Pusher,
    TCPServer,
    connect,
    duplex,
    echo_once,
    expose,
    local_port,
    unique,
)
from vx6.app.localnet import LocalNet, LocalNode, relays_known, wait_for

pytestmark = pytest.mark.timeout(120)

RELAYS = 6
READY_TIMEOUT = 30.0
RESULT_TIMEOUT = 60.0


@dataclass
class RelayNet:
    net: LocalNet
    alice: LocalNode
    bob: LocalNode
    carol: LocalNode  # a client that is not on alice's allow-list
    relays: list[LocalNode]


@pytest.fixture(scope="module")
def rnet() -> Iterator[RelayNet]:
    with LocalNet() as net:
        hub = net.start("hub", extra=("--relay",))
        relays = [hub, *net.start_relays([f"r{i}" for i in range(1, RELAYS)], hub)]
        alice = net.start("alice", peers=(hub.listen,), wait=False)
        bob = net.start("bob", peers=(hub.listen,), wait=False)
        carol = net.start("carol", peers=(hub.listen,), wait=False)
        for node in (alice, bob, carol):
            net.wait_ready(node)
        for client in (bob, carol):
            wait_for(
                lambda c=client: knows_owner(c, "alice") and relays_known(c, RELAYS),
                READY_TIMEOUT,
                f"{client.name} to learn alice and {RELAYS} relays",
            )
        wait_for(lambda: knows_owner(alice, "bob"), READY_TIMEOUT, "alice to learn bob")
        yield RelayNet(net, alice, bob, carol, relays)


def cells_relayed(node: LocalNode) -> int:
    return int(node.call("status")["circuits"]["cells_out"])


def relay_forward(client: LocalNode, service: str, hops: int) -> tuple[int, str]:
    name = unique("fwd")
    reply = client.call(
        "connect", service=f"alice.{service}", local="0", name=name, hops=hops, timeout=60.0
    )
    assert reply["forward"]["path"] == f"relay ({hops} hops)"
    return local_port(reply), name


def bulk_roundtrip(port: int, server: TCPServer, nbytes: int, seed: int) -> None:
    with connect(port) as sock:
        sock.sendall(BULK_HEADER.pack(nbytes, seed + 1))
        sent, received = duplex(sock, nbytes, seed)
    target = server.results.get(timeout=RESULT_TIMEOUT)
    assert target["error"] is None
    assert sent.sha256 == target["received"].sha256 and sent.nbytes == nbytes
    assert target["sent"].sha256 == received.sha256 and received.nbytes == nbytes


@pytest.mark.parametrize("hops", [1, 5])
def test_bulk_both_ways_through_relays(rnet: RelayNet, bulk_server: TCPServer, hops: int) -> None:
    service = expose(rnet.alice, bulk_server.address, allow=[rnet.bob.key])
    port, name = relay_forward(rnet.bob, service, hops)
    before = [cells_relayed(r) for r in rnet.relays]
    bulk_roundtrip(port, bulk_server, 16 * MiB, seed=hops)
    moved = [cells_relayed(r) - b for r, b in zip(rnet.relays, before, strict=True)]
    # 16 MiB each way is at least 2 x 1032 full cells; exactly `hops` relays carried it.
    assert sum(1 for m in moved if m >= 2 * 1032) == hops, moved
    forwards = {f["name"]: f for f in rnet.bob.call("forwards")["forwards"]}
    circuits = forwards[name]["circuits"]
    assert circuits and all(c["hops"] == hops for c in circuits)
    assert any(c["state"] == "open" for c in circuits)


def test_owner_checks_the_key_proven_inside_the_circuit(
    rnet: RelayNet, echo_server: TCPServer
) -> None:
    service = expose(rnet.alice, echo_server.address, allow=[rnet.bob.key])
    port, _ = relay_forward(rnet.bob, service, 2)
    assert echo_once(port, b"through two relays") == b"through two relays"
    refused = rnet.carol.try_call(
        "connect",
        service=f"alice.{service}",
        local="0",
        name=unique("fwd"),
        hops=2,
        timeout=60.0,
    )
    assert not refused.get("ok")
    assert "not allowed" in refused["error"]


def test_many_connections_share_ready_circuits(rnet: RelayNet, echo_server: TCPServer) -> None:
    service = expose(rnet.alice, echo_server.address, allow=[rnet.bob.key])
    port, name = relay_forward(rnet.bob, service, 3)
    for i in range(20):
        message = f"connection {i}".encode()
        assert echo_once(port, message) == message
    forwards = {f["name"]: f for f in rnet.bob.call("forwards")["forwards"]}
    circuits = forwards[name]["circuits"]
    assert 1 <= len(circuits) <= 3  # the pool, not one circuit per connection
    assert sum(c["streams_total"] for c in circuits) >= 21  # 20 + the probe


def test_six_relays_refused_by_the_cli(rnet: RelayNet) -> None:
    result = rnet.bob.cli("connect", "alice.x", "--local", "0", "--hops", "6")
    assert result.returncode != 0
    assert b"1..5" in result.stderr


def test_circuits_rotate_after_their_lifetime(rnet: RelayNet, echo_server: TCPServer) -> None:
    """A circuit takes new connections for `circuit_lifetime` seconds after its first one
    (dave's config: 2 s). A connection still open then keeps working on it, the next ones
    go over another circuit, and the old one is closed once its last connection ends;
    spares nobody asks for are closed after six lifetimes."""
    home = rnet.net.base / "dave"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("circuit_lifetime = 2\n")
    dave = rnet.net.start("dave", peers=(rnet.relays[0].listen,))
    wait_for(
        lambda: knows_owner(dave, "alice") and relays_known(dave, RELAYS),
        READY_TIMEOUT,
        "dave to learn alice and the relays",
    )
    service = expose(rnet.alice, echo_server.address, allow=[dave.key])
    port, name = relay_forward(dave, service, 1)

    def circuits() -> dict[int, dict[str, Any]]:
        return {c["id"]: c for c in forward_named(dave, name)["circuits"]}

    with connect(port) as held:
        held.sendall(b"first")
        assert recv_exact(held, 5) == b"first"
        (first,) = [i for i, c in circuits().items() if c["streams"] == 1]
        wait_for(lambda: circuits()[first]["retiring"], 15.0, "the held circuit to retire")
        carried = circuits()[first]["streams_total"]
        assert echo_once(port, b"later") == b"later"
        now = circuits()
        assert now[first]["streams_total"] == carried  # the new connection went elsewhere
        assert now[first]["state"] == "open" and now[first]["streams"] == 1
        held.sendall(b"still")  # and the held one keeps working on the retiring circuit
        assert recv_exact(held, 5) == b"still"
    wait_for(
        # One snapshot per check: the circuit may be removed between two calls.
        lambda: (circuit := circuits().get(first)) is None or circuit["state"] != "open",
        15.0,
        "the retired circuit to close once its connection ended",
    )
    assert echo_once(port, b"again") == b"again"
    # Unused for six lifetimes (12 s here), the forward's spare circuits are closed too;
    # the next connection builds a circuit again.
    wait_for(lambda: not circuits(), 40.0, "the unused spares to be closed")
    assert echo_once(port, b"back") == b"back"


def recv_exact(sock: socket.socket, count: int) -> bytes:
    sock.settimeout(IO_TIMEOUT)
    data = b""
    while len(data) < count and (chunk := sock.recv(count - len(data))):
        data += chunk
    return data


def test_relay_killed_mid_transfer_then_next_connection_works(
    rnet: RelayNet, pusher: Pusher
) -> None:
    """Runs last in the module: it kills one relay for good."""
    service = expose(rnet.alice, pusher.server.address, allow=[rnet.bob.key])
    port, name = relay_forward(rnet.bob, service, 3)
    with connect(port) as sock:
        got = recv_exact_count(sock, 2 * MiB)  # data is flowing through the circuit
        assert got == 2 * MiB
        forwards = {f["name"]: f for f in rnet.bob.call("forwards")["forwards"]}
        busy = [c for c in forwards[name]["circuits"] if c["streams"] > 0]
        assert len(busy) == 1
        victim = next(r for r in rnet.relays if r.info["fingerprint"] == busy[0]["relays"][1])
        rnet.net.kill(victim.name)
        assert read_until_closed(sock) == "reset", "a cut stream must not end cleanly"
    reasons = wait_for(
        lambda: (f := forward_named(rnet.bob, name))["last_error"] and f, 30.0, "the error"
    )
    assert "CIRCUIT_LOST" in reasons["last_error"]
    # The next connection needs no user action: a circuit avoiding the dead relay.
    with connect(port) as sock:
        assert recv_exact_count(sock, 256 * 1024) == 256 * 1024
    circuits = forward_named(rnet.bob, name)["circuits"]
    assert all(
        victim.info["fingerprint"] not in c["relays"] for c in circuits if c["state"] == "open"
    )


def forward_named(node: LocalNode, name: str) -> dict[str, Any]:
    return next(f for f in node.call("forwards")["forwards"] if f["name"] == name)


def recv_exact_count(sock: socket.socket, count: int) -> int:
    sock.settimeout(IO_TIMEOUT)
    got = 0
    while got < count:
        chunk = sock.recv(min(65536, count - got))
        if not chunk:
            break
        got += len(chunk)
    return got


def read_until_closed(sock: socket.socket) -> str:
    """How the connection ended: 'reset' (an error reached the application) or 'eof'."""
    sock.settimeout(IO_TIMEOUT)
    try:
        while sock.recv(1024 * 1024):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"


def test_relay_fallback_only_when_direct_fails_and_status_says_so(
    tmp_path: Path, echo_server: TCPServer
) -> None:
    """alice advertises an address nobody can reach (port 1); her only link is to the
    hub, a relay. bob's direct dial fails, so his forward falls back to one relay, and
    says so; a forward without the fallback reports the owner unreachable."""
    with LocalNet(tmp_path) as net:
        hub = net.start("hub", extra=("--relay",))
        alice = net.start("alice", peers=(hub.listen,), extra=("--advertise", "[::1]:1"))
        bob = net.start("bob", peers=(hub.listen,))
        wait_for(lambda: knows_owner(bob, "alice"), READY_TIMEOUT, "bob to learn alice")
        wait_for(lambda: relays_known(bob, 1), READY_TIMEOUT, "bob to learn the relay")
        service = expose(alice, echo_server.address, allow=[bob.key])
        plain = bob.try_call("connect", service=f"alice.{service}", local="0", name="plain")
        assert not plain.get("ok") and "owner unreachable" in plain["error"]
        reply = bob.call(
            "connect",
            service=f"alice.{service}",
            local="0",
            name="fb",
            relay_fallback=1,
            timeout=60.0,
        )
        port = local_port(reply)
        assert echo_once(port, b"over the fallback") == b"over the fallback"
        fwd = forward_named(bob, "fb")
        assert fwd["path"] == "relay-fallback (1 hops)"
        assert fwd["fallbacks"] >= 1
        status = bob.cli("status")
        assert b"relay-fallback (1 hops)" in status.stdout
