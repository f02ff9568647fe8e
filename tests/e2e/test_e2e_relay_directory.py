"""Relays found through the DHT (issue 11 e): five relays, an owner and a client that all
joined one hub by `--bootstrap` alone (no `--peer` anywhere, so no peer sync). The client
finds the relays in the DHT's relay directory (core/dht/directory.py), `vx6 relays` lists
them, and a forward through three of them carries bytes intact."""

from __future__ import annotations

import os

import pytest

from conftest import knows_owner
from kit.net import TCPServer, echo_once, expose, local_port, unique
from vx6.app.localnet import LocalNet, relays_known, wait_for

pytestmark = pytest.mark.timeout(120)

RELAYS = 5
FOUND_WITHIN = 30.0


def test_a_bootstrap_only_client_finds_relays_and_builds_three_hops(
    echo_server: TCPServer,
) -> None:
    with LocalNet() as net:
        hub = net.start("hub")
        boot = ("--bootstrap", hub.listen)
        relays = [net.start(f"r{i}", extra=("--relay", *boot), wait=False) for i in range(RELAYS)]
        alice = net.start("alice", extra=boot, wait=False)
        for node in (*relays, alice):
            net.wait_ready(node)
        bob = net.start("bob", extra=boot)

        wait_for(lambda: relays_known(bob, 3), FOUND_WITHIN, "bob to find 3 relays in the DHT")
        listed = bob.cli("relays")
        assert listed.returncode == 0, listed.stderr
        relay_prints = {r.call("id")["fingerprint"] for r in relays}
        shown = {r["fingerprint"] for r in bob.call("relays")["relays"]}
        assert len(shown) >= 3 and shown <= relay_prints  # relays, and only relays
        assert all(fp in listed.stdout.decode() for fp in shown)

        wait_for(lambda: knows_owner(bob, "alice"), FOUND_WITHIN, "bob to resolve alice")
        service = expose(alice, echo_server.address, allow=[bob.key])
        reply = bob.call(
            "connect",
            service=f"alice.{service}",
            local="0",
            name=unique("fwd"),
            hops=3,
            timeout=60.0,
        )
        assert reply["forward"]["path"] == "relay (3 hops)"
        data = os.urandom(256 * 1024)
        assert echo_once(local_port(reply), data) == data
