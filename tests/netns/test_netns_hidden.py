"""Hidden services across seventeen namespace hosts (docs/hidden.md): a bootstrap node,
fourteen relays, a service host and a client host, every node started with
`--bootstrap` alone (no sync peer anywhere), so relays, descriptors and node records are
all found through the DHT.

The service host runs two hidden services on one target inside its namespace, one per
path profile (the service side of a path follows the service's own profile, the client
side the client's), each allowing the client's key alone; the client connects to each
by its alias (`vx6 connect ALIAS --local 0 --profile P`, in its namespace). Through each
joined path 64 MiB go each way intact; exactly 3 + 1 + 3 (fast) or 5 + 1 + 5 (balanced)
relays carry it, counted from the relays' own cell counters. Captures on the client's
and the service's interfaces, running from before the first node starts, never show the
plaintext marker nor a TCP packet between the two hosts (no link, so no cell or stream
between them), and no relay's cells ever held the marker: every relay runs under
relay_scripts' marker-logging wrapper.

Between the two hosts go only the packets any two DHT members exchange (UDP on the DHT
port) and IPv6 neighbour discovery, none naming a hidden service: the service publishes
its descriptors and the client fetches them through directory proxies (docs/hidden.md
section 3), so neither's own DHT node sends a STORE or lookup for a descriptor key (it
did before: the client, among the k closest to a descriptor key, got the service's
STORE straight from the service's address).

The programs that move or capture traffic run inside the namespaces (relay_scripts.py);
the machine's own namespace only signals processes and talks to nodes over their
control sockets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kit.net import MiB, local_port, unique
from kit.netns import NODE_PORT, Host, NetnsNode, Testbed, require_testbed
from kit.relay_scripts import SCRIPT, Lines
from vx6.app.localnet import wait_for
from vx6.core.dht.keys import hidden_descriptor_keys
from vx6.core.hidden.alias import parse_alias
from vx6.core.hidden.descriptor import blinded_key_for, time_period
from vx6.wire.dht import MessageType

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.usefixtures("no_leftover_namespaces"),
]

BOOT, SERVICE, CLIENT = 0, 15, 16
RELAYS = range(1, 15)
HOSTS = 17
READY_TIMEOUT = 60.0
WAIT = 60.0
BULK = 64 * MiB
# Relay cells carry at most 16253 bytes of stream data on a joined path, so one relay on
# the path sends at least this many cells for BULK each way; intro circuits, flow
# control and idle paths add far fewer.
CARRIAGE_CELLS = 2 * BULK // 16_384
PATH_RELAYS = {"fast": 3 + 1 + 3, "balanced": 5 + 1 + 5}
SUMMARY = ("bytes", "packets", "hits", "drops")
CAPTURE_SECONDS = 600  # outlives the module; stopped by SIGTERM in the last test
PY = sys.executable
DHT_KIND = f"udp {NODE_PORT}-{NODE_PORT}"  # a node's DHT is UDP on its listen port
NEIGHBOUR_DISCOVERY = {f"icmpv6 {t}" for t in range(133, 138)}  # RS, RA, NS, NA, redirect


@dataclass
class Capture:
    host: Host
    proc: subprocess.Popen[bytes]
    lines: Lines


@dataclass
class Bed:
    tb: Testbed
    relays: list[NetnsNode]
    service: NetnsNode
    client: NetnsNode
    aliases: dict[str, str]  # profile -> alias of the hidden service with that profile
    reports: Lines  # one JSON line per connection the service's target served
    captures: list[Capture]
    marker: bytes
    captured: dict[str, dict[str, Any]] | None = None  # host ns -> the capture's result

    def run(self, host: int, *argv: str, timeout: float = 150.0) -> dict[str, Any]:
        """Run a relay_scripts program inside a host's namespace; its JSON result."""
        proc = self.tb.exec(self.tb.hosts[host], [PY, str(SCRIPT), *argv], timeout=timeout)
        err = proc.stderr.decode(errors="replace")[-3000:]
        assert proc.returncode == 0, f"{argv[0]} failed: {err}"
        result: dict[str, Any] = json.loads(proc.stdout.decode().splitlines()[-1])
        return result

    def bulk(self, port: int, nbytes: int, marker: bytes = b"") -> dict[str, Any]:
        """The client host's program through a forward; with the target's view of it."""
        result = self.run(CLIENT, "bulk", str(port), str(nbytes), marker.hex())
        seen = self.reports.json(WAIT, "the target's report", tag=result["tag"])
        return {**result, "target": seen}


