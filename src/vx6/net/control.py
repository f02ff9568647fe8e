"""The control socket: how the CLI talks to a running node.

Theory of operation. A Unix stream socket in the node's home, created with mode 0600
inside a 0700 directory, so only the node's user can connect. Each request is one JSON
line answered by one JSON line; a line that is not a well-formed request (too large, too
deep, a huge integer, a field of the wrong type: `wire/control.py`) gets
`{"ok": false, "error": ...}` and the connection goes on. One request, `nc`, upgrades
the connection: after the `{"ok": true}` answer the socket carries raw bytes of a stream
to a service (this is what `vx6 nc` uses as an ssh ProxyCommand), and the connection is
handed to a StreamPipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from vx6.errors import DecodeError, StreamFailed, VX6Error
from vx6.net.pipe import StreamPipe
from vx6.wire.control import MAX_CONTROL_LINE, check_request, decode_message, encode_message

log = logging.getLogger("vx6.control")

RequestHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# target, relays, pipe, hidden-service profile
NcHandler = Callable[[str, int, StreamPipe, str], Awaitable[None]]


class ControlProtocol(asyncio.Protocol):
    def __init__(self, handle: RequestHandler, handle_nc: NcHandler) -> None:
        self._handle = handle
        self._handle_nc = handle_nc
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._pipe: StreamPipe | None = None
        self._busy = False
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._pipe is not None:
            self._pipe.data_received(data)
            return
        self._buf += data
        if len(self._buf) > MAX_CONTROL_LINE:
            self._reply({"ok": False, "error": "control message too large"})
            self._close()
            return
        self._next()

    def _next(self) -> None:
        if self._busy or b"\n" not in self._buf:
            return
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        try:
            request = decode_message(line)
            check_request(request)  # every known op's fields have their types
        except DecodeError as exc:
            self._reply({"ok": False, "error": str(exc)})
            return
        self._busy = True
        self._task = asyncio.ensure_future(self._run(request))

    async def _run(self, request: dict[str, Any]) -> None:
        try:
            if request.get("op") == "nc":
                hops = request.get("hops", 0)
                await self._run_nc(
                    str(request.get("target", "")),
                    hops if isinstance(hops, int) else -1,
                    str(request.get("profile") or ""),
                )
                return
            try:
                response = await self._handle(request)
            except VX6Error as exc:
                response = {"ok": False, "error": str(exc)}
            except Exception as exc:  # a bug must not kill the control socket
                log.exception("control request %r failed", request.get("op"))
                response = {"ok": False, "error": f"internal error: {exc}"}
            self._reply(response)
        finally:
            self._busy = False
        if self._pipe is None:
            self._next()

    async def _run_nc(self, target: str, hops: int, profile: str) -> None:
        assert self._transport is not None
        pipe = StreamPipe()
        try:
            await self._handle_nc(target, hops, pipe, profile)
        except (StreamFailed, VX6Error) as exc:
            code = exc.code.name if isinstance(exc, StreamFailed) else "ERROR"
            log.warning("nc %s failed: %s", target, exc)
            self._reply({"ok": False, "error": str(exc), "code": code})
            self._close()
            return
        self._reply({"ok": True})
        self._pipe = pipe
        rest, self._buf = bytes(self._buf), bytearray()
        pipe.connection_made(self._transport)
        if rest:
            pipe.data_received(rest)

    def _reply(self, message: dict[str, Any]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode_message(message))

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def eof_received(self) -> bool:
        if self._pipe is not None:
            return self._pipe.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pipe is not None:
            self._pipe.connection_lost(exc)
        elif self._task is not None and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        if self._pipe is not None:
            self._pipe.pause_writing()

    def resume_writing(self) -> None:
        if self._pipe is not None:
            self._pipe.resume_writing()


class ControlServer:
    """The listening control socket. Closing it removes the socket file only if that is
    still the file it bound (same device and inode): a node must never delete the
    socket of another node that took the name since (it would leave that node running
    but unreachable by every `vx6` command)."""

    def __init__(self, server: asyncio.AbstractServer, path: Path) -> None:
        self._server = server
        self.path = path
        st = os.lstat(path)
        self._file_id = (st.st_dev, st.st_ino)

    def close(self) -> None:
        self._server.close()
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) != self._file_id:
            log.warning("control socket %s is not the one this node bound; left alone", self.path)
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def serve_control(path: Path, handle: RequestHandler, handle_nc: NcHandler) -> ControlServer:
    """Listen on `path` with mode 0600; a stale socket file from a dead node is replaced."""
    if path.exists():
        if _socket_alive(path):
            raise VX6Error(f"another node is already running with this home ({path})")
        path.unlink()
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.get_running_loop().create_unix_server(
            lambda: ControlProtocol(handle, handle_nc), str(path)
        )
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return ControlServer(server, path)


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def request(path: Path, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Blocking one-shot request for the CLI."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise VX6Error(
                f"no node is running with home {path.parent} (start one with `vx6 run`)"
            ) from exc
        try:
            s.sendall(encode_message(message))
            return decode_message(read_line(s))
        except OSError as exc:
            raise VX6Error(f"the node dropped the control connection: {exc}") from exc


def read_line(s: socket.socket) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            raise VX6Error("the node closed the control connection")
        buf += chunk
        if len(buf) > MAX_CONTROL_LINE:
            raise VX6Error("control answer too large")
    return bytes(buf)
