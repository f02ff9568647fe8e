"""Relays found through the DHT's relay directory in the namespace test bed (issue 11 e):
a hub, five relays, an owner and a client on their own hosts, every node started with
`--bootstrap` alone (no sync peer anywhere). Two relays listen on the wildcard (one
dual-stack socket, the source address chosen by the kernel) and one host is IPv4-only,
so a relay's STORE of its directory entry comes from a real interface address that its
node record must list (core/dht/directory.py). The client finds the relays and a
forward through three of them carries bytes intact."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kit.netns import NetnsNode, Testbed, require_testbed
from vx6.app.localnet import wait_for

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.usefixtures("no_leftover_namespaces"),
]

HUB, ALICE, BOB = 0, 6, 7
RELAYS = range(1, 6)
WILDCARD = (1, 2)
V4_ONLY = 3
FOUND_WITHIN = 30.0


@pytest.fixture(scope="module")
def bed() -> Iterator[tuple[Testbed, list[NetnsNode]]]:
    require_testbed()
    with Testbed(n_hosts=8, dual_stack=(HUB, *WILDCARD), ipv4_only=(V4_ONLY,)) as tb:
        hosts = tb.hosts
        hub = tb.start_node(hosts[HUB], "hub", listen=["[::]:4242"])
        nodes = [hub]
        for i in range(1, 8):
            boot = hosts[HUB].endpoint(family=4 if i == V4_ONLY else 6)
            extra = ["--bootstrap", boot] + (["--relay"] if i in RELAYS else [])
            name = {ALICE: "alice", BOB: "bob"}.get(i, f"r{i}")
            listen = ["[::]:4242"] if i in WILDCARD else None
            nodes.append(tb.start_node(hosts[i], name, extra=extra, listen=listen, wait=False))
        for node in nodes[1:]:
            tb.wait_ready(node)
        yield tb, nodes


def relays_found(node: NetnsNode) -> set[str]:
    reply = node.try_call("relays")
    return {r["fingerprint"] for r in reply.get("relays", [])} if reply.get("ok") else set()


def test_a_bootstrap_only_client_finds_relays_and_builds_three_hops(
    bed: tuple[Testbed, list[NetnsNode]],
) -> None:
    tb, nodes = bed
    bob, alice = nodes[BOB], nodes[ALICE]
    with tb.explain():
        prints = {nodes[i].call("id")["fingerprint"] for i in RELAYS}
        wait_for(lambda: len(relays_found(bob)) >= 3, FOUND_WITHIN, "bob to find 3 relays")
        assert relays_found(bob) <= prints
        wildcard = {nodes[i].call("id")["fingerprint"] for i in WILDCARD}
        wait_for(
            lambda: wildcard <= relays_found(bob),
            FOUND_WITHIN,
            "bob to find the relays that listen on the wildcard",
        )
        echo = tb.start_echo(tb.hosts[ALICE])
        alice.call("expose", name="echo", target=f"127.0.0.1:{echo}", public=True)
        reply = bob.call("connect", service="alice.echo", local="0", name="fwd", hops=3, timeout=60)
        assert reply["forward"]["path"] == "relay (3 hops)"
        port = int(str(reply["forward"]["local"]).rsplit(":", 1)[1])
        assert tb.echo_check(tb.hosts[BOB], port, nbytes=200_000)["intact"]
        # No honest relay's entry was refused for its source address.
        for node in nodes:
            stats = node.call("status")["dht"]["stats"]
            assert stats.get("refused:not-from-listed-address", 0) == 0, (node.name, stats)
