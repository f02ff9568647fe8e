"""Onion keys rotate while a relay runs (issue 11 point 7), end to end on loopback: a relay
with `onion_key_lifetime = 3` in its config.toml rotates twice under a live stream; the
stream, on a circuit built with a key that is now dropped (and deleted from the relay's
home), keeps carrying bytes both ways; the relay republishes its node record with the new
key, and a client builds a fresh circuit through it from that record. (The grace period
for a client that still holds the old record, and the HANDSHAKE_FAILED refusal after it,
are checked deterministically with a fake clock in tests/unit/test_onion_rotation.py.)"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from conftest import knows_owner
from kit.net import TCPServer, connect, echo_once, expose, local_port, recv_all, recv_exact, unique
from vx6.app.localnet import LocalNet, LocalNode, relays_known, wait_for
from vx6.crypto.keys import StaticKey

pytestmark = pytest.mark.timeout(120)

LIFETIME = 3  # seconds: two rotations take six
READY_TIMEOUT = 30.0
ROTATION_TIMEOUT = 40.0


@dataclass
class RotationNet:
    net: LocalNet
    relay: LocalNode  # the only relay, so every circuit goes through it
    alice: LocalNode
    bob: LocalNode


@pytest.fixture(scope="module")
def rotnet() -> Iterator[RotationNet]:
    with LocalNet() as net:
        hub = net.start("hub")
        home = net.base / "rot"
        home.mkdir(mode=0o700)
        (home / "config.toml").write_text(f"onion_key_lifetime = {LIFETIME}\n")
        relay = net.start("rot", peers=(hub.listen,), extra=("--relay",))
        alice = net.start("alice", peers=(hub.listen,), wait=False)
        bob = net.start("bob", peers=(hub.listen,), wait=False)
        for node in (alice, bob):
            net.wait_ready(node)
        wait_for(
            lambda: knows_owner(bob, "alice") and relays_known(bob, 1),
            READY_TIMEOUT,
            "bob to learn alice and the relay",
        )
        yield RotationNet(net, relay, alice, bob)


def onion_keys_on_disk(node: LocalNode) -> set[bytes]:
    """The public halves of the onion keys in the node's home right now."""
    found = set()
    for name in ("onion.key", "onion.prev.key"):
        with contextlib.suppress(FileNotFoundError):  # between a rename and the new key
            found.add(StaticKey((node.home / name).read_bytes()).public)
    return found


def current_onion_key(node: LocalNode) -> bytes | None:
    with contextlib.suppress(FileNotFoundError):
        return StaticKey((node.home / "onion.key").read_bytes()).public
    return None


def holds_record_with(client: LocalNode, relay: str, onion_key: bytes | None) -> bool:
    reply = client.try_call("resolve", address=f"{relay}.any")
    bodies = [r["body"] for r in reply.get("records", []) if r["kind"] == "node"]
    return onion_key is not None and any(f"onion_key={onion_key!r}" in b for b in bodies)


def rotations(node: LocalNode) -> int:
    return int(node.call("status")["counters"].get("onion_key_rotations", 0))


def test_live_circuit_survives_two_rotations_and_new_circuits_use_the_new_key(
    rotnet: RotationNet, echo_server: TCPServer
) -> None:
    relay, bob = rotnet.relay, rotnet.bob
    service = expose(rotnet.alice, echo_server.address, allow=[bob.key])
    reply = bob.call(
        "connect", service=f"alice.{service}", local="0", name=unique("fwd"), hops=1, timeout=60
    )
    assert reply["forward"]["path"] == "relay (1 hops)"
    with connect(local_port(reply)) as sock:
        sock.sendall(b"before the rotation")
        assert recv_exact(sock, 19) == b"before the rotation"
        # The circuit was built with a key the relay held then: one of these, or one
        # already gone. Once none of these is left, the circuit's key is dropped.
        held = onion_keys_on_disk(relay)
        started = rotations(relay)
        wait_for(
            lambda: not held & onion_keys_on_disk(relay) and rotations(relay) >= started + 1,
            ROTATION_TIMEOUT,
            "the relay to rotate its onion keys past the one the circuit was built with",
        )
        sock.sendall(b"after the rotation")
        assert recv_exact(sock, 18) == b"after the rotation"
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""

    wait_for(
        lambda: holds_record_with(bob, "rot", current_onion_key(relay)),
        ROTATION_TIMEOUT,
        "bob to receive the relay's republished node record with its current onion key",
    )
    built = bob.call("build_circuit", owner="alice", hops=1, timeout=60)
    assert len(built["relays"]) == 1
    fresh = bob.call(
        "connect", service=f"alice.{service}", local="0", name=unique("fwd"), hops=1, timeout=60
    )
    assert echo_once(local_port(fresh), b"after rotations") == b"after rotations"
    assert "Traceback" not in relay.log_text()
