"""The namespace test bed with what nodes can already do (`vx6 run --peer`): eight hosts
on an IPv6-only bridge sync records through one hub and reach alice's echo service from
inside their own namespaces; an IPv4-only host reaches alice's dual-stack node over IPv4
in direct mode; and the bed itself is isolated, renumbers hosts, and always cleans up."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from conftest import knows_owner
from kit.netns import (
    Host,
    NetnsNode,
    Testbed,
    namespaces,
    require_testbed,
)
from vx6.app.localnet import LocalNode, wait_for

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("no_leftover_namespaces"),
]

SYNC_TIMEOUT = 20.0
HUB, ALICE, V4_ONLY = 0, 1, 8
CLIENTS = range(2, 8)


@dataclass
class Bed:
    tb: Testbed
    nodes: list[NetnsNode]
    echo_port: int

    def host(self, index: int) -> Host:
        return self.tb.hosts[index]


def link_addresses(node: LocalNode) -> list[str]:
    return [str(link["address"]) for link in node.call("peers")["links"]]


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    """Hosts 0-7 IPv6 only except alice (1, dual-stack); host 8 IPv4 only. Node 0 is the
    hub, nodes 1-7 peer with it; host 8's node has no peer (it cannot reach the hub)."""
    require_testbed()
    with Testbed(n_hosts=9, dual_stack=(ALICE,), ipv4_only=(V4_ONLY,)) as tb:
        hub = tb.start_node(tb.hosts[HUB], "hub")
        names = ["hub", "alice", *(f"c{i}" for i in range(2, 8)), "dave"]
        nodes = [hub]
        for i in range(1, 9):
            peers = [] if i == V4_ONLY else [tb.hosts[HUB].endpoint()]
            nodes.append(tb.start_node(tb.hosts[i], names[i], peers=peers, wait=False))
        for node in nodes[1:]:
            tb.wait_ready(node)
        echo_port = tb.start_echo(tb.hosts[ALICE])
        nodes[ALICE].call("expose", name="echo", target=f"127.0.0.1:{echo_port}", public=True)
        yield Bed(tb, nodes, echo_port)
    assert not namespaces(tb.prefix), "the test bed left namespaces behind"


def test_every_host_reaches_alice_echo_through_its_own_namespace(bed: Bed) -> None:
    with bed.tb.explain():
        alice_host = bed.host(ALICE)
        clients = [bed.nodes[i] for i in CLIENTS]
        wait_for(
            lambda: all(knows_owner(c, "alice") for c in clients),
            SYNC_TIMEOUT,
            "every client to learn alice's records through the hub",
        )
        for i, client in zip(CLIENTS, clients, strict=True):
            reply = client.call("connect", service="alice.echo", local="0", name="alice-echo")
            port = int(str(reply["forward"]["local"]).rsplit(":", 1)[1])
            result = bed.tb.echo_check(bed.host(i), port, nbytes=64 * 1024 + i)
            assert result == {"sent": 64 * 1024 + i, "received": 64 * 1024 + i, "intact": True}
            # The link really crossed the bridge to alice's test address.
            assert f"[{alice_host.ipv6}]:4242" in link_addresses(client)


def test_alice_node_record_carries_both_families(bed: Bed) -> None:
    with bed.tb.explain():
        alice = bed.host(ALICE)
        reply = bed.nodes[2].call("resolve", address="alice.echo")
        bodies = " ".join(r["body"] for r in reply["records"] if r["kind"] == "node")
        assert str(alice.ipv6) in bodies and str(alice.ipv4) in bodies


def test_ipv4_only_host_reaches_dual_stack_owner_in_direct_mode(bed: Bed) -> None:
    with bed.tb.explain():
        alice, dave = bed.host(ALICE), bed.host(V4_ONLY)
        assert dave.ipv6 is None and dave.ipv4 is not None
        reply = bed.nodes[V4_ONLY].call(
            "connect", service="alice.echo", local="0", via=alice.endpoint(family=4)
        )
        port = int(str(reply["forward"]["local"]).rsplit(":", 1)[1])
        result = bed.tb.echo_check(dave, port, nbytes=100_000)
        assert result == {"sent": 100_000, "received": 100_000, "intact": True}
        assert any(a.startswith(f"{dave.ipv4}:") for a in link_addresses(bed.nodes[ALICE]))


def test_namespaces_have_no_route_out(bed: Bed) -> None:
    tb = bed.tb
    for host in tb.hosts:
        for family in ("-4", "-6"):
            routes = subprocess.run(
                ["ip", "-n", host.ns, family, "route", "show", "default"],
                capture_output=True,
                check=True,
            )
            assert routes.stdout.strip() == b"", f"{host.ns} has a default route"
    links = subprocess.run(
        ["ip", "-n", tb.bridge_ns, "-o", "link"], capture_output=True, check=True, text=True
    ).stdout
    names = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
    assert names == sorted(["lo", "br0", *(f"h{h.index}" for h in tb.hosts)])


def test_small_bed_renumbers_and_cleans_up_after_an_error() -> None:
    require_testbed()
    with pytest.raises(RuntimeError, match="boom"), Testbed(n_hosts=2, dual_stack=(0, 1)) as tb:
        a, b = tb.hosts
        port = tb.start_echo(b, bind="::")
        assert tb.echo_check(a, port, nbytes=1000, address=str(b.ipv6))["intact"]
        assert tb.echo_check(a, port, nbytes=1000, address=str(b.ipv4))["intact"]
        old = b.ipv6
        tb.change_address(b, tb.spare_ipv6(b))
        assert b.ipv6 != old
        global_v6 = [
            x["local"] for x in tb.addresses(b) if x["family"] == "inet6" and x["scope"] == "global"
        ]
        assert global_v6 == [b.ipv6]
        assert tb.echo_check(a, port, nbytes=1000, address=str(b.ipv6))["intact"]
        sleeper = tb.spawn(a, [sys.executable, "-c", "import signal; signal.pause()"])
        assert len(namespaces(tb.prefix)) == 3
        raise RuntimeError("boom")
    assert sleeper.poll() is not None, "a process started in the bed survived it"
    assert namespaces(tb.prefix) == []
