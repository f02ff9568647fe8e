"""Relay-mode settings: onion key rotation in the home (the previous key stays
accepted), and `hops` / `relay_fallback` / `relay` / `circuit_lifetime` in the config
file and on the command line, with clear errors for values the protocol cannot carry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vx6.app.format import render
from vx6.errors import UsageError
from vx6.store.config import CIRCUIT_LIFETIME, NodeConfig, forward_config, load_config
from vx6.store.home import ONION_KEY_LIFETIME, Home


def test_onion_key_rotates_after_its_lifetime_and_keeps_the_previous(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    first = home.onion_keys(now=1000.0)
    assert len(first) == 1
    current = tmp_path / "h" / "onion.key"
    assert current.stat().st_mode & 0o777 == 0o600
    young = current.stat().st_mtime + ONION_KEY_LIFETIME / 2
    assert [k.public for k in home.onion_keys(now=young)] == [first[0].public]
    old = current.stat().st_mtime + ONION_KEY_LIFETIME + 1
    rotated = home.onion_keys(now=old)
    assert len(rotated) == 2
    assert rotated[0].public != first[0].public  # a fresh current key
    assert rotated[1].public == first[0].public  # the old one, still accepted
    assert (tmp_path / "h" / "onion.key").stat().st_mode & 0o777 == 0o600


def test_config_file_relay_settings(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "relay = true\n"
        '[forwards.a]\nservice = "alice.ssh"\nlocal = "2222"\nhops = 3\n'
        '[forwards.b]\nservice = "alice.web"\nlocal = "8080"\nrelay_fallback = 2\n'
    )
    cfg = load_config(path)
    assert cfg.relay
    assert cfg.forwards["a"].hops == 3 and cfg.forwards["a"].relay_fallback == 0
    assert cfg.forwards["b"].hops == 0 and cfg.forwards["b"].relay_fallback == 2


@pytest.mark.parametrize(
    "extra",
    ["hops = 6", "hops = -1", 'hops = "3"', "hops = true", "relay_fallback = 9"],
)
def test_config_file_rejects_impossible_hops(tmp_path: Path, extra: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[forwards.a]\nservice = "alice.ssh"\nlocal = "2222"\n{extra}\n')
    with pytest.raises(UsageError):
        load_config(path)


def test_circuit_lifetime_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert load_config(path).circuit_lifetime == CIRCUIT_LIFETIME  # no file: the default
    path.write_text("circuit_lifetime = 90\n")
    assert load_config(path).circuit_lifetime == 90.0
    path.write_text("circuit_lifetime = 2.5\n")
    assert load_config(path).circuit_lifetime == 2.5


def test_command_line_flags_override_the_file_and_add_peers(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'name = "alice"\nlisten = ["[::1]:4242"]\npeers = ["[::1]:5000"]\n'
        "circuit_lifetime = 90\n"
        '[forwards.a]\nservice = "bob.ssh"\nlocal = "2222"\n'
    )
    file_cfg = load_config(path)
    assert file_cfg.with_flags(NodeConfig()) == file_cfg  # no flags: the file as it is
    flags = NodeConfig(
        name="carol", listen=[("::1", 4300)], peers=[("::1", 5000), ("::1", 5001)], relay=True
    )
    merged = file_cfg.with_flags(flags)
    assert (merged.name, merged.listen, merged.relay) == ("carol", [("::1", 4300)], True)
    assert merged.peers == [("::1", 5000), ("::1", 5001)]  # added, not duplicated
    assert merged.circuit_lifetime == 90.0 and list(merged.forwards) == ["a"]


@pytest.mark.parametrize("value", ["0", "-5", "0.5", "100000", '"600"', "true"])
def test_circuit_lifetime_out_of_range_is_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"circuit_lifetime = {value}\n")
    with pytest.raises(UsageError, match="circuit_lifetime"):
        load_config(path)


def test_forward_options_that_do_not_combine() -> None:
    with pytest.raises(UsageError, match=r"1\.\.5"):
        forward_config("f", "alice.ssh", "2222", None, hops=6)
    with pytest.raises(UsageError, match="--via"):
        forward_config("f", "alice.ssh", "2222", "[::1]:4242", hops=2)
    with pytest.raises(UsageError, match="relay-fallback"):
        forward_config("f", "alice.ssh", "2222", None, hops=2, relay_fallback=2)
    assert forward_config("f", "alice.ssh", "2222", None, hops=5).hops == 5


def test_previous_key_file_is_ignored_when_damaged(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.onion_keys(now=0.0)
    (tmp_path / "h" / "onion.prev.key").write_bytes(b"short")
    os.chmod(tmp_path / "h" / "onion.prev.key", 0o600)
    assert len(home.onion_keys(now=0.0)) == 1


def test_forwards_listing_marks_retiring_circuits() -> None:
    circuit = {"id": 3, "state": "open", "hops": 2, "streams": 1, "build_ms": 9.5}
    forward = {
        "name": "web",
        "local": "127.0.0.1:8080",
        "service": "alice.web",
        "path": "relay (1 hops)",
        "active": 1,
        "connections": 4,
        "failures": 0,
        "last_error": "",
        "circuits": [
            {**circuit, "relays": ["r1"], "retiring": True},
            {**circuit, "id": 5, "streams": 0, "relays": ["r2"], "retiring": False},
        ],
    }
    text = render("forwards", {"forwards": [forward]})
    assert "web circuits (2 of 2 open):" in text
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines() if line[:1] in "35"}
    assert rows == {"3": "retiring", "5": "open"}


def test_circuit_idle_timeout_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert load_config(path).circuit_idle_timeout == 300.0  # no file: the default
    path.write_text("circuit_idle_timeout = 900\n")
    assert load_config(path).circuit_idle_timeout == 900.0
    for bad in ("10", "-1", '"soon"'):
        path.write_text(f"circuit_idle_timeout = {bad}\n")
        with pytest.raises(UsageError, match="circuit_idle_timeout"):
            load_config(path)
