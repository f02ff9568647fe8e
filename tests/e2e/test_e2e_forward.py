"""End-to-end forwarding through real node processes on loopback (issue 2, points 4, 7-9
and the Tests section): bulk integrity both ways, half-close, many concurrent streams,
a stalled stream next to a busy one with bounded memory, HTTP through the tunnel,
direct IPv6 mode with key pinning, and an owner restart."""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import socket
import struct
import threading
from typing import Any

import pytest

from conftest import Trio, knows_owner
from kit.net import (
    BULK_HEADER,
    IO_TIMEOUT,
    HTTPFileServer,
    MiB,
    Pusher,
    TCPServer,
    connect,
    duplex,
    echo_once,
    expected_sha,
    expose,
    forward_to,
    payload,
    read_to_end,
    recv_all,
    recv_exact,
    recv_stream,
    refused_outcome,
    rss_mib,
    send_stream,
    stderr_line,
    unique,
)
from vx6.app.localnet import wait_for

pytestmark = pytest.mark.timeout(60)

RESULT_TIMEOUT = 45.0
RSS_BOUND_MIB = 150


def bulk_roundtrip(port: int, server: TCPServer, nbytes: int, seed: int) -> None:
    """Move `nbytes` each way at once through a forward to `bulk_handler` and check
    that each side received exactly what the other sent."""
    with connect(port) as sock:
        sock.sendall(BULK_HEADER.pack(nbytes, seed + 1))
        sent, received = duplex(sock, nbytes, seed)
    target = server.results.get(timeout=RESULT_TIMEOUT)
    assert target["error"] is None
    assert sent.nbytes == target["received"].nbytes == nbytes
    assert sent.sha256 == target["received"].sha256, "client -> target bytes differ"
    assert target["sent"].nbytes == received.nbytes == nbytes
    assert target["sent"].sha256 == received.sha256, "target -> client bytes differ"


def test_256_mib_each_way_identical_sha256(trio: Trio, bulk_server: TCPServer) -> None:
    service = expose(trio.alice, bulk_server.address, allow=[trio.bob.key])
    port = forward_to(trio.bob, "alice", service)
    bulk_roundtrip(port, bulk_server, 256 * MiB, seed=1)
    fwd = _forward(trio.bob, service)
    assert fwd["bytes_up"] >= 256 * MiB and fwd["bytes_down"] >= 256 * MiB


def test_half_close_client_shuts_write_and_reads_reply(trio: Trio, sha_server: TCPServer) -> None:
    service = expose(trio.alice, sha_server.address, allow=[trio.bob.key])
    port = forward_to(trio.bob, "alice", service)
    nbytes = 3 * MiB + 17
    with connect(port) as sock:
        sent = send_stream(sock, nbytes, seed=5, shut=True)
        reply = recv_all(sock)  # the target answers only after it has seen our EOF
    assert reply.decode() == f"{sent.sha256} {nbytes}"
    assert sha_server.results.get(timeout=RESULT_TIMEOUT).nbytes == nbytes


def greet_then_read(conn: socket.socket, results: queue.Queue[Any]) -> None:
    """The target half-closes first, then keeps reading the client's data."""
    conn.sendall(b"hello, then EOF")
    conn.shutdown(socket.SHUT_WR)
    got = recv_stream(conn)
    if got.nbytes:  # not the connect-time probe
        results.put(got)


def test_half_close_target_shuts_first_client_keeps_sending(trio: Trio) -> None:
    with TCPServer(greet_then_read) as server:
        service = expose(trio.alice, server.address, allow=[trio.bob.key])
        port = forward_to(trio.bob, "alice", service)
        with connect(port) as sock:
            assert recv_all(sock) == b"hello, then EOF"  # EOF from the target arrived
            sent = send_stream(sock, 2 * MiB, seed=9, shut=True)
            assert sock.recv(1) == b""
        got = server.results.get(timeout=RESULT_TIMEOUT)
    assert (got.nbytes, got.sha256) == (sent.nbytes, sent.sha256)


def test_100_concurrent_connections_through_one_forward(trio: Trio, echo_server: TCPServer) -> None:
    count = 100
    service = expose(trio.alice, echo_server.address, allow=[trio.bob.key])
    port = forward_to(trio.bob, "alice", service)
    owner_before = trio.alice.call("status")["streams_owner_total"]
    all_connected = threading.Barrier(count, timeout=IO_TIMEOUT)
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        data = payload(64 * 1024 + 257 * i, seed=1000 + i)  # distinct content and size
        try:
            with connect(port) as sock:
                all_connected.wait()  # every connection is open before any data flows
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                results[i] = recv_all(sock) == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RESULT_TIMEOUT)
    assert not errors, errors[:3]
    assert sorted(results) == list(range(count))
    assert all(results.values()), [i for i, ok in results.items() if not ok]
    status = trio.alice.call("status")
    assert status["streams_owner_total"] - owner_before == count
    fwd = next(f for f in trio.bob.call("forwards")["forwards"] if f["service"].endswith(service))
    assert fwd["connections"] == count and fwd["failures"] == 0
    # Every finished stream is released on both nodes.
    wait_for(
        lambda: trio.alice.call("status")["streams_owner_active"] == 0,
        10,
        "the owner to release all streams",
    )
    wait_for(
        lambda: _forward(trio.bob, service)["active"] == 0,
        10,
        "the forward to release all connections",
    )


