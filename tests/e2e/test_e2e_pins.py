"""Pins and direct mode (`--via`), end to end against real node processes on loopback:
an endpoint that answers with another key cannot take over a name (issue 11 b), a name
is pinned from `--via` only when the endpoint shows a valid claim of it, `vx6 pins` and
`vx6 unpin` list and remove pins, and `--via` really goes to the endpoint given."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import knows_owner
from kit.net import (
    TCPServer,
    connect,
    echo_handler,
    echo_once,
    expose,
    forward_to,
    recv_exact,
    stderr_line,
    unique,
)
from vx6.app.localnet import LocalNet, LocalNode, wait_for
from vx6.crypto.keys import fingerprint, key_from_text

pytestmark = pytest.mark.timeout(180)


@dataclass
class PinNet:
    net: LocalNet
    hub: LocalNode
    alice: LocalNode  # listens on [::1] and on 127.0.0.1
    mallory: LocalNode  # claims its own name, serves nothing
    service: str  # alice's echo service, open to everyone
    target: TCPServer


@pytest.fixture(scope="module")
def pin_net() -> Iterator[PinNet]:
    with LocalNet() as net, TCPServer(echo_handler) as target:
        hub = net.start("hub")
        alice = net.start("alice", peers=(hub.listen,), extra=("--listen", "127.0.0.1:0"))
        mallory = net.start("mallory", peers=(hub.listen,))
        service = expose(alice, target.address, public=True)
        yield PinNet(net, hub, alice, mallory, service, target)


def fp(node: LocalNode) -> str:
    return fingerprint(key_from_text(node.key))


def client(pn: PinNet, *, peered: bool = True) -> LocalNode:
    """A fresh client node: peered with the hub (it learns alice's claim), or alone."""
    if not peered:
        return pn.net.start(unique("solo"), claim=False)
    node = pn.net.start(unique("client"), peers=(pn.hub.listen,), claim=False)
    wait_for(lambda: knows_owner(node, "alice"), 15, f"{node.name} to learn alice's claim")
    return node


def pins(node: LocalNode) -> dict[str, dict[str, Any]]:
    result = node.cli("pins", "--json")
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)["pins"]}


def connect_cli(node: LocalNode, service: str, via: str | None = None) -> Any:
    argv = ["connect", service, "--local", "0", "--name", unique("fwd")]
    return node.cli(*argv, *(["--via", via] if via else []))


# ---------------------------------------------------------------- the poisoning (11 b)
def test_via_to_another_key_cannot_poison_a_held_claim_or_a_pin(pin_net: PinNet) -> None:
    alice, mallory, service = pin_net.alice, pin_net.mallory, pin_net.service
    bob = client(pin_net)  # holds alice's valid claim, pins nothing yet
    result = connect_cli(bob, f"alice.{service}", via=mallory.listen)
    assert result.returncode == 1
    line = stderr_line(result)
    assert line.endswith("[KEY_MISMATCH]"), line
    assert f"{mallory.listen} answered as {fp(mallory)}" in line, line
    assert f"alice is claimed by {fp(alice)}" in line, line
    assert "alice" not in pins(bob)  # nothing pinned to mallory

    # The name still works, and is pinned to alice on this first real success.
    port = forward_to(bob, "alice", service)
    assert echo_once(port, b"by name") == b"by name"
    pinned = pins(bob)["alice"]
    assert pinned["key"] == alice.key

    # With the pin in place mallory's endpoint is refused again, naming the pin.
    result = connect_cli(bob, f"alice.{service}", via=mallory.listen)
    assert result.returncode == 1
    line = stderr_line(result)
    assert f"answered as {fp(mallory)}, but alice is pinned to {fp(alice)}" in line, line
    assert pins(bob)["alice"] == pinned  # unchanged, pinned_at included
    assert echo_once(forward_to(bob, "alice", service), b"still") == b"still"


