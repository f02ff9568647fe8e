"""Names that cannot be stolen, end to end: a thief's claim, a claim without its proof of
work, and a rotation signed by the old key, against real node processes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from conftest import knows_owner
from kit.net import TCPServer, echo_handler, echo_once, expose, forward_to, push_records
from vx6.app.localnet import LocalNet, LocalNode, wait_for
from vx6.core.records import make_record
from vx6.crypto.keys import Identity
from vx6.wire.records import NameClaimBody

pytestmark = pytest.mark.timeout(120)


def identity_of(node: LocalNode) -> Identity:
    return Identity((node.home / "identity.key").read_bytes())


def counters(node: LocalNode) -> dict[str, int]:
    return dict(node.call("status")["counters"])


@pytest.fixture(scope="module")
def names_net() -> Iterator[tuple[LocalNet, LocalNode, LocalNode, LocalNode]]:
    with LocalNet() as net:
        hub = net.start("hub")
        alice = net.start("alice", peers=(hub.listen,))
        bob = net.start("bob", peers=(hub.listen,))
        wait_for(lambda: knows_owner(bob, "alice"), 15, "bob to learn alice")
        yield net, hub, alice, bob


def test_claim_without_proof_of_work_is_refused(names_net: tuple) -> None:
    _, hub, _, _ = names_net
    squatter = Identity(bytes([42]) * 32)
    _, raw = make_record(squatter, NameClaimBody("squat", pow_nonce=0), 1, time.time(), 3600)
    before = counters(hub).get("records_refused_weak-proof-of-work", 0)
    push_records(hub, [raw])
    after = counters(hub).get("records_refused_weak-proof-of-work", 0)
    assert after == before + 1
    reply = hub.try_call("resolve", address="squat.any")
    assert reply["ok"] is False and reply["code"] == "UNKNOWN_NAME"


def test_thief_cannot_take_a_pinned_name_but_a_rotation_moves_it(names_net: tuple) -> None:
    net, hub, alice, bob = names_net
    with TCPServer(echo_handler) as target:
        service = expose(alice, target.address, allow=[bob.key])
        port = forward_to(bob, "alice", service)  # bob pins alice's key
        assert echo_once(port, b"first") == b"first"

        # A thief claims "alice" with its own key (a valid claim, proof of work and all).
        thief = net.start("thief", peers=(hub.listen,), claim=False, extra=("--name", "alice"))
        wait_for(lambda: _claim_count(bob) >= 2, 15, "bob to see both claims")
        # bob still resolves alice to the pinned key...
        assert bob.call("resolve", address="alice.x")["key"] == alice.key
        # ...and a client with no pin is asked to choose instead of being handed the thief.
        carol = net.start("carol", peers=(hub.listen,))
        wait_for(lambda: _claim_count(carol) >= 2, 15, "carol to see both claims")
        reply = carol.try_call("resolve", address="alice.x")
        assert reply["ok"] is False and "ambiguous" in reply["error"]

        # The real owner moves to a new key: the new node claims alice and the old key
        # signs the rotation. The thief's claim is still live: only the signature decides.
        heir = net.start("heir", peers=(hub.listen,), claim=False, extra=("--name", "alice"))
        expose(heir, target.address, allow=[bob.key], name=service)
        alice.call("rotate", to=heir.key)
        wait_for(lambda: _has_rotation(bob), 15, "bob to receive the rotation")
        wait_for(lambda: knows_owner(bob, heir.key), 15, "bob to learn the heir's node record")
        # With the old, the thief's and the heir's claims all live, the rotation decides.
        assert bob.call("resolve", address="alice.x")["key"] == heir.key
        del thief
        port2 = forward_to(bob, "alice", service)
        assert echo_once(port2, b"after rotation") == b"after rotation"


def _claim_count(node: LocalNode) -> int:
    from vx6.store.registry import Registry
    from vx6.wire.records import Kind

    with Registry(node.home / "registry.sqlite") as reg:
        return len(reg.records(kind=int(Kind.NAME_CLAIM), subject="alice", now=time.time()))


def _has_rotation(node: LocalNode) -> bool:
    from vx6.store.registry import Registry
    from vx6.wire.records import Kind

    with Registry(node.home / "registry.sqlite") as reg:
        return bool(reg.records(kind=int(Kind.ROTATION), subject="alice", now=time.time()))