def _forward(node: Any, service: str) -> dict[str, Any]:
    return next(f for f in node.call("forwards")["forwards"] if f["service"].endswith(service))


def test_aborted_clients_release_their_streams(trio: Trio, pusher: Pusher) -> None:
    alice, bob = trio.alice, trio.bob
    service = expose(alice, pusher.server.address, allow=[bob.key])
    port = forward_to(bob, "alice", service)
    socks = [connect(port) for _ in range(20)]
    wait_for(
        lambda: len([n for n in pusher.per_connection if n > 0]) >= 20,
        20,
        "every stream to carry data",
    )
    assert alice.call("status")["streams_owner_active"] == 20
    for sock in socks:  # abortive close: RST, no FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    wait_for(
        lambda: alice.call("status")["streams_owner_active"] == 0,
        10,
        "the owner to drop the streams of aborted clients",
    )
    wait_for(lambda: _forward(bob, service)["active"] == 0, 10, "the forward to drop them")
    # ... and the owner closed its connections to the target, which sees them break.
    wait_for(
        lambda: pusher.server.results.qsize() >= 21, 10, "the target's connections to end"
    )  # 20 streams + the connect-time probe


def abort_after_greeting(conn: socket.socket, results: queue.Queue[Any]) -> None:
    conn.sendall(b"partial answer")
    conn.recv(1)  # wait for the client's byte, so the greeting is not lost in the RST
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    results.put("aborted")


def test_target_reset_reaches_the_client_as_an_error_not_a_clean_end(trio: Trio) -> None:
    with TCPServer(abort_after_greeting) as server:
        service = expose(trio.alice, server.address, allow=[trio.bob.key])
        port = forward_to(trio.bob, "alice", service)
        with connect(port, timeout=10) as sock:
            assert recv_exact(sock, 14) == b"partial answer"
            sock.sendall(b"!")
            assert server.results.get(timeout=10) == "aborted"
            assert read_to_end(sock) == "reset"


def _links_to(node: Any, key: str) -> list[dict[str, Any]]:
    return [link for link in node.call("peers")["links"] if link["key"] == key]


def test_stalled_reader_does_not_stall_other_stream_and_memory_stays_bounded(
    trio: Trio, pusher: Pusher, bulk_server: TCPServer
) -> None:
    alice, bob = trio.alice, trio.bob
    firehose = expose(alice, pusher.server.address, allow=[bob.key])
    bulk = expose(alice, bulk_server.address, allow=[bob.key])
    port_a = forward_to(bob, "alice", firehose)
    port_b = forward_to(bob, "alice", bulk)
    stalled = connect(port_a, rcvbuf=64 * 1024)  # stream A: opened, never read
    try:
        wait_for(lambda: pusher.pushed >= 4 * MiB, 20, "the pusher to start filling stream A")
        # Stream B on the same link moves 32 MiB each way while A stays stalled.
        bulk_roundtrip(port_b, bulk_server, 32 * MiB, seed=77)
        assert len(_links_to(bob, alice.key)) == 1, "A and B must share one link"
        pushed_while_stalled = pusher.pushed
        # Everything A's target pushed sits in bounded buffers: kernel socket buffers,
        # one credit window and the pipes' high-water marks, never an unbounded queue.
        assert pushed_while_stalled < 64 * MiB, pushed_while_stalled
        for node in (bob, alice):
            rss = rss_mib(node.process.pid)
            assert rss < RSS_BOUND_MIB, f"{node.name} RSS {rss:.0f} MiB while A is stalled"
        # A was only paused: reading it now resumes the flow, intact from the start.
        got = recv_stream(stalled, limit=pushed_while_stalled + 8 * MiB)
        assert got.sha256 == expected_sha(got.nbytes, seed=Pusher.PUSH_SEED)
        assert pusher.pushed > pushed_while_stalled
    finally:
        stalled.close()


