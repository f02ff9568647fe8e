"""Dynamic IP and rejoin in the namespace test bed: the owner's address changes under a
client's live forward, and a restarted node finds the network again with no peer given."""

from __future__ import annotations

import time

import pytest

from conftest import knows_owner
from kit.netns import (
    Testbed,
    require_testbed,
)
from vx6.app.localnet import wait_for

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("no_leftover_namespaces"),
]

HUB, ALICE, BOB = 0, 1, 2
MOVE_DEADLINE = 10.0  # the issue: new connections succeed within 10 s of the change


def test_owner_moves_and_a_live_forward_follows_then_a_node_rejoins_alone() -> None:
    require_testbed()
    with Testbed(n_hosts=3) as tb, tb.explain():
        hub_host, alice_host, bob_host = tb.hosts
        tb.start_node(hub_host, "hub")
        peers = [hub_host.endpoint()]
        # The owner listens on the wildcard, so its listener survives a renumbering.
        alice = tb.start_node(alice_host, "alice", peers=peers, listen=["[::]:4242"])
        bob = tb.start_node(bob_host, "bob", peers=peers)
        echo = tb.start_echo(alice_host)
        alice.call("expose", name="echo", target=f"127.0.0.1:{echo}", allow=[bob.key])
        wait_for(lambda: knows_owner(bob, "alice"), 20, "bob to learn alice")
        reply = bob.call("connect", service="alice.echo", local="0")
        port = int(str(reply["forward"]["local"]).rsplit(":", 1)[1])
        assert tb.echo_check(bob_host, port, nbytes=50_000)["intact"]

        old = alice_host.ipv6
        tb.change_address(alice_host, tb.spare_ipv6(alice_host))
        moved_at = time.monotonic()

        def works() -> bool:
            try:
                return bool(tb.echo_check(bob_host, port, nbytes=20_000)["intact"])
            except AssertionError:
                return False

        wait_for(works, MOVE_DEADLINE, "a new connection through bob's forward after the move")
        took = time.monotonic() - moved_at
        print(f"new connection after the move succeeded in {took:.2f} s")
        assert took <= MOVE_DEADLINE
        links = [str(link["address"]) for link in bob.call("peers")["links"]]
        assert f"[{alice_host.ipv6}]:4242" in links and f"[{old}]:4242" not in links

        # bob restarts with no --peer at all: it rejoins through the peers it remembers.
        bob = tb.restart_node("bob")
        wait_for(
            lambda: any(link["sync"] for link in bob.call("peers")["links"]),
            20,
            "the restarted bob to sync with a remembered peer",
        )
        reply = bob.call("connect", service="alice.echo", local="0")
        port = int(str(reply["forward"]["local"]).rsplit(":", 1)[1])
        assert tb.echo_check(bob_host, port, nbytes=20_000)["intact"]