# ---------------------------------------------------------------- first contact by --via
def test_via_with_nothing_known_pins_only_on_a_claim_the_endpoint_shows(pin_net: PinNet) -> None:
    alice, mallory, service = pin_net.alice, pin_net.mallory, pin_net.service
    solo = client(pin_net, peered=False)  # knows no claim of anyone

    # mallory shows its own claim, which is not a claim of "alice": refused, not pinned.
    result = connect_cli(solo, f"alice.{service}", via=mallory.listen)
    assert result.returncode == 1
    line = stderr_line(result)
    assert line.endswith("[UNKNOWN_NAME]"), line
    assert f"{mallory.listen} answered as {fp(mallory)} but showed no claim of 'alice'" in line
    assert f"alice#{fp(mallory)}.{service}" in line, line  # how to choose that key anyway
    assert pins(solo) == {}

    # alice shows her claim, signed by the key she proved: pinned, and the bytes arrive.
    port = forward_to(solo, "alice", service, via=alice.listen)
    assert echo_once(port, b"first contact") == b"first contact"
    assert pins(solo)["alice"]["key"] == alice.key
    # Learnt over that link, asked for: her node record and her claim, nothing else.
    held = solo.call("resolve", address=f"alice.{service}")["records"]
    assert sorted(r["kind"] for r in held) == ["name_claim", "node"]
    assert all(r["source"] == f"via {alice.listen}" for r in held), held

    # A name with no claim at all (the node has none) is refused too; its key chosen
    # explicitly with NAME#FINGERPRINT connects, and pins nothing.
    nameless = pin_net.net.start(unique("nameless"), claim=False)
    expose(nameless, pin_net.target.address, public=True, name=service)
    result = connect_cli(solo, f"nobody.{service}", via=nameless.listen)
    assert result.returncode == 1
    assert "showed no claim of 'nobody'" in stderr_line(result)
    port = forward_to(solo, f"nobody#{fp(nameless)}", service, via=nameless.listen)
    assert echo_once(port, b"chosen key") == b"chosen key"
    assert set(pins(solo)) == {"alice"}


# ---------------------------------------------------------------- vx6 pins / unpin
def test_pins_lists_and_unpin_removes_a_pin(pin_net: PinNet) -> None:
    alice, service = pin_net.alice, pin_net.service
    bob = client(pin_net)
    empty = bob.cli("pins")
    assert empty.returncode == 0 and empty.stdout.decode().strip() == "(none)"
    assert echo_once(forward_to(bob, "alice", service), b"pin me") == b"pin me"

    listing = bob.cli("pins")
    assert listing.returncode == 0
    text = listing.stdout.decode()
    assert "alice" in text and fp(alice) in text and alice.key in text
    first = pins(bob)["alice"]
    assert first["fingerprint"] == fp(alice) and first["pinned_at"] > 0

    missing = bob.cli("unpin", "nobody")
    assert missing.returncode == 1
    assert stderr_line(missing) == "vx6: no pin for 'nobody'"
    assert missing.stdout == b""

    removed = bob.cli("unpin", "alice")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.decode().strip() == f"unpinned alice (was {fp(alice)})"
    assert "alice" not in pins(bob)
    assert bob.call("resolve", address="alice.x")["pinned"] is False
    again = bob.cli("unpin", "alice")
    assert again.returncode == 1 and stderr_line(again) == "vx6: no pin for 'alice'"

    # The next success pins the name afresh (the client forgot it had pinned it).
    assert echo_once(forward_to(bob, "alice", service), b"again") == b"again"
    assert pins(bob)["alice"]["key"] == alice.key
    assert pins(bob)["alice"]["pinned_at"] >= first["pinned_at"]


# ---------------------------------------------------------------- --via goes to the endpoint
def test_via_uses_a_link_to_that_endpoint_not_the_owners_link_elsewhere(pin_net: PinNet) -> None:
    alice, service = pin_net.alice, pin_net.service
    first, second = alice.info["listen"][0], alice.info["listen"][1]
    assert first.startswith("[::1]:") and second.startswith("127.0.0.1:")
    bob = client(pin_net)
    assert echo_once(forward_to(bob, "alice", service), b"named") == b"named"
    assert [ln["address"] for ln in links_to(bob, alice)] == [first]

    port = forward_to(bob, "alice", service, via=second)
    with connect(port) as conn:
        conn.sendall(b"over the second address")
        assert recv_exact(conn, 23) == b"over the second address"
        # The open connection's stream is on a link to exactly that endpoint.
        wait_for(
            lambda: any(ln["address"] == second and ln["streams"] for ln in links_to(bob, alice)),
            10,
            "a stream on the link to the --via endpoint",
        )
        assert sorted(ln["address"] for ln in links_to(bob, alice)) == sorted([first, second])
        conn.shutdown(socket.SHUT_WR)
    # Both links stay usable: a named connection still gets through.
    assert echo_once(forward_to(bob, "alice", service), b"named again") == b"named again"


def links_to(node: LocalNode, owner: LocalNode) -> list[dict[str, Any]]:
    return [
        ln
        for ln in node.call("peers")["links"]
        if ln["key"] == owner.key and ln["direction"] == "out"
    ]
