"""The real `vx6` command line against real node processes (issue 2, points 6 and 10):
bad input gets one line and exit code 2 whether or not a node runs, `vx6 nc` pipes
stdin/stdout to a service (named and direct mode), connect/disconnect and the JSON
listings work, and a node whose home holds config.toml serves and forwards what the
file declares without any other command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Trio, knows_owner
from kit.net import (
    TCPServer,
    connect,
    echo_once,
    expose,
    local_port,
    payload,
    stderr_line,
    unique,
)
from vx6.app.localnet import wait_for
from vx6.crypto.keys import Identity, key_to_text

pytestmark = pytest.mark.timeout(60)

EXIT_USAGE = 2
EXIT_ERROR = 1

BAD_INPUT = {
    "connect-bad-owner-name": (["connect", "bad_name.echo", "--local", "0"], "owner name"),
    "connect-no-service": (["connect", "alice", "--local", "0"], "NAME.SERVICE"),
    "connect-bad-service-name": (["connect", "alice.-ssh", "--local", "0"], "service name"),
    "connect-port-too-big": (["connect", "alice.echo", "--local", "70000"], "port"),
    "connect-port-negative": (["connect", "alice.echo", "--local", "-5"], "port"),
    "connect-port-not-a-number": (["connect", "alice.echo", "--local", "ssh"], "ssh"),
    "connect-bad-via-port": (
        ["connect", "alice.echo", "--local", "0", "--via", "[::1]:99999"],
        "port",
    ),
    "connect-via-without-port": (
        ["connect", "alice.echo", "--local", "0", "--via", "[::1]"],
        "port",
    ),
    "expose-bad-name": (["expose", "we_b", "--target", "127.0.0.1:80", "--public"], "we_b"),
    "expose-port-too-big": (["expose", "web", "--target", "127.0.0.1:99999", "--public"], "port"),
    "expose-port-zero": (["expose", "web", "--target", "127.0.0.1:0", "--public"], "port"),
    "expose-remote-ipv4": (
        ["expose", "web", "--target", "192.0.2.1:80", "--public"],
        "--allow-remote-target",
    ),
    "expose-remote-ipv6": (
        ["expose", "web", "--target", "[2001:db8::1]:80", "--public"],
        "--allow-remote-target",
    ),
    "expose-remote-hostname": (
        ["expose", "web", "--target", "example.com:80", "--public"],
        "--allow-remote-target",
    ),
    "expose-private-without-allow": (["expose", "web", "--target", "127.0.0.1:80"], "--allow"),
    "expose-bad-allow-entry": (
        ["expose", "web", "--target", "127.0.0.1:80", "--allow", "bad key!"],
        "'bad key!'",
    ),
    "nc-bad-address": (["nc", "alice..echo"], "NAME.SERVICE"),
    "nc-bad-via": (["nc", "alice.echo", "--via", "nowhere"], "port"),
}
NODE_ONLY = {  # commands that start or create a node: checked without a running node
    "run-bad-name": (["run", "--name", "Bad Name", "--listen", "[::1]:0"], "name"),
    "run-bad-listen-port": (["run", "--listen", "[::1]:99999"], "port"),
    "run-bad-peer": (["run", "--listen", "[::1]:0", "--peer", "[::1]:http"], "port"),
    "init-bad-name": (["init", "--name", "al ice"], "name"),
}


def run_cli(
    home: Path, *argv: str, input_bytes: bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "vx6", "--home", str(home), *argv],
        input=input_bytes,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def assert_usage_error(result: subprocess.CompletedProcess[bytes], fragment: str) -> None:
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stderr)
    line = stderr_line(result)
    assert line.startswith("vx6: "), line
    assert fragment in line, line
    assert result.stdout == b""


def cases(table: dict[str, tuple[list[str], str]]) -> list[object]:
    return [
        pytest.param(argv, fragment, id=key, marks=[]) for key, (argv, fragment) in table.items()
    ]


@pytest.mark.parametrize(("argv", "fragment"), cases({**BAD_INPUT, **NODE_ONLY}))
def test_bad_input_without_a_node_is_a_usage_error(
    tmp_path: Path, argv: list[str], fragment: str
) -> None:
    assert_usage_error(run_cli(tmp_path / "home", *argv), fragment)
    assert not (tmp_path / "home" / "control.sock").exists()


@pytest.mark.parametrize(("argv", "fragment"), cases(BAD_INPUT))
def test_bad_input_with_a_running_node_is_a_usage_error(
    trio: Trio, argv: list[str], fragment: str
) -> None:
    before = trio.alice.call("status")
    assert_usage_error(trio.alice.cli(*argv), fragment)
    after = trio.alice.call("status")
    assert (after["services"], after["forwards"]) == (before["services"], before["forwards"])


def test_valid_input_without_a_node_is_not_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "home", "connect", "alice.echo", "--local", "0")
    assert result.returncode == EXIT_ERROR
    assert "no node is running" in stderr_line(result)


def test_the_daemon_validates_too(trio: Trio) -> None:
    """A client that skips the CLI's checks still cannot expose a remote target."""
    reply = trio.alice.try_call("expose", name="web", target="192.0.2.1:80", public=True)
    assert reply["ok"] is False and "--allow-remote-target" in reply["error"]
    reply = trio.alice.try_call("connect", service="bad_name.echo", local="0")
    assert reply["ok"] is False and "owner name" in reply["error"]
    services = trio.alice.call("services")["services"]
    assert all(s["target"] != "192.0.2.1:80" for s in services)