def test_http_through_the_tunnel(trio: Trio, http_server: tuple[HTTPFileServer, Any]) -> None:
    server, root = http_server
    body = os.urandom(3 * MiB + 123)
    (root / "blob.bin").write_bytes(body)
    (root / "index.html").write_text("<h1>vx6</h1>\n")
    service = expose(trio.alice, server.address, allow=[trio.bob.key])
    port = forward_to(trio.bob, "alice", service)

    def get(path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    status, headers, got = get("/blob.bin")
    assert status == 200
    assert int(headers["Content-Length"]) == len(body)
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    assert get("/index.html")[::2] == (200, b"<h1>vx6</h1>\n")
    assert get("/missing")[0] == 404
    assert get("/blob.bin", method="POST")[0] == 501  # the server's own answer, relayed


# ---------------------------------------------------------------- direct IPv6 mode
def test_direct_ipv6_mode_without_shared_peer_pins_the_key(
    trio: Trio, echo_server: TCPServer
) -> None:
    net, alice = trio.net, trio.alice
    solo = net.start(unique("solo"))  # no --peer: it knows nobody
    assert not knows_owner(solo, "alice")
    service = expose(alice, echo_server.address, allow=[solo.key])
    assert alice.listen.startswith("[::1]:")
    port = forward_to(solo, "alice", service, via=alice.listen)
    data = payload(200_000, seed=31)
    assert echo_once(port, data) == data
    resolved = solo.call("resolve", address=f"alice.{service}")
    assert resolved["key"] == alice.key
    assert resolved["pinned"] is True
    status = solo.call("status")
    assert status["forwards"][0]["path"] == "direct-ip"
    # Direct mode makes no discovery traffic: solo received only alice's own node record
    # and name claim, which it asked her for on the link (it held no claim of "alice").
    assert status["counters"].get("records_accepted", 0) == 2
    assert {r["source"] for r in resolved["records"]} == {f"via {alice.listen}"}


def test_direct_ipv6_mode_key_mismatch_for_a_different_owner_at_the_same_address(
    trio: Trio, echo_server: TCPServer
) -> None:
    net = trio.net
    carol_name = unique("carol")
    carol = net.start(carol_name)
    solo = net.start(unique("solo"))
    service = expose(carol, echo_server.address, allow=[solo.key])
    via = carol.listen
    port = forward_to(solo, carol_name, service, via=via)
    assert echo_once(port, b"first contact") == b"first contact"
    assert solo.call("resolve", address=f"{carol_name}.x")["key"] == carol.key
    # Another node, with another key and the same name, now answers at carol's address.
    net.stop(carol_name)
    impostor = net.start(unique("impostor"), listen=via, claim=False, extra=("--name", carol_name))
    assert impostor.listen == via and impostor.key != carol.key
    reply = solo.try_call(
        "connect", service=f"{carol_name}.{service}", local="0", via=via, name=unique("fwd")
    )
    assert not reply["ok"] and reply["code"] == "KEY_MISMATCH", reply
    result = solo.cli("connect", f"{carol_name}.{service}", "--via", via, "--local", "0")
    assert result.returncode == 1
    line = stderr_line(result)
    assert line.startswith("vx6: key mismatch") and line.endswith("[KEY_MISMATCH]"), line
    result = solo.cli("nc", f"{carol_name}.{service}", "--via", via, input_bytes=b"secret")
    assert result.returncode != 0 and result.stdout == b""
    assert stderr_line(result).startswith("vx6: key mismatch")
    # The forward made before the swap refuses to carry bytes to the impostor.
    assert refused_outcome(port, b"secret", timeout=10) in ("eof", "reset")
    assert solo.call("resolve", address=f"{carol_name}.x")["key"] == carol.key  # pin kept


# ---------------------------------------------------------------- restart
def test_restarted_owner_keeps_key_name_and_service(trio: Trio, echo_server: TCPServer) -> None:
    net, hub, bob = trio.net, trio.hub, trio.bob
    rita_name = unique("rita")
    rita = net.start(rita_name, peers=(hub.listen,))
    service = expose(rita, echo_server.address, allow=[bob.key])
    wait_for(lambda: knows_owner(bob, rita_name), 15, f"bob to learn {rita_name}")
    port = forward_to(bob, rita_name, service)
    assert echo_once(port, b"before restart") == b"before restart"
    before = rita.call("status")

    rita = net.restart(rita_name, peers=(hub.listen,))  # new process, new port
    after = rita.call("status")
    assert after["key"] == before["key"]
    assert after["name"] == rita_name
    assert after["listen"] != before["listen"]
    services = rita.call("services")["services"]
    assert [s["name"] for s in services] == [service]
    assert services[0]["target"] == echo_server.address

    def echoes() -> bool:
        try:
            return echo_once(port, b"after restart", timeout=5) == b"after restart"
        except OSError:
            return False  # bob has not learnt the new address yet

    wait_for(echoes, 20, "bob's forward to reach the restarted owner", interval=0.1)
    assert bob.call("resolve", address=f"{rita_name}.{service}")["key"] == before["key"]


def test_a_forward_says_where_its_owner_key_came_from(trio: Trio, echo_server: TCPServer) -> None:
    """`vx6 connect` reports the resolution's provenance: a sync peer's claim the first
    time, the pin after it, and `via` for direct mode."""
    net, alice, bob = trio.net, trio.alice, trio.bob
    service = expose(alice, echo_server.address, public=True)
    first = bob.call("connect", service=f"alice.{service}", local="0", name=unique("p1"))
    assert first["setup"]["owner"] == alice.call("id")["fingerprint"]
    assert first["setup"]["provenance"] in ("peer", "pinned"), first["setup"]
    again = bob.call("connect", service=f"alice.{service}", local="0", name=unique("p2"))
    assert again["setup"]["provenance"] == "pinned", again["setup"]
    solo = net.start(unique("solo"))
    direct = solo.call(
        "connect", service=f"alice.{service}", local="0", via=alice.listen, name=unique("p3")
    )
    assert direct["setup"]["provenance"] == "via", direct["setup"]
