"""Discovery through the DHT in the namespace test bed: nine hosts, every node started
with only `--bootstrap` (no sync peers), one IPv4-only host on a dual-stack network.
A service published on one node is resolved through the DHT and reached from every
other; the owner then changes its address under a live forward; a node restarted with
no bootstrap at all rejoins through the peers it remembers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kit.netns import (
    NetnsNode,
    Testbed,
    require_testbed,
)
from vx6.app.localnet import wait_for

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.usefixtures("no_leftover_namespaces"),
]

HUB, ALICE, V4_ONLY = 0, 1, 8
CLIENTS = range(2, 9)
MOVE_DEADLINE = 10.0


@dataclass
class Bed:
    tb: Testbed
    nodes: list[NetnsNode]


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    require_testbed()
    with Testbed(n_hosts=9, dual_stack=(HUB, ALICE), ipv4_only=(V4_ONLY,)) as tb:
        hosts = tb.hosts
        # hub and alice listen on the wildcard: one dual-stack socket each, and alice's
        # listener survives the renumbering below.
        hub = tb.start_node(hosts[HUB], "hub", listen=["[::]:4242"])
        nodes = [hub]
        for i in range(1, 9):
            boot = hosts[HUB].endpoint(family=4 if i == V4_ONLY else 6)
            listen = ["[::]:4242"] if i == ALICE else None
            name = "alice" if i == ALICE else f"n{i}"
            nodes.append(
                tb.start_node(
                    hosts[i], name, extra=["--bootstrap", boot], listen=listen, wait=False
                )
            )
        for node in nodes[1:]:
            tb.wait_ready(node)
        yield Bed(tb, nodes)


def forward(node: NetnsNode, service: str, name: str | None = None) -> int:
    reply = node.call("connect", service=service, local="0", name=name or service)
    return int(str(reply["forward"]["local"]).rsplit(":", 1)[1])


def resolves(node: NetnsNode, address: str) -> bool:
    return bool(node.try_call("resolve", address=address).get("ok"))


def test_every_node_resolves_and_reaches_alice_through_the_dht(bed: Bed) -> None:
    tb, nodes = bed.tb, bed.nodes
    with tb.explain():
        echo = tb.start_echo(tb.hosts[ALICE])
        nodes[ALICE].call("expose", name="echo", target=f"127.0.0.1:{echo}", public=True)
        for i in CLIENTS:
            client = nodes[i]
            wait_for(lambda c=client: resolves(c, "alice.echo"), 20, f"{client.name} to resolve")
            reply = client.call("resolve", address="alice.echo")
            assert any(r["source"] == "dht" for r in reply["records"]), reply
            port = forward(client, "alice.echo")
            result = tb.echo_check(tb.hosts[i], port, nbytes=30_000 + i)
            assert result["intact"], (client.name, result)
            status = client.call("status")
            assert status["dht"]["table_size"] >= 1


def test_owner_moves_under_a_live_forward(bed: Bed) -> None:
    tb, nodes = bed.tb, bed.nodes
    with tb.explain():
        client_host, client = tb.hosts[2], nodes[2]
        port = forward(client, "alice.echo", name="moving")
        assert tb.echo_check(client_host, port, nbytes=10_000)["intact"]
        alice_host = tb.hosts[ALICE]
        tb.change_address(alice_host, tb.spare_ipv6(alice_host))
        moved = time.monotonic()

        def works() -> bool:
            try:
                return bool(tb.echo_check(client_host, port, nbytes=10_000)["intact"])
            except AssertionError:
                return False

        wait_for(works, MOVE_DEADLINE + 5, "a new connection through the forward after the move")
        took = time.monotonic() - moved
        print(f"owner moved: a new connection succeeded after {took:.2f} s")
        assert took <= MOVE_DEADLINE


def test_node_restarted_without_bootstrap_rejoins(bed: Bed) -> None:
    tb = bed.tb
    with tb.explain():
        node = tb.restart_node("n5")  # no --bootstrap, no --peer
        wait_for(lambda: node.call("status")["dht"]["table_size"] >= 1, 20, "n5 to rejoin")
        wait_for(lambda: resolves(node, "alice.echo"), 20, "n5 to resolve alice again")
