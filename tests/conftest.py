"""Shared fixtures for the end-to-end tests: a small real network (hub + alice + bob,
each a `python -m vx6 run` process in its own temporary home on loopback) built once per
test module, and target servers in threads. Every process is stopped and every home
removed when the module ends, also after a failure; a failed test's report carries the
tail of every node's log.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from kit.net import (
    HTTPFileServer,
    Pusher,
    TCPServer,
    bulk_handler,
    echo_handler,
    sha_after_eof_handler,
)
from kit.netns import no_leftover_namespaces  # noqa: F401  (a fixture, shared by the netns tests)
from vx6.app.localnet import LocalNet, LocalNode, wait_for

# The property tests check behaviour, not speed. Hypothesis's default deadline (200 ms per
# example) and its too-slow health check turn a slow moment on a shared 2-core CI machine
# into a failed run, so neither applies; every test still bounds what it waits for.
settings.register_profile("vx6", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("vx6")

NET_READY_TIMEOUT = 15.0

# The quick loop for one's own edits, `python -m pytest -m "not slow"` (about 2 minutes
# on an idle 2-core machine), leaves out the modules below: benchmark smoke runs, the
# hostile suite, the DHT simulator, the namespace test bed, relay bulk transfers and
# the demo. CI and the README's command run everything.
SLOW_MODULES = {
    "test_bench_floor",
    "test_bench_hidden",
    "test_bench_hostile",
    "test_bench_relay",
    "test_demo",
    "test_e2e_hidden",
    "test_e2e_relay",
    "test_netns_basic",
    "test_netns_dht",
    "test_netns_dynamic",
    "test_netns_relay",
    "test_sim",
}


FOLDERS = ("unit", "e2e", "netns", "bench")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries its folder's marker (unit, e2e, netns, bench), so `-m unit` runs
    the in-process tests alone; the modules above also carry `slow`."""
    for item in items:
        folder = item.path.parent.name
        if folder in FOLDERS:
            item.add_marker(getattr(pytest.mark, folder))
        module = getattr(item, "module", None)  # doctest items have none
        if folder in ("netns", "bench") or (module is not None and module.__name__ in SLOW_MODULES):
            item.add_marker(pytest.mark.slow)


@dataclass
class Trio:
    net: LocalNet
    hub: LocalNode
    alice: LocalNode
    bob: LocalNode


def knows_owner(node: LocalNode, owner: str) -> bool:
    """True once `node` holds `owner`'s name claim and node record (all it needs to dial)."""
    reply = node.try_call("resolve", address=f"{owner}.any")
    return bool(reply.get("ok")) and any(r["kind"] == "node" for r in reply["records"])


def start_trio(net: LocalNet) -> Trio:
    """hub, then alice and bob peered with it; returns once each resolves the other."""
    hub = net.start("hub")
    alice = net.start("alice", peers=(hub.listen,))
    bob = net.start("bob", peers=(hub.listen,))
    wait_for(
        lambda: knows_owner(bob, "alice") and knows_owner(alice, "bob"),
        NET_READY_TIMEOUT,
        "alice and bob to learn each other's records via hub",
    )
    return Trio(net, hub, alice, bob)


@pytest.fixture(scope="module")
def localnet() -> Iterator[LocalNet]:
    with LocalNet() as net:
        yield net


@pytest.fixture(scope="module")
def trio(localnet: LocalNet) -> Trio:
    return start_trio(localnet)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """On a failure, attach the tail of every node's log to the report."""
    report = yield
    net = getattr(item, "funcargs", {}).get("localnet")
    if report.failed and isinstance(net, LocalNet):  # type: ignore[attr-defined]
        for node in net.nodes.values():
            report.sections.append(  # type: ignore[attr-defined]
                (f"vx6 node {node.name} log", node.log_text()[-6000:])
            )
    return report


@pytest.fixture(scope="module")
def echo_server() -> Iterator[TCPServer]:
    with TCPServer(echo_handler) as server:
        yield server


@pytest.fixture(scope="module")
def sha_server() -> Iterator[TCPServer]:
    with TCPServer(sha_after_eof_handler) as server:
        yield server


@pytest.fixture(scope="module")
def bulk_server() -> Iterator[TCPServer]:
    with TCPServer(bulk_handler) as server:
        yield server


@pytest.fixture
def pusher() -> Iterator[Pusher]:
    p = Pusher()
    yield p
    p.close()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[HTTPFileServer, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    server = HTTPFileServer(root)
    yield server, root
    server.close()
