"""SIGHUP reloads config.toml (issue 11 defect f; before, `kill -HUP` ended the node and
reset its live connections, with nothing in its log). Real node processes on loopback:
node x declares services and forwards in config.toml, node y reaches x's services over
forwards of its own (direct mode) and is the owner x's forwards lead to. After an edit
and a SIGHUP, x logs one line with the diff, live connections through a kept service,
a changed service, a kept forward and a removed forward all carry on intact, an added
service answers, a removed one is refused with UNKNOWN_SERVICE, a removed forward's port
is closed and a changed service's new streams reach its new target. An invalid file is
refused with one log line and changes nothing; `vx6 reload` does the same and reports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.net import (
    TCPServer,
    closed_port,
    connect,
    duplex,
    echo_handler,
    echo_once,
    expected_sha,
    local_port,
    recv_exact,
    stderr_line,
)
from vx6.app.localnet import LocalNet, LocalNode, wait_for

pytestmark = pytest.mark.timeout(90)

BOUND = 20.0  # every wait here is bounded by this
BULK = 1 << 20  # bytes each live connection carries after the reload


@pytest.fixture
def echo() -> Iterator[TCPServer]:
    with TCPServer(echo_handler) as server:
        yield server


@pytest.fixture
def net() -> Iterator[LocalNet]:
    with LocalNet() as local_net:
        yield local_net


def service(name: str, target: str) -> str:
    return f'[services.{name}]\ntarget = "{target}"\npublic = true\n\n'


def forward(name: str, owner: LocalNode, svc: str = "echo", port: int = 0) -> str:
    return (
        f'[forwards.{name}]\nservice = "{owner.name}.{svc}"\n'
        f'local = "127.0.0.1:{port}"\nvia = "{owner.listen}"\n\n'
    )


def owner_y(net: LocalNet, echo: TCPServer) -> LocalNode:
    y = net.start("y")
    y.call("expose", name="echo", target=echo.address, allow=[], public=True)
    return y


def start_x(net: LocalNet, config: str) -> LocalNode:
    home = net.base / "x"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text(config)
    return net.start("x")


def forward_from(client: LocalNode, owner: LocalNode, svc: str) -> int:
    """A forward on `client` to OWNER.SVC in direct mode; its local port."""
    reply = client.call(
        "connect", service=f"{owner.name}.{svc}", local="0", via=owner.listen, name=f"to-{svc}"
    )
    return local_port(reply)


def config_forward_port(node: LocalNode, name: str) -> int:
    forwards = {f["name"]: f for f in node.call("forwards")["forwards"]}
    return local_port(forwards[name])


def live(port: int, tag: bytes) -> socket.socket:
    """A connection through `port` to an echo target, shown to work."""
    sock = connect(port)
    sock.sendall(tag)
    assert recv_exact(sock, len(tag)) == tag
    return sock


def still_carries(sock: socket.socket, seed: int) -> None:
    """The connection carries BULK more bytes both ways, intact, then ends cleanly."""
    sent, received = duplex(sock, BULK, seed)
    assert (received.nbytes, received.sha256) == (BULK, expected_sha(BULK, seed))
    assert sent.nbytes == BULK
    sock.close()


def hang_up(node: LocalNode, marker: str) -> str:
    """Send SIGHUP; wait for the log line with `marker` (or for the node to die, as it
    did before SIGHUP reloaded); return the log written since the signal."""
    start = len(node.log_text())
    os.kill(node.process.pid, signal.SIGHUP)
    wait_for(
        lambda: node.process.poll() is not None or marker in node.log_text()[start:],
        BOUND,
        f"{marker!r} in {node.name}'s log",
    )
    assert node.process.poll() is None, f"SIGHUP ended the node:\n{node.log_text()[-2000:]}"
    return node.log_text()[start:]


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_sighup_applies_the_diff_and_keeps_live_connections(net: LocalNet, echo: TCPServer) -> None:
    with TCPServer(echo_handler) as new_target, TCPServer(echo_handler) as other_echo:
        y = owner_y(net, echo)
        y.call("expose", name="echo2", target=other_echo.address, allow=[], public=True)
        g_port = closed_port()  # a fixed port: the changed forward listens there again
        x = start_x(
            net,
            service("a", echo.address)
            + service("b", echo.address)
            + service("d", echo.address)
            + forward("f", y)
            + forward("r", y)
            + forward("g", y, port=g_port),
        )
        to_b, to_d = forward_from(y, x, "b"), forward_from(y, x, "d")
        through_b, through_d = live(to_b, b"b before"), live(to_d, b"d before")
        f_port, r_port = config_forward_port(x, "f"), config_forward_port(x, "r")
        through_f, through_r = live(f_port, b"f before"), live(r_port, b"r before")
        through_g = live(g_port, b"g before")

        (x.home / "config.toml").write_text(
            service("b", echo.address)
            + service("c", echo.address)
            + service("d", new_target.address)
            + forward("f", y)
            + forward("g", y, svc="echo2", port=g_port)
        )
        logged = hang_up(x, "reloaded config.toml")
        assert [line.split(": ", 1)[1] for line in lines_with(logged, "reloaded config.toml")] == [
            "reloaded config.toml: services +c -a ~d; forwards -r ~g"
        ]
        assert "Traceback" not in logged

        # Live connections carry on, through the kept and the changed service, the kept,
        # the removed and the changed forward; those of a changed service or forward keep
        # their old target.
        for seed, sock in enumerate((through_b, through_d, through_f, through_r, through_g)):
            still_carries(sock, seed)
        assert new_target.connections == other_echo.connections == 0

        assert echo_once(forward_from(y, x, "c"), b"added") == b"added"
        refused = y.try_call("connect", service="x.a", local="0", via=x.listen, name="to-a")
        assert refused.get("code") == "UNKNOWN_SERVICE", refused
        assert echo_once(to_d, b"d after") == b"d after"  # a new stream: the new target
        assert new_target.connections >= 1
        assert echo_once(f_port, b"f after") == b"f after"
        assert echo_once(g_port, b"g after") == b"g after"  # the new listener: echo2
        assert other_echo.connections >= 1
        with pytest.raises(ConnectionRefusedError):
            connect(r_port).close()
        names = sorted(f["name"] for f in x.call("forwards")["forwards"])
        assert names == ["f", "g"]
        assert sorted(s["name"] for s in x.call("services")["services"]) == ["b", "c", "d"]


def test_an_invalid_file_is_refused_and_nothing_changes(
    net: LocalNet, echo: TCPServer, tmp_path: Path
) -> None:
    y = owner_y(net, echo)
    config = service("b", echo.address) + forward("f", y)
    x = start_x(net, config)
    to_b = forward_from(y, x, "b")
    f_port = config_forward_port(x, "f")
    through_b, through_f = live(to_b, b"b before"), live(f_port, b"f before")

    path = x.home / "config.toml"
    path.write_text(service("c", echo.address) + "[forwards.f\n")  # a TOML syntax error
    logged = hang_up(x, "not reloaded")
    about = lines_with(logged, "config.toml")
    assert len(about) == 1, about
    assert "config.toml not reloaded (running configuration kept)" in about[0]
    assert "line 5" in about[0]  # where the parser stopped
    assert "Traceback" not in logged

    still_carries(through_b, 1)
    still_carries(through_f, 2)
    assert echo_once(to_b, b"b after") == b"b after"
    assert echo_once(f_port, b"f after") == b"f after"
    refused = y.try_call("connect", service="x.c", local="0", via=x.listen, name="to-c")
    assert refused.get("code") == "UNKNOWN_SERVICE", refused

    # `vx6 reload` (what `systemctl reload` users may run instead) says the same, in one line...
    path.write_text(config + '[services.bad]\ntarget = "10.1.2.3:22"\n')
    result = x.cli("reload")
    assert result.returncode != 0
    assert "not a loopback address" in stderr_line(result)
    # ...and, with the file fixed, reports what it changed.
    path.write_text(config + service("c", echo.address))
    result = x.cli("reload", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["changes"] == "services +c"
    assert report["restart_needed"] == []
    assert echo_once(forward_from(y, x, "c"), b"added") == b"added"
    assert echo_once(to_b, b"b still") == b"b still"


def test_systemctl_reload_sends_sighup(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vx6", "--home", str(tmp_path / "h"), "unit"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert "\nExecReload=/bin/kill -HUP $MAINPID\n" in result.stdout.decode()
