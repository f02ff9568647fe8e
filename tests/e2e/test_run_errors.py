"""`vx6 run` failures a user can read (issue 11 g): each expected failure is one line on
stderr and a non-zero exit, never a traceback (they used to come wrapped in the node's
TaskGroup as an ExceptionGroup), and `--listen` takes host names: `localhost` listens on
loopback. Real `vx6 run` processes, loopback only; the second-instance case is in
test_single_instance.py."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kit.cli import run_vx6
from vx6.app.localnet import LocalNet

pytestmark = pytest.mark.timeout(60)

EXIT_ERROR = 1
EXIT_USAGE = 2


def vx6(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_vx6(home, *argv)


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vx6: "), lines
    for word in words:
        assert word in lines[0], (word, lines[0])


@contextmanager
def taken_port(kind: int) -> Iterator[int]:
    """A loopback port another socket holds: TCP listening, or UDP bound."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        yield int(sock.getsockname()[1])


def home_in(tmp_path: Path) -> Path:
    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    return home


def test_a_listen_port_in_use_is_one_line(tmp_path: Path) -> None:
    with taken_port(socket.SOCK_STREAM) as port:
        result = vx6(home_in(tmp_path), "run", "--listen", f"127.0.0.1:{port}")
    assert_one_line(result, EXIT_ERROR, f"cannot listen on 127.0.0.1:{port}", "in use")


def test_a_dht_port_in_use_is_one_line(tmp_path: Path) -> None:
    # The DHT's UDP socket takes the links' TCP port number: TCP free, UDP taken.
    with taken_port(socket.SOCK_DGRAM) as port:
        result = vx6(home_in(tmp_path), "run", "--listen", f"127.0.0.1:{port}")
    assert_one_line(result, EXIT_ERROR, "DHT", f"127.0.0.1:{port}", "in use")


def test_a_listen_host_that_is_no_host_name_is_one_line(tmp_path: Path) -> None:
    # A label longer than 63 characters: refused before any resolver is asked.
    bad = "a" * 64 + ".example"
    result = vx6(home_in(tmp_path), "run", "--listen", f"{bad}:4242")
    assert_one_line(result, EXIT_ERROR, "cannot listen on", "not", "host name")


CONFIGS: dict[str, tuple[str, str]] = {
    "not-toml": ("listen = [", "config"),
    "services-not-a-table": ("services = 3", "services must be a table"),
    "forwards-not-a-table": ('forwards = ["x"]', "forwards must be a table"),
    "allow-not-a-list": (
        '[services.ssh]\ntarget = "127.0.0.1:22"\nallow = 5\n',
        "services.ssh.allow must be a list of strings",
    ),
    "relay-not-a-boolean": ('relay = "yes"', "relay must be true or false"),
}


@pytest.mark.parametrize(("text", "words"), CONFIGS.values(), ids=CONFIGS.keys())
def test_a_bad_config_file_is_one_line(tmp_path: Path, text: str, words: str) -> None:
    home = home_in(tmp_path)
    (home / "config.toml").write_text(text)
    assert_one_line(vx6(home, "run", "--listen", "127.0.0.1:0"), EXIT_USAGE, words)


def home_is_a_file(tmp_path: Path) -> Path:
    (tmp_path / "f").touch()
    return tmp_path / "f"


def home_below_a_file(tmp_path: Path) -> Path:
    return home_is_a_file(tmp_path) / "h"


def lock_is_a_directory(tmp_path: Path) -> Path:
    home = home_in(tmp_path)
    (home / "node.lock").mkdir()
    return home


UNUSABLE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "home-is-a-file": (home_is_a_file, "cannot use home"),
    "below-a-file": (home_below_a_file, "Not a directory"),
    "lock-is-a-directory": (lock_is_a_directory, "node.lock"),
}


@pytest.mark.parametrize(("make", "words"), UNUSABLE.values(), ids=UNUSABLE.keys())
def test_an_unusable_home_is_one_line(
    tmp_path: Path, make: Callable[[Path], Path], words: str
) -> None:
    assert_one_line(vx6(make(tmp_path), "run", "--listen", "127.0.0.1:0"), EXIT_ERROR, words)


@pytest.mark.parametrize("port", [0, None], ids=["any-port", "given-port"])
def test_listen_on_localhost_listens_on_loopback(tmp_path: Path, port: int | None) -> None:
    if port is None:
        with socket.socket() as probe:  # a free port to give explicitly
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
    with LocalNet(tmp_path / "net") as net:
        alice = net.start("alice", listen=f"localhost:{port}")
        listening = alice.info["listen"]
        assert listening, alice.info
        assert all(a.startswith(("127.0.0.1:", "[::1]:")) for a in listening), listening
        assert len({a.rsplit(":", 1)[1] for a in listening}) == 1, listening  # one port
        assert port == 0 or listening[0].endswith(f":{port}")
        # A peer reaches it on the address it lists, and `vx6 status` says where.
        bob = net.start("bob", listen="127.0.0.1:0", peers=(listening[-1],))
        assert bob.process.poll() is None
        status = vx6(alice.home, "status")
        assert status.returncode == 0 and listening[0] in status.stdout, status
