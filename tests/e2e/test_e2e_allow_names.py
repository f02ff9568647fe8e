"""Allow-lists by name, end to end (issue 11, defect c): a name the owner's registry does
not know yet is looked up in the DHT when exposed and retried until its claim appears,
`vx6 services` says which names are not resolved yet, and an entry that is neither a key
nor a name is refused with one line, from the CLI, the control op and config.toml."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kit.net import TCPServer, echo_handler, echo_once, local_port, stderr_line, unique
from vx6.app.localnet import LocalNet, LocalNode, wait_for

pytestmark = pytest.mark.timeout(120)

BOUND = 30.0  # generous on a loaded machine; the chase's first retry is 2 s after expose


@pytest.fixture
def dht_only() -> Iterator[tuple[LocalNet, LocalNode, LocalNode]]:
    """A hub and alice that know each other only through the DHT (no sync peers), so
    alice learns a claim only by looking it up."""
    with LocalNet() as net:
        hub = net.start("hub")
        alice = net.start("alice", extra=("--bootstrap", hub.listen))
        yield net, hub, alice


def joined(net: LocalNet, hub: LocalNode, name: str) -> LocalNode:
    node = net.start(name, extra=("--bootstrap", hub.listen))
    # Its claim is in the DHT once a third node can look it up (the hub, never alice).
    wait_for(lambda: hub.try_call("resolve", address=f"{name}.any").get("ok"), BOUND, name)
    return node


def try_forward(client: LocalNode, service: str) -> int | None:
    reply = client.try_call("connect", service=service, local="0", name=unique("fwd"))
    return local_port(reply) if reply.get("ok") else None


def allow_status(owner: LocalNode, service: str) -> dict[str, dict[str, Any]]:
    listed = {s["name"]: s for s in owner.call("services")["services"]}
    return {e["entry"]: e for e in listed[service]["allow_status"]}


def test_a_name_only_in_the_dht_is_allowed(
    dht_only: tuple[LocalNet, LocalNode, LocalNode],
) -> None:
    net, hub, alice = dht_only
    bob = joined(net, hub, "bob")
    with TCPServer(echo_handler) as target:
        service = unique("svc")
        alice.call("expose", name=service, target=target.address, allow=["bob"])
        port = wait_for(lambda: try_forward(bob, f"alice.{service}"), BOUND, "bob allowed", 0.5)
        assert echo_once(port, b"hello bob") == b"hello bob"
        status = allow_status(alice, service)["bob"]
        assert status["state"] == "resolved" and status["fingerprint"] is not None


def test_a_name_that_joins_later_is_allowed_once_its_claim_arrives(
    dht_only: tuple[LocalNet, LocalNode, LocalNode],
) -> None:
    net, hub, alice = dht_only
    with TCPServer(echo_handler) as target:
        service = unique("svc")
        alice.call("expose", name=service, target=target.address, allow=["carol"])
        assert allow_status(alice, service)["carol"]["state"] == "unresolved"
        shown = alice.cli("services")
        assert shown.returncode == 0 and b"carol (not resolved yet)" in shown.stdout

        carol = joined(net, hub, "carol")
        port = wait_for(lambda: try_forward(carol, f"alice.{service}"), BOUND, "carol allowed", 0.5)
        assert echo_once(port, b"hello carol") == b"hello carol"
        status = allow_status(alice, service)["carol"]
        assert status["state"] == "resolved"
        shown = alice.cli("services")
        assert f"carol (resolved: {status['fingerprint']})".encode() in shown.stdout


def test_a_bad_allow_entry_is_refused_with_one_line(
    dht_only: tuple[LocalNet, LocalNode, LocalNode],
) -> None:
    _, _, alice = dht_only
    result = alice.cli("expose", "web", "--target", "127.0.0.1:80", "--allow", "bad key!")
    assert result.returncode == 2, result
    assert "'bad key!'" in stderr_line(result)
    reply = alice.try_call("expose", name="web", target="127.0.0.1:80", allow=["bob", "a.b"])
    assert reply["ok"] is False and "'a.b'" in reply["error"]
    assert "web" not in {s["name"] for s in alice.call("services")["services"]}


def test_a_bad_allow_entry_in_config_toml_stops_the_node_with_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text(
        '[services.web]\ntarget = "127.0.0.1:80"\nallow = ["bob", "bad key!"]\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "vx6", "--home", str(home), "run", "--listen", "[::1]:0"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    assert "'bad key!'" in stderr_line(result)