def test_remote_target_is_accepted_with_explicit_permission(trio: Trio) -> None:
    name = unique("remote")
    result = trio.alice.cli(
        "expose", name, "--target", "192.0.2.1:80", "--public", "--allow-remote-target", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["service"]["target"] == "192.0.2.1:80"
    assert trio.alice.cli("unexpose", name).returncode == 0


# ---------------------------------------------------------------- nc
def test_nc_pipes_stdin_to_the_service_and_back(trio: Trio, echo_server: TCPServer) -> None:
    expose(trio.alice, echo_server.address, allow=[trio.bob.key], name="echo")
    data = payload(1_500_000, seed=21)
    result = trio.bob.cli("nc", "alice.echo", input_bytes=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


def test_nc_through_the_installed_console_script_in_a_shell_pipe(
    trio: Trio, echo_server: TCPServer
) -> None:
    exe = shutil.which("vx6")
    if exe is None:
        pytest.skip("the vx6 console script is not on PATH (package not installed)")
    expose(trio.alice, echo_server.address, allow=[trio.bob.key], name="echo")
    result = subprocess.run(
        f"echo data | '{exe}' --home '{trio.bob.home}' nc alice.echo",
        shell=True,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"data\n"


def test_nc_in_direct_mode_from_a_node_without_peers(trio: Trio, echo_server: TCPServer) -> None:
    solo = trio.net.start(unique("ncsolo"))
    service = expose(trio.alice, echo_server.address, allow=[solo.key])
    data = payload(300_000, seed=22)
    result = solo.cli("nc", f"alice.{service}", "--via", trio.alice.listen, input_bytes=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    assert solo.call("resolve", address=f"alice.{service}")["pinned"] is True


# ---------------------------------------------------------------- connect / listings
def test_cli_connect_forward_disconnect_and_json_listings(
    trio: Trio, echo_server: TCPServer
) -> None:
    alice, bob = trio.alice, trio.bob
    service = expose(alice, echo_server.address, allow=["bob"])  # allowed by name
    name = unique("cli-fwd")
    result = bob.cli("connect", f"alice.{service}", "--local", "0", "--name", name, "--json")
    assert result.returncode == 0, result.stderr
    port = local_port(json.loads(result.stdout))
    assert echo_once(port, b"via the cli") == b"via the cli"

    listed = json.loads(bob.cli("forwards", "--json").stdout)["forwards"]
    assert any(f["name"] == name and f["connections"] == 1 for f in listed)
    services = json.loads(alice.cli("services", "--json").stdout)["services"]
    mine = next(s for s in services if s["name"] == service)
    assert mine["allow"] == ["bob"] and mine["public"] is False
    ident = json.loads(bob.cli("id", "--json").stdout)
    assert (ident["name"], ident["key"]) == ("bob", bob.key)
    peers = json.loads(bob.cli("peers", "--json").stdout)
    assert any(link["key"] == alice.key for link in peers["links"])
    assert json.loads(bob.cli("status", "--json").stdout)["key"] == bob.key
    human = bob.cli("forwards")
    assert human.returncode == 0 and name in human.stdout.decode()

    assert bob.cli("disconnect", name).returncode == 0
    assert not any(f["name"] == name for f in bob.call("forwards")["forwards"])
    with pytest.raises(ConnectionRefusedError):
        connect(port, timeout=5).close()
    again = bob.cli("disconnect", name)
    assert again.returncode != 0 and name in stderr_line(again)


# ---------------------------------------------------------------- config file
def test_config_file_declares_a_service_and_forwards(trio: Trio, echo_server: TCPServer) -> None:
    net, hub = trio.net, trio.hub
    owner_name, client_name = unique("cfgowner"), unique("cfgclient")
    client_home = net.base / client_name
    client_home.mkdir(mode=0o700)
    # The client's identity exists before either node starts, so the owner's file can
    # name its key in the allow-list.
    client_key_file = client_home / "identity.key"
    client_key_file.write_bytes(Identity(os.urandom(32)).private_bytes())
    client_key_file.chmod(0o600)
    client_key = key_to_text(Identity(client_key_file.read_bytes()).public)

    owner_home = net.base / owner_name
    owner_home.mkdir(mode=0o700)
    (owner_home / "config.toml").write_text(
        f'name = "{owner_name}"\n'
        f'peers = ["{hub.listen}"]\n\n'
        f"[services.web]\n"
        f'target = "{echo_server.address}"\n'
        f'allow = ["{client_key}"]\n'
    )
    owner = net.start(owner_name, claim=False)
    assert owner.info["name"] == owner_name
    assert [s["name"] for s in owner.call("services")["services"]] == ["web"]

    (client_home / "config.toml").write_text(
        f'name = "{client_name}"\n'
        f'peers = ["{hub.listen}"]\n\n'
        f"[forwards.named]\n"
        f'service = "{owner_name}.web"\n'
        f'local = "127.0.0.1:0"\n\n'
        f"[forwards.direct]\n"
        f'service = "{owner_name}.web"\n'
        f'local = "127.0.0.1:0"\n'
        f'via = "{owner.listen}"\n'
    )
    client = net.start(client_name, claim=False)
    assert client.key == client_key
    forwards = {f["name"]: f for f in client.call("forwards")["forwards"]}
    assert set(forwards) == {"named", "direct"}
    assert forwards["direct"]["path"] == "direct-ip"

    direct_port = local_port(forwards["direct"])
    assert echo_once(direct_port, b"direct from config") == b"direct from config"

    named_port = local_port(forwards["named"])
    wait_for(lambda: knows_owner(client, owner_name), 15, "the client to learn the owner")
    assert echo_once(named_port, b"named from config") == b"named from config"