def start_relay(tb: Testbed, host: Host, name: str, boot: str, marker: bytes) -> NetnsNode:
    """Like Testbed.start_node, but under relay_scripts' marker-logging relay wrapper."""
    home = tb.net.base / name
    home.mkdir(parents=True, exist_ok=True)
    argv = [PY, str(SCRIPT), "relay", marker.hex(), "--home", str(home), "run", "--relay"]
    argv += ["--listen", host.endpoint(), "--name", name, "--bootstrap", boot]
    log_path = tb.net.base / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = tb.spawn(host, argv, stdout=log)
    node = NetnsNode(name, home, proc, log_path, host=host)
    tb.net.nodes[name] = node
    return node


def relays_found(node: NetnsNode) -> int:
    reply = node.try_call("relays")
    return len(reply["relays"]) if reply.get("ok") else 0


def directory_entries(node: NetnsNode) -> int:
    reply = node.try_call("status")
    return sum(reply["dht"]["relay_directory_held"]) if reply.get("ok") else 0


def host_addresses(tb: Testbed, host: Host) -> str:
    """Every address of the host's interface (global and link-local), comma-separated."""
    return ",".join(a["local"] for a in tb.addresses(host))


def start_capture(tb: Testbed, host: Host, marker: bytes, a: str, b: str) -> Capture:
    argv = [PY, str(SCRIPT), "capture", host.ifname, marker.hex(), str(CAPTURE_SECONDS), a, b]
    proc = tb.spawn(host, argv, stdout=subprocess.PIPE)
    lines = Lines(proc.stdout)
    lines.wait(lambda line: line == "ready", 10, f"the capture in {host.ns}")
    return Capture(host, proc, lines)


def reachable(service: NetnsNode) -> set[str]:
    reply = service.try_call("hidden")
    return {h["name"] for h in reply.get("hidden", []) if h.get("reachable")}


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    require_testbed()
    with Testbed(n_hosts=HOSTS) as tb, tb.explain():
        hosts = tb.hosts
        marker = b"VX6-HIDDEN-PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
        client_addrs = host_addresses(tb, hosts[CLIENT])
        service_addrs = host_addresses(tb, hosts[SERVICE])
        captures = [
            start_capture(tb, hosts[i], marker, client_addrs, service_addrs)
            for i in (CLIENT, SERVICE)
        ]
        boot_node = tb.start_node(hosts[BOOT], "boot")
        boot = hosts[BOOT].endpoint()
        relays = [start_relay(tb, hosts[i], f"r{i}", boot, marker) for i in RELAYS]
        for relay in relays:
            tb.wait_ready(relay, timeout=READY_TIMEOUT)
        # The client and the service stop looking for relays once they know eight (until
        # 30 minutes later), so they start once every relay's directory entry is stored.
        wait_for(
            lambda: directory_entries(boot_node) >= len(RELAYS),
            READY_TIMEOUT,
            "every relay's directory entry to reach the bootstrap node",
        )
        service = tb.start_node(hosts[SERVICE], "svc", extra=["--bootstrap", boot], wait=False)
        client = tb.start_node(hosts[CLIENT], "cli", extra=["--bootstrap", boot], wait=False)
        for node in (service, client):
            tb.wait_ready(node, timeout=READY_TIMEOUT)
        wait_for(
            lambda: relays_found(service) >= len(RELAYS) and relays_found(client) >= len(RELAYS),
            READY_TIMEOUT,
            "the service and the client to find all fourteen relays",
        )
        target = tb.spawn(
            hosts[SERVICE], [PY, str(SCRIPT), "target", marker.hex()], stdout=subprocess.PIPE
        )
        reports = Lines(target.stdout)
        port = int(reports.wait(str.isdigit, 10, "the target's port"))
        aliases = {}
        for profile in PATH_RELAYS:
            made = service.cli(
                "hidden", "create", profile, "--target", f"127.0.0.1:{port}",
                "--profile", profile, "--allow", client.key,
            )  # fmt: skip
            assert made.returncode == 0, made.stderr.decode(errors="replace")
            aliases[profile] = made.stdout.decode().strip()
        service.call("reload")
        wait_for(
            lambda: reachable(service) >= set(PATH_RELAYS),
            READY_TIMEOUT,
            "both hidden services to be reachable",
        )
        yield Bed(tb, relays, service, client, aliases, reports, captures, marker)


