"""The receive rule of vx6/errors.py, on real loopback links and a real UDP socket.

What escapes handling a peer's input decides what happens to that link: the peer's
protocol error (`RemoteProtocolError`) closes it with the error's own wire code; anything
else is a bug of ours, which closes only that link, with INTERNAL_ERROR and a traceback
in the log (rate-limited), while the node and its other links go on. The DHT has no link
to close: the datagram is lost and the same two kinds of log line are written.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Awaitable, Callable

import pytest

import vx6.net.dht as dht_mod
import vx6.net.link as link_mod
from kit.net import RawPeer
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import CloseCode, DecodeError, RemoteProtocolError
from vx6.net.dht import DhtService
from vx6.net.link import LinkProtocol
from vx6.net.ratelog import RateLog
from vx6.wire import frames as fr
from vx6.wire.cells import CELL_SIZE

ID_SERVER, LINK_SERVER = Identity(bytes([2]) * 32), StaticKey(bytes([12]) * 32)
CLIENT_KEYS = [(Identity(bytes([i]) * 32), StaticKey(bytes([10 + i]) * 32)) for i in (3, 4)]
TIMEOUT = 10.0


class Server(RawPeer):
    """The node side: remembers its links and how each closed."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[LinkProtocol] = []
        self.closed: dict[int, tuple[int, str, bool]] = {}
        self.on_records: Callable[[], None] = lambda: None
        self.on_cells: Callable[[], None] = lambda: None

    def link_established(self, link: LinkProtocol) -> None:
        self.links.append(link)

    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        self.closed[id(link)] = (code, reason, by_peer)

    def records_received(self, link: LinkProtocol, records: tuple[bytes, ...]) -> None:
        self.on_records()  # what a role does with them; a test makes it fail

    def cells_received(self, link: LinkProtocol, chunks: tuple[bytes | memoryview, ...]) -> None:
        self.on_cells()  # the circuit router's entry point (net/router.py)


class Client(RawPeer):
    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        self.closes.append((code, reason, by_peer))


async def _wait(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.01)  # polling a condition, with a bound
    assert predicate(), what


