"""One node per home (issue 11 a), in-process: the home's node lock names the pid that
holds it and is free again once released, and a node's control socket is removed at
shutdown only if it is still the socket that node bound."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from vx6.net.control import serve_control
from vx6.store.home import Home, HomeError, NodeRunning


def test_a_second_lock_on_a_home_names_the_holder_and_a_released_lock_is_free(
    tmp_path: Path,
) -> None:
    home = Home(tmp_path / "h")
    held = home.lock()
    assert home.lock_path.read_text().strip() == str(os.getpid())
    with pytest.raises(
        NodeRunning, match=rf"another node is running on this home \(pid {os.getpid()}\)"
    ):
        Home(tmp_path / "h").lock()  # flock: a second open file conflicts, also in one process
    held.release()
    with Home(tmp_path / "h").lock():  # free again; the file is kept, only the lock goes
        assert home.lock_path.exists()


def test_a_lock_file_planted_as_a_symlink_is_not_followed(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.ensure()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    home.lock_path.symlink_to(victim)
    with pytest.raises(HomeError, match="lock file"):
        home.lock()
    assert victim.read_text() == "precious"


async def _nothing(*_: Any) -> Any:
    return {"ok": True}


def test_closing_the_control_socket_leaves_a_socket_another_node_bound_there(
    tmp_path: Path,
) -> None:
    path = tmp_path / "control.sock"

    async def scenario() -> bool:
        ours = await serve_control(path, _nothing, _nothing)
        # Another process takes the name (an old node's shutdown deleted ours, or it
        # replaced a socket it thought stale): closing ours must not delete theirs.
        path.unlink()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as theirs:
            theirs.bind(str(path))
            theirs.listen()
            ours.close()
            return path.exists()

    assert asyncio.run(scenario())


def test_closing_the_control_socket_removes_the_one_it_bound(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    async def scenario() -> None:
        server = await serve_control(path, _nothing, _nothing)
        server.close()

    asyncio.run(scenario())
    assert not path.exists()