def cells_out(relay: NetnsNode) -> int:
    count: int = relay.call("status", timeout=10.0)["circuits"]["cells_out"]
    return count


def shared_guard_rendezvous(bed: Bed, profile: str) -> int:
    live = next(h for h in bed.service.call("hidden")["hidden"] if h["name"] == profile)
    count: int = live["shared_guard_rendezvous"]
    return count


def service_guards(bed: Bed, profile: str) -> set[str]:
    live = next(h for h in bed.service.call("hidden")["hidden"] if h["name"] == profile)
    return {g["identity"] for g in live["guards"]}


def hidden_forward(bed: Bed, profile: str) -> int:
    """`vx6 connect ALIAS --local 0 --profile PROFILE` on the client host; the port."""
    made = bed.client.cli(
        "connect", bed.aliases[profile], "--local", "0", "--profile", profile,
        "--name", unique(profile), "--json", timeout=120.0,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr.decode(errors="replace")
    reply = json.loads(made.stdout)
    assert reply["forward"]["path"] == f"hidden ({profile})", reply
    return local_port(reply)


@pytest.mark.parametrize("profile", list(PATH_RELAYS))
def test_64_mib_each_way_through_exactly_the_profiles_relays(bed: Bed, profile: str) -> None:
    with bed.tb.explain():
        shared_before = shared_guard_rendezvous(bed, profile)
        port = hidden_forward(bed, profile)
        before = [cells_out(r) for r in bed.relays]
        result = bed.bulk(port, BULK)
        moved = [cells_out(r) - b for r, b in zip(bed.relays, before, strict=True)]
        assert result["end"] == "eof" and result["send_error"] is None, result
        # + the 16-byte tag that names the connection at the target
        assert result["sent"] == result["received"] == result["target"]["received"] == BULK + 16
        assert result["sent_sha"] == result["target"]["sha256"] == result["received_sha"]
        # A relay on the joined path sends every cell of it once each way; one that is on
        # both sides (the service's guard in the client's half, docs/hidden.md section 6,
        # counted by the service) carries it twice.
        carriages = sum(m // CARRIAGE_CELLS for m in moved)
        carriers = sum(1 for m in moved if m >= CARRIAGE_CELLS)
        assert carriages == PATH_RELAYS[profile], moved
        if shared_guard_rendezvous(bed, profile) == shared_before:
            assert carriers == PATH_RELAYS[profile], moved
        twice = {r.key for r, m in zip(bed.relays, moved, strict=True) if m >= 2 * CARRIAGE_CELLS}
        assert twice <= service_guards(bed, profile), (twice, moved)
        took = result["seconds"]
        print(f"{profile}: 64 MiB each way, {carriages} hops on {carriers} relays, {took} s")


def service_keys(bed: Bed) -> list[bytes]:
    """What names a hidden service in a datagram: its alias key, its blinded keys
    (previous, current and next period) and the DHT keys its descriptors live under."""
    now = time.time()
    keys = []
    for alias in bed.aliases.values():
        public = parse_alias(alias)
        keys.append(public)
        for period in (time_period(now) + d for d in (-1, 0, 1)):
            blinded = blinded_key_for(public, period)
            keys += [blinded, *hidden_descriptor_keys(blinded)]
    return keys


def captured(bed: Bed) -> dict[str, dict[str, Any]]:
    """Stop both captures (once) and keep what they saw."""
    if bed.captured is None:
        for capture in bed.captures:
            capture.proc.send_signal(signal.SIGTERM)
        bed.captured = {
            c.host.ns: c.lines.json(WAIT, f"the capture result in {c.host.ns}")
            for c in bed.captures
        }
    return bed.captured


def describe_frame(frame: bytes, service: str) -> str:
    """'service -> client UDP STORE, 1188 bytes' and the like, for failure messages."""
    source = frame[22:38] if frame[12:14] == b"\x86\xdd" else frame[26:30]
    from_service = socket.inet_ntop(socket.AF_INET6, source) == service
    direction = "service -> client" if from_service else "client -> service"
    what = f"ip proto {frame[20]}"
    if frame[12:14] == b"\x86\xdd" and frame[20] == 17 and len(frame) > 63:
        message = frame[63]  # after Ethernet 14, IPv6 40, UDP 8 and the version byte
        what = f"DHT {MessageType(message).name if message in set(MessageType) else message}"
    return f"{direction} {what}, {len(frame)} bytes"


def test_no_tcp_between_client_and_service_and_no_plaintext_anywhere(bed: Bed) -> None:
    with bed.tb.explain():
        nbytes = 4 * MiB
        for profile in PATH_RELAYS:  # the marker itself, through both kinds of path
            result = bed.bulk(hidden_forward(bed, profile), nbytes, bed.marker)
            assert result["markers_sent"] > 50_000
            assert result["target"]["markers"] == result["markers_sent"]
            assert result["received_sha"] == result["sent_sha"] == result["target"]["sha256"]
        for ns, seen in captured(bed).items():
            where = f"{ns}: {seen['between']} " + str({k: seen[k] for k in SUMMARY})
            assert "tcp" not in seen["between"], where  # no link between the two, ever
            assert seen["hits"] == 0, where
            assert seen["drops"] == 0, where  # so nothing could have slipped past
            # Each byte of the transfers passes this interface, both ways.
            assert seen["bytes"] >= 2 * len(PATH_RELAYS) * nbytes, where
            print(f"captured in {ns}: {seen['bytes']} bytes; between the two: {seen['between']}")
        for relay in bed.relays:
            assert relay.process.poll() is None, f"{relay.name} died"
            assert "SAW THE PLAINTEXT MARKER" not in relay.log_text(), relay.name


def test_nothing_hidden_service_related_between_client_and_service(bed: Bed) -> None:
    """Descriptors go through directory proxies (docs/hidden.md section 3), so the only
    packets between the two hosts are what any two DHT members exchange (routing-table
    upkeep, node records: UDP on the DHT port) and IPv6 neighbour discovery, and none of
    them names a hidden service (alias, blinded or descriptor key). Plain DHT upkeep is
    allowed: both hosts are DHT members, and Kademlia has any two members talk; it says
    nothing about hidden services (a packet naming one is what the first check refuses)."""
    with bed.tb.explain():
        service = bed.service.host
        assert service is not None and service.ipv6 is not None
        keys = service_keys(bed)
        for ns, seen in captured(bed).items():
            frames = [bytes.fromhex(f) for f in seen["between_frames"]]
            naming = [describe_frame(f, service.ipv6) for f in frames if any(k in f for k in keys)]
            assert not naming, f"{ns}: datagrams naming a hidden service: {naming[:6]}"
            other = {
                kind: n
                for kind, n in seen["between"].items()
                if kind != DHT_KIND and kind not in NEIGHBOUR_DISCOVERY
            }
            assert not other, f"{ns}: {other}"
            kinds = sorted({describe_frame(f, service.ipv6).split(",")[0] for f in frames})
            print(f"{ns}: between the two: {seen['between']}: {kinds}")