def _run(body: Callable[[Server, list[tuple[LinkProtocol, Client]]], Awaitable[None]]) -> None:
    """Two clients linked to one server on 127.0.0.1; `body` gets the server's owner
    and the clients (links in the server's `links` in the same order)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = Server()
        listener = await loop.create_server(
            lambda: LinkProtocol(server, initiator=False, identity=ID_SERVER, link_key=LINK_SERVER),
            "127.0.0.1",
            0,
        )
        port = listener.sockets[0].getsockname()[1]
        clients: list[tuple[LinkProtocol, Client]] = []
        try:
            for identity, link_key in CLIENT_KEYS:
                owner = Client()
                factory = functools.partial(
                    LinkProtocol, owner, initiator=True, identity=identity, link_key=link_key
                )
                _, proto = await loop.create_connection(factory, "127.0.0.1", port)
                async with asyncio.timeout(TIMEOUT):
                    await proto.established
                clients.append((proto, owner))
            await _wait(lambda: len(server.links) == len(clients), "server side up")
            order = [identity.public for identity, _ in CLIENT_KEYS]
            server.links.sort(key=lambda link: order.index(link.peer_identity or b""))
            await body(server, clients)
        finally:
            for proto, _ in clients:
                if proto.transport is not None:
                    proto.transport.abort()
            listener.close()

    asyncio.run(main())


async def _still_works(client: LinkProtocol, server_link: LinkProtocol) -> None:
    async with asyncio.timeout(TIMEOUT):
        await client.ping()
    assert client.is_open and server_link.is_open


def test_bytes_that_break_the_protocol_close_the_link_with_the_cores_code() -> None:
    async def body(server: Server, clients: list[tuple[LinkProtocol, Client]]) -> None:
        (bad, bad_owner), (good, _) = clients
        bad.core._send_frame(fr.Fin(12345))  # a frame for a stream that never existed
        bad._write_out()
        await _wait(lambda: bool(bad_owner.closes), "the bad peer's link closed")
        code, reason, by_peer = bad_owner.closes[0]
        assert (code, by_peer) == (CloseCode.PROTOCOL_ERROR, True)
        assert "unknown stream 12345" in reason
        await _still_works(good, server.links[1])

    _run(body)


def test_a_remote_error_escaping_a_handler_closes_with_its_own_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def reject() -> None:  # a role that finds the peer's input breaks the protocol
        raise RemoteProtocolError(CloseCode.RESOURCE_LIMIT, "more records than allowed")

    async def body(server: Server, clients: list[tuple[LinkProtocol, Client]]) -> None:
        (bad, bad_owner), (good, _) = clients
        server.on_records = reject
        assert bad.send_records([b"r"])
        await _wait(lambda: bool(bad_owner.closes), "the bad peer's link closed")
        assert bad_owner.closes[0] == (CloseCode.RESOURCE_LIMIT, "more records than allowed", True)
        assert server.closed[id(server.links[0])][0] == CloseCode.RESOURCE_LIMIT
        server.on_records = lambda: None
        await _still_works(good, server.links[1])

    _run(body)


def test_a_decode_error_escaping_a_handler_is_the_peers_protocol_error() -> None:
    def reject() -> None:
        raise DecodeError("record is not CBOR")

    async def body(server: Server, clients: list[tuple[LinkProtocol, Client]]) -> None:
        (bad, bad_owner), _ = clients
        server.on_records = reject
        assert bad.send_records([b"r"])
        await _wait(lambda: bool(bad_owner.closes), "the bad peer's link closed")
        assert bad_owner.closes[0] == (CloseCode.PROTOCOL_ERROR, "record is not CBOR", True)

    _run(body)


def test_a_bug_closes_only_that_link_with_internal_error_and_logs_its_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ratelog = RateLog(burst=1)
    monkeypatch.setattr(link_mod, "RATELOG", ratelog)

    def broken(data: bytes | memoryview, now: float) -> None:
        raise ValueError("a bug in the core")

    async def body(server: Server, clients: list[tuple[LinkProtocol, Client]]) -> None:
        (first, first_owner), (second, second_owner) = clients
        monkeypatch.setattr(server.links[0].core, "receive", broken)
        first.ping()
        await _wait(lambda: bool(first_owner.closes), "the first link closed")
        assert first_owner.closes[0] == (CloseCode.INTERNAL_ERROR, "internal error", True)
        assert server.closed[id(server.links[0])][0] == CloseCode.INTERNAL_ERROR
        await _still_works(second, server.links[1])
        assert second_owner.closes == []

        # A second bug on the second link: counted, but over the log's budget.
        monkeypatch.setattr(server.links[1].core, "receive", broken)
        second.ping()
        await _wait(lambda: bool(second_owner.closes), "the second link closed")

    with caplog.at_level(logging.ERROR, logger="vx6.link"):
        _run(body)
    tracebacks = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError]
    assert len(tracebacks) == 1  # rate-limited: burst 1
    assert "internal error on link" in tracebacks[0].getMessage()
    assert ratelog.count("link-internal-error") == 2


def test_a_bug_in_the_cell_path_closes_that_link_with_internal_error() -> None:
    def router_bug() -> None:
        raise KeyError("circuit table out of step")

    async def body(server: Server, clients: list[tuple[LinkProtocol, Client]]) -> None:
        (bad, bad_owner), (good, _) = clients
        server.on_cells = router_bug
        bad.send_cells([bytes(CELL_SIZE)])
        await _wait(lambda: bool(bad_owner.closes), "the link closed")
        assert bad_owner.closes[0] == (CloseCode.INTERNAL_ERROR, "internal error", True)
        await _still_works(good, server.links[1])

    _run(body)


# --- the DHT's datagrams ------------------------------------------------------------------


def test_dht_logs_a_bug_with_its_traceback_rate_limited_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ratelog = RateLog(burst=1)
    monkeypatch.setattr(dht_mod, "RATELOG", ratelog)
    seen: list[bytes] = []

    async def body() -> None:
        service = DhtService(ID_SERVER, on_event=lambda event: None)
        host, port = await service.start("127.0.0.1", 0)
        real = service.node.datagram_received

        def flaky(data: bytes, addr: tuple[str, int], now: float) -> None:
            seen.append(data)
            if data == b"bug":
                raise ValueError("a bug in the DHT core")
            if data == b"remote":
                raise DecodeError("truncated datagram")
            real(data, addr, now)

        monkeypatch.setattr(service.node, "datagram_received", flaky)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for payload in (b"bug", b"bug", b"bug", b"remote", b"after"):
                sock.sendto(payload, (host, port))
            await _wait(lambda: seen[-1:] == [b"after"], "the DHT kept reading")
        service.close()

    with caplog.at_level(logging.WARNING, logger="vx6.dht"):
        asyncio.run(body())
    assert seen == [b"bug", b"bug", b"bug", b"remote", b"after"]
    tracebacks = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError]
    assert len(tracebacks) == 1
    assert ratelog.count("dht-internal-error") == 3
    remote = [r for r in caplog.records if "truncated datagram" in r.getMessage()]
    assert len(remote) == 1 and not remote[0].exc_info
    assert ratelog.count("dht-bad-datagram") == 1
