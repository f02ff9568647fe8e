"""End-to-end errors a user can read, and hostile input (issue 2, points 3 and 10).

Each failure of point 10 (unknown name, unknown service, not allowed, owner unreachable,
target refused) is checked three ways against real node processes: the `connect`
control op (typed code), `vx6 connect` and `vx6 nc` (one distinct line on stderr,
non-zero exit). Forwards whose far end fails later close the local TCP connection.
Replayed, tampered and forged records pushed over a real link are refused, and garbage
on a link closes only that link."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from conftest import Trio, knows_owner, start_trio
from kit.net import (
    TCPServer,
    closed_port,
    connect,
    counters,
    dial_node,
    echo_handler,
    echo_once,
    expose,
    forward_to,
    payload,
    push_records,
    read_to_end,
    recv_all,
    recv_exact,
    refused_outcome,
    stderr_line,
    unique,
)
from vx6.app.localnet import LocalNet, LocalNode, wait_for
from vx6.core.records import make_record
from vx6.crypto.keys import Identity, key_to_text
from vx6.errors import CloseCode
from vx6.net.addresses import parse_endpoint
from vx6.net.link import LinkProtocol
from vx6.net.ratelog import DEFAULT_BURST
from vx6.wire import cells, frames
from vx6.wire.records import Mode, ServiceBody, decode_record, encode_record

CLOSE_BOUND = 10.0  # a failed stream must close its local connection within this

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Case:
    address: str
    code: str
    message: str  # how the user-facing line starts (errors.STREAM_ERROR_MESSAGES)
    client_side: bool  # detected by the client's node rather than refused by the owner
    category: str = ""  # the owner's rate-limited log category for the refusal


CASES = {
    "unknown-name": Case("nobody.echo", "UNKNOWN_NAME", "unknown name", True),
    "unknown-service": Case(
        "alice.nosuch", "UNKNOWN_SERVICE", "unknown service", False, "owner-unknown-service"
    ),
    "not-allowed": Case("alice.priv", "NOT_ALLOWED", "not allowed", False, "owner-not-allowed"),
    "owner-unreachable": Case("carol.echo", "OWNER_UNREACHABLE", "owner unreachable", True),
    "target-refused": Case(
        "alice.closed", "TARGET_REFUSED", "target refused", False, "owner-target-refused"
    ),
}


@pytest.fixture(scope="module")
def errnet(localnet: LocalNet) -> Iterator[Trio]:
    """alice exposes `priv` (only hub may use it) and `closed` (nothing listens on its
    target); carol's records are known to bob but carol's process is stopped."""
    trio = start_trio(localnet)
    with TCPServer(echo_handler) as echo:
        expose(trio.alice, f"127.0.0.1:{closed_port()}", allow=[trio.bob.key], name="closed")
        expose(trio.alice, echo.address, allow=[trio.hub.key], name="priv")
        carol = localnet.start("carol", peers=(trio.hub.listen,))
        expose(carol, echo.address, public=True, name="echo")
        wait_for(lambda: knows_owner(trio.bob, "carol"), 15, "bob to learn carol's records")
        localnet.stop("carol")
        yield trio


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_connect_control_op_gives_typed_code(errnet: Trio, case: Case) -> None:
    reply = errnet.bob.try_call("connect", service=case.address, local="0", name=unique("f"))
    assert reply["ok"] is False
    assert reply["code"] == case.code, reply
    assert reply["error"].startswith(case.message), reply
    assert not any(f["service"] == case.address for f in errnet.bob.call("forwards")["forwards"])


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_cli_connect_prints_one_distinct_line_and_fails(errnet: Trio, case: Case) -> None:
    result = errnet.bob.cli("connect", case.address, "--local", "0")
    assert result.returncode == 1
    line = stderr_line(result)
    assert line.startswith(f"vx6: {case.message}"), line
    assert line.endswith(f"[{case.code}]"), line
    assert result.stdout == b""


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_cli_nc_prints_one_distinct_line_and_fails(errnet: Trio, case: Case) -> None:
    result = errnet.bob.cli("nc", case.address, input_bytes=b"are you there?\n", timeout=30)
    assert result.returncode != 0
    line = stderr_line(result)
    assert line.startswith(f"vx6: {case.message}"), line
    assert result.stdout == b""


@pytest.mark.parametrize("case", list(CASES.values()), ids=CASES.keys())
def test_daemon_logs_the_failure(errnet: Trio, case: Case) -> None:
    bob, alice = errnet.bob, errnet.alice
    bob_mark = len(bob.log_text())
    refused_before = alice.call("status")["refusals"].get(case.category, 0)
    reply = bob.try_call("connect", service=case.address, local="0", name=unique("f"))
    assert reply["code"] == case.code
    detail = reply["error"].split(": ", 1)[1].split(": ", 1)[-1]
    # Log lines are written before the reply goes out, so no waiting is needed.
    bob_log = bob.log_text()[bob_mark:]
    assert case.message in bob_log.lower() or detail in bob_log, bob_log
    if not case.client_side:
        # The owner's refusal lines are rate-limited (other tests of this module refuse
        # the same way within the minute), but every refusal is counted exactly.
        assert alice.call("status")["refusals"][case.category] == refused_before + 1
        assert "refused" in alice.log_text()


# ---------------------------------------------------------------- failures after connect
def assert_closed_promptly(port: int) -> None:
    """A connection through the forward ends (EOF or reset) instead of hanging."""
    started = time.monotonic()
    assert refused_outcome(port, b"anyone?", timeout=CLOSE_BOUND) in ("eof", "reset")
    assert time.monotonic() - started < CLOSE_BOUND


def _forward(node: LocalNode, port: int) -> dict[str, Any]:
    return next(f for f in node.call("forwards")["forwards"] if f["local"].endswith(f":{port}"))


def test_forward_whose_target_later_refuses_closes_the_local_connection(errnet: Trio) -> None:
    alice, bob = errnet.alice, errnet.bob
    with TCPServer(echo_handler) as target:
        service = expose(alice, target.address, allow=[bob.key])
        port = forward_to(bob, "alice", service)
        assert echo_once(port, b"ping") == b"ping"
        refused_before = counters(alice).get("streams_refused_target", 0)
        target.stop_listening()
        assert_closed_promptly(port)
    assert counters(alice).get("streams_refused_target", 0) == refused_before + 1
    last = wait_for(lambda: _forward(bob, port)["last_error"], 15, "the forward's last_error")
    assert "Connect call failed" in last or "refused" in last.lower(), last


def test_forward_whose_service_is_withdrawn_closes_the_local_connection(errnet: Trio) -> None:
    alice, bob = errnet.alice, errnet.bob
    with TCPServer(echo_handler) as target:
        service = expose(alice, target.address, allow=[bob.key])
        port = forward_to(bob, "alice", service)
        assert echo_once(port, b"ping") == b"ping"
        alice.call("unexpose", name=service)
        assert_closed_promptly(port)
    last = wait_for(lambda: _forward(bob, port)["last_error"], 15, "the forward's last_error")
    assert service in last, last


def test_forward_whose_owner_stops_closes_the_local_connection(errnet: Trio) -> None:
    net, bob = errnet.net, errnet.bob
    with TCPServer(echo_handler) as target:
        dora_name = unique("dora")
        dora = net.start(dora_name, peers=(errnet.hub.listen,))
        service = expose(dora, target.address, allow=[bob.key])
        wait_for(lambda: knows_owner(bob, dora_name), 15, "bob to learn dora")
        port = forward_to(bob, dora_name, service)
        assert echo_once(port, b"ping") == b"ping"
        with connect(port, timeout=CLOSE_BOUND) as live:
            live.sendall(b"in flight")
            assert recv_exact(live, 9) == b"in flight"
            net.stop(dora_name)
            # The stream in progress ends with the link instead of hanging.
            assert read_to_end(live) in ("eof", "reset")
        assert_closed_promptly(port)
    last = wait_for(lambda: _forward(bob, port)["last_error"], 15, "the forward's last_error")
    assert last.startswith("owner unreachable"), last


# ---------------------------------------------------------------- a hostile peer's link
def hostile(node: LocalNode, attack: Callable[[LinkProtocol], None]) -> tuple[int, str, bool]:
    """Complete a handshake, misbehave, and return how the node closed the link."""

    async def run() -> tuple[int, str, bool]:
        link, owner = await dial_node(node)
        attack(link)
        async with asyncio.timeout(10):
            return await owner.closed

    return asyncio.run(run())


def _sealed(link: LinkProtocol, plaintext: bytes) -> None:
    """Send a correctly encrypted frame whose content we choose (a broken peer)."""
    link.core._emit_frame(plaintext)
    link._pump()


def _service_records(node: LocalNode, signer_key: str, subject: str) -> list[dict[str, Any]]:
    records = node.call("resolve", address=f"{signer_key}.x")["records"]
    return [r for r in records if r["kind"] == "service" and r["subject"] == subject]


def test_replayed_older_tampered_and_forged_records_are_refused(errnet: Trio) -> None:
    net, alice = errnet.net, errnet.alice
    victim = net.start(unique("victim"))  # no peers: its counters move only by our pushes
    signer = Identity((alice.home / "identity.key").read_bytes())
    assert key_to_text(signer.public) == alice.key  # the owner's real identity, from its home
    subject = unique("replay")
    base = int(time.time() * 1000) + 10_000_000
    now = time.time()

    def service_record(seq: int, who: Identity = signer) -> bytes:
        body = ServiceBody(service=subject, modes=int(Mode.DIRECT), public=False)
        return make_record(who, body, seq, now, 3600)[1]

    older, newer = service_record(base + 1), service_record(base + 2)
    before = counters(victim)
    push_records(victim, [newer])
    assert counters(victim).get("records_accepted", 0) == before.get("records_accepted", 0) + 1
    held = _service_records(victim, alice.key, subject)
    assert [r["seq"] for r in held] == [base + 2]

    push_records(victim, [older])  # replay of an older record
    push_records(victim, [newer])  # the same record again
    after = counters(victim)
    assert after.get("records_refused_stale-sequence", 0) == (
        before.get("records_refused_stale-sequence", 0) + 2
    )

    candidate = service_record(base + 3)
    public_flag = len(candidate) - 64 - 1  # last body byte: ServiceBody.public
    tampered_body = bytearray(candidate)
    tampered_body[public_flag] ^= 1  # still canonical (public=True), signature now wrong
    tampered_sig = bytearray(candidate)
    tampered_sig[-1] ^= 0x40
    mallory = Identity(os.urandom(32))
    forged = encode_record(
        replace(decode_record(service_record(base + 4, mallory)), signer=signer.public)
    )
    assert (
        decode_record(bytes(tampered_body)).parsed_body() != decode_record(candidate).parsed_body()
    )
    push_records(victim, [bytes(tampered_body), bytes(tampered_sig), forged])
    final = counters(victim)
    assert final.get("records_refused_bad-signature", 0) == (
        before.get("records_refused_bad-signature", 0) + 3
    )
    push_records(victim, [b"\x00garbage, not a record"])
    assert counters(victim).get("records_refused_malformed", 0) == (
        before.get("records_refused_malformed", 0) + 1
    )
    held = _service_records(victim, alice.key, subject)
    assert [r["seq"] for r in held] == [base + 2]
    assert "public=False" in held[0]["body"]
    assert counters(victim).get("records_accepted", 0) == after.get("records_accepted", 0)


def _cell_with_unknown_command() -> bytes:
    cell = bytearray(cells.CELL_SIZE)
    cells.write_cell_header(cell, 7, 0xEE)  # circuit 7, a cell command no version knows
    return bytes(cell)


ATTACKS: dict[str, tuple[Callable[[LinkProtocol], None], CloseCode]] = {
    "broken-ciphertext": (
        lambda link: link.transport.write(frames.length_prefix(48) + os.urandom(48)),  # type: ignore[union-attr]
        CloseCode.DECRYPT_FAILED,
    ),
    "unknown-frame-type": (lambda link: _sealed(link, b"\xee junk"), CloseCode.PROTOCOL_ERROR),
    "data-for-unknown-stream": (
        lambda link: _sealed(link, frames.data_header(4243) + b"x"),
        CloseCode.PROTOCOL_ERROR,
    ),
    "truncated-open": (
        lambda link: _sealed(link, bytes([frames.FrameType.OPEN, 0, 0])),
        CloseCode.PROTOCOL_ERROR,
    ),
    "truncated-data": (
        lambda link: _sealed(link, bytes([frames.FrameType.DATA, 0, 0])),
        CloseCode.PROTOCOL_ERROR,
    ),
    "cells-frame-not-whole-cells": (
        lambda link: _sealed(link, bytes([frames.FrameType.CELLS]) + bytes(100)),
        CloseCode.PROTOCOL_ERROR,
    ),
    "cell-with-unknown-command": (
        lambda link: _sealed(link, bytes([frames.FrameType.CELLS]) + _cell_with_unknown_command()),
        CloseCode.PROTOCOL_ERROR,
    ),
}


def test_garbage_on_links_closes_only_those_links(errnet: Trio) -> None:
    alice, bob = errnet.alice, errnet.bob
    with TCPServer(echo_handler) as target:
        service = expose(alice, target.address, allow=[bob.key])
        port = forward_to(bob, "alice", service)
        live = connect(port)  # a stream that must survive everything below
        try:
            first = payload(100_000, seed=3)
            live.sendall(first)
            assert recv_exact(live, len(first)) == first
            links_before = {n.name: n.call("status")["links"] for n in (alice, bob)}
            failed_before = {n.name: counters(n).get("links_failed", 0) for n in (alice, bob)}

            for node in (bob, alice):
                # Before any handshake: random bytes on the listening port.
                host, lport = parse_endpoint(node.listen)
                with socket.create_connection((host, lport), timeout=15) as raw:
                    raw.sendall(os.urandom(70_000))
                    assert read_to_end(raw) in ("eof", "reset")
                # After a handshake: frames that are broken in different ways.
                logged: Counter[CloseCode] = Counter()
                for name, (attack, code) in ATTACKS.items():
                    got_code, reason, by_peer = hostile(node, attack)
                    assert (got_code, by_peer) == (code, True), (name, reason)
                    # The node logs why (just after the CLOSE frame goes out), through
                    # the rate-limited log: the first lines of each code in a minute.
                    logged[code] += 1
                    if logged[code] <= DEFAULT_BURST:
                        line = f"closed ({code.name}, we): {reason}"
                        wait_for(lambda n=node, ln=line: ln in n.log_text(), 15, f"log: {line}")

            for node in (alice, bob):
                assert node.process.poll() is None, f"{node.name} died"
                status = node.call("status")
                assert status["links"] == links_before[node.name]
                assert counters(node).get("links_failed", 0) >= (
                    failed_before[node.name] + len(ATTACKS)
                )
            second = payload(300_000, seed=4)
            live.sendall(second)
            live.shutdown(socket.SHUT_WR)
            assert recv_all(live) == second
        finally:
            live.close()
        assert echo_once(port, b"new connection") == b"new connection"
