"""One node per home (issue 11 a), with real `vx6 run` processes on loopback.

A second `vx6 run` on a home whose node is running used to bind its port, rejoin the
DHT, publish fresh records into the shared registry and then fail with a traceback,
deleting the running node's control socket on its way out: the first node kept serving
but no `vx6` command reached it any more. Now the home's node lock is taken before
anything else: the second run exits 1 with one line naming the running node's pid and
changes nothing. A lock left by a node killed with SIGKILL blocks nobody."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kit.cli import run_vx6
from vx6.app.localnet import LocalNet, LocalNode

pytestmark = pytest.mark.timeout(60)


def vx6(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_vx6(home, *argv)


def own_records(node: LocalNode) -> list[tuple[int, str, int, bytes]]:
    """The node's own records as its registry file holds them (read-only: a second
    node publishing would have written there, whatever the first one caches)."""
    uri = f"file:{node.home / 'registry.sqlite'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        rows = db.execute(
            "SELECT kind, subject, seq, raw FROM records WHERE source = 'self' ORDER BY kind"
        ).fetchall()
    return [(int(k), str(s), int(q), bytes(r)) for k, s, q, r in rows]


@contextmanager
def loopback_port(held: bool) -> Iterator[int]:
    """A loopback port for the second run: held by a listener of ours (a run that got as
    far as binding would then fail with "address already in use" instead of the lock
    message) or free (a run that got that far would then publish)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if held:
            sock.listen()
            yield int(sock.getsockname()[1])
            return
        port = int(sock.getsockname()[1])
    yield port


@pytest.mark.parametrize("held", [True, False], ids=["port-held", "port-free"])
def test_a_second_run_on_a_running_home_is_refused_before_it_binds_or_publishes(
    tmp_path: Path, held: bool
) -> None:
    with LocalNet(tmp_path / "net") as net:
        alice = net.start("alice", listen="127.0.0.1:0")
        records = own_records(alice)
        assert records, "alice published nothing"
        control = os.stat(alice.control).st_ino
        with loopback_port(held) as port:
            second = vx6(alice.home, "run", "--listen", f"127.0.0.1:{port}", "--name", "alice")
        assert second.returncode == 1, second
        assert second.stderr.splitlines() == [
            f"vx6: another node is running on this home (pid {alice.process.pid})"
        ], second.stderr
        # The first node is untouched: its control socket (the same file), its listen
        # address, and its records (no second publish with a higher sequence number).
        status = vx6(alice.home, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert os.stat(alice.control).st_ino == control
        assert alice.call("status")["listen"] == alice.info["listen"]
        assert own_records(alice) == records
        assert alice.process.poll() is None


def test_the_lock_of_a_killed_node_does_not_block_the_next_run(tmp_path: Path) -> None:
    with LocalNet(tmp_path / "net") as net:
        first = net.start("alice", listen="127.0.0.1:0")
        lock = first.home / "node.lock"
        assert lock.read_text().strip() == str(first.process.pid)
        net.kill("alice")  # SIGKILL: no shutdown, the lock file stays behind
        assert lock.exists()
        again = net.start("alice", listen="127.0.0.1:0")  # waits until it answers status
        assert again.process.pid != first.process.pid
        assert lock.read_text().strip() == str(again.process.pid)
        assert vx6(again.home, "status").returncode == 0


def test_a_stopping_node_leaves_a_control_socket_it_did_not_bind(tmp_path: Path) -> None:
    """The old shutdown deleted whatever was at control.sock; the socket there may be
    another node's (one started while this one was thought dead)."""
    with LocalNet(tmp_path / "net") as net:
        alice = net.start("alice", listen="127.0.0.1:0")
        alice.control.rename(alice.home / "alice.sock")  # alice still serves on it
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            other.bind(str(alice.control))
            other.listen()
            assert net.stop("alice") == 0
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(alice.control))  # still there, and still the other one's
                other.settimeout(10.0)
                other.accept()[0].close()
