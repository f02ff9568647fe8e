"""The node's accept loop (vx6.net.accept) in-process on loopback, on both event loops:
a refused connection is closed before anything is read, an admitted one runs its
protocol, and a failure inside `admit` drops that connection only."""

from __future__ import annotations

import asyncio
import socket

import pytest

from vx6.net import eventloop
from vx6.net.accept import LISTEN_BACKLOG, listen_socket, serve_links
from vx6.net.ratelog import RATELOG


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def scenario() -> list[bytes]:
    sock = listen_socket("::1", 0)
    port = sock.getsockname()[1]
    seen: list[tuple[str, int]] = []
    counts: dict[str, int] = {}

    def admit(conn: socket.socket, source: tuple[str, int]) -> asyncio.BaseProtocol | None:
        seen.append(source)
        if len(seen) == 1:
            return None  # refused
        if len(seen) == 2:
            raise RuntimeError("a bug in admission")
        return Echo()

    def count(what: str) -> None:
        counts[what] = counts.get(what, 0) + 1

    bugs_before = RATELOG.count("accept-internal-error")
    task = asyncio.create_task(serve_links(sock, admit, count, where="test"))
    answers = []
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("::1", port)
            writer.write(b"hello")
            async with asyncio.timeout(5):
                try:
                    answers.append(await reader.read(5))
                except ConnectionResetError:  # closed with our bytes unread: a reset
                    answers.append(b"")
            writer.close()
    finally:
        task.cancel()
        sock.close()
    assert [host for host, _ in seen] == ["::1"] * 3
    assert counts == {}
    assert RATELOG.count("accept-internal-error") == bugs_before + 1  # logged, rate-limited
    return answers


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_refused_and_failed_admissions_close_only_that_connection(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    monkeypatch.setenv(eventloop.ENV_VAR, loop)
    assert eventloop.run(scenario()) == [b"", b"", b"hello"]


def test_the_listening_socket_is_non_blocking_with_the_full_backlog() -> None:
    sock = listen_socket("127.0.0.1", 0)
    try:
        assert not sock.getblocking() and LISTEN_BACKLOG == 512
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    finally:
        sock.close()
