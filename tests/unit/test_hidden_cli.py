"""`vx6 hidden ...` and aliases in `vx6 connect`/`vx6 nc`, run as a user would (a
subprocess on a temporary home, no node): create prints a valid alias and is
idempotent, list --json, remove asks for --yes, petnames, and a bad alias gets the
alias parser's message."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

from kit.cli import run_vx6
from vx6.app import hidden_args
from vx6.core.hidden import target as core_target
from vx6.core.hidden.alias import ALIAS_LEN, parse_alias

EXIT_USAGE = 2
EXIT_ERROR = 1


def test_the_parsers_constants_agree_with_core() -> None:
    assert hidden_args.PROFILES == core_target.PROFILES
    assert hidden_args.DEFAULT_PROFILE == core_target.DEFAULT_PROFILE
    assert (hidden_args.INTRO_RATE, hidden_args.INTRO_BURST) == (
        core_target.INTRO_RATE,
        core_target.INTRO_BURST,
    )


def create(home: Path, *argv: str) -> str:
    done = run_vx6(home, "hidden", "create", *argv)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_create_prints_one_alias_and_is_idempotent(tmp_path: Path) -> None:
    home = tmp_path / "h"
    (tmp_path / "h").mkdir(mode=0o700)
    (home / "config.toml").write_text('name = "alice"  # mine\n')
    out = create(home, "web", "--target", "127.0.0.1:8080", "--public")
    alias = out.strip()
    assert out == alias + "\n" and len(alias) == ALIAS_LEN
    parse_alias(alias)  # valid
    again = run_vx6(home, "hidden", "create", "web", "--target", "127.0.0.1:8080", "--public")
    assert again.stdout == out and "unchanged" in again.stderr
    changed = run_vx6(home, "hidden", "create", "web", "--target", "127.0.0.1:9", "--allow", "bob")
    assert changed.stdout == out and "updated" in changed.stderr  # same key, new settings
    text = (home / "config.toml").read_text()
    assert text.startswith('name = "alice"  # mine\n')
    assert tomllib.loads(text)["hidden"]["web"] == {"target": "127.0.0.1:9", "allow": ["bob"]}
    assert stat.S_IMODE((home / "hidden" / "web" / "alias.key").stat().st_mode) == 0o600
    assert create(home, "blog", "--target", "[::1]:80", "--public") != out


def test_create_refusals(tmp_path: Path) -> None:
    home = tmp_path / "h"
    cases = [
        (["web", "--target", "127.0.0.1:80"], "--allow"),
        (["web", "--target", "192.0.2.1:80", "--public"], "--allow-remote-target"),
        (["we_b", "--target", "127.0.0.1:80", "--public"], "we_b"),
        (["web", "--target", "127.0.0.1:80", "--public", "--allow", "bob"], "--public"),
        (
            [
                "web",
                "--target",
                "127.0.0.1:80",
                *[arg for i in range(13) for arg in ("--allow", f"c{i}")],
            ],
            "at most 12",
        ),
    ]
    for argv, message in cases:
        done = run_vx6(home, "hidden", "create", *argv)
        assert done.returncode == EXIT_USAGE and message in done.stderr, (argv, done.stderr)
        assert done.stdout == ""
    assert not (home / "config.toml").exists()


def test_list_json_and_remove(tmp_path: Path) -> None:
    home = tmp_path / "h"
    alias = create(home, "web", "--target", "127.0.0.1:8080", "--allow", "bob").strip()
    listed = run_vx6(home, "hidden", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert doc["node"] == "unknown (node not running)"
    (row,) = doc["hidden"]
    assert (row["name"], row["alias"], row["profile"], row["target"]) == (
        "web",
        alias,
        "fast",
        "127.0.0.1:8080",
    )
    assert (row["allow"], row["public"], row["last_revision"], row["last_published"]) == (
        ["bob"],
        False,
        0,
        None,
    )
    assert row["guards"] == [] and row["live"] is None
    human = run_vx6(home, "hidden", "list")
    assert alias in human.stdout and "intros:    unknown (node not running)" in human.stdout
    refused = run_vx6(home, "hidden", "remove", "web")
    assert (
        refused.returncode == EXIT_USAGE and "--yes" in refused.stderr and alias in refused.stderr
    )
    assert (home / "hidden" / "web" / "alias.key").exists()
    removed = run_vx6(home, "hidden", "remove", "web", "--yes")
    assert removed.returncode == 0 and "gone for good" in removed.stdout
    assert not (home / "hidden" / "web").exists()
    assert "hidden" not in tomllib.loads((home / "config.toml").read_text())
    assert json.loads(run_vx6(home, "hidden", "list", "--json").stdout)["hidden"] == []
    missing = run_vx6(home, "hidden", "remove", "web", "--yes")
    assert missing.returncode == EXIT_USAGE and "no hidden service 'web'" in missing.stderr


def test_petnames_and_client_addresses(tmp_path: Path) -> None:
    home = tmp_path / "h"
    alias = create(home, "web", "--target", "127.0.0.1:8080", "--public").strip()
    added = run_vx6(home, "hidden", "name", "add", "myweb", alias.upper())
    assert added.returncode == 0, added.stderr
    names = json.loads(run_vx6(home, "hidden", "name", "list", "--json").stdout)
    assert names == {"petnames": [{"petname": "myweb", "alias": alias}]}
    for bad, message in ((alias, "petname"), ("my.web", "petname"), ("my_web", "petname")):
        done = run_vx6(home, "hidden", "name", "add", bad, alias)
        assert done.returncode == EXIT_USAGE and message in done.stderr, done.stderr
    typo = alias[:-3] + ("a" if alias[-3] != "a" else "b") + alias[-2:]
    done = run_vx6(home, "hidden", "name", "add", "other", typo)
    assert done.returncode == EXIT_USAGE and "checksum" in done.stderr
    # connect and nc: a bad alias gets the alias parser's message ...
    for argv in (["connect", typo, "--local", "0"], ["nc", typo]):
        done = run_vx6(home, *argv)
        assert done.returncode == EXIT_USAGE and "checksum does not match" in done.stderr
    done = run_vx6(home, "connect", alias + "x", "--local", "0")
    assert done.returncode == EXIT_USAGE and "56 characters, not 57" in done.stderr
    # ... and a good alias or a petname is understood: it goes to the node (none runs).
    for target in (alias, "myweb"):
        done = run_vx6(home, "connect", target, "--local", "0")
        assert done.returncode == EXIT_ERROR and "no node is running" in done.stderr
    unknown = run_vx6(home, "connect", "nosuch", "--local", "0")
    assert unknown.returncode == EXIT_USAGE and "NAME.SERVICE" in unknown.stderr
    removed = run_vx6(home, "hidden", "name", "remove", "myweb")
    assert removed.returncode == 0
    assert json.loads(run_vx6(home, "hidden", "name", "list", "--json").stdout)["petnames"] == []
    again = run_vx6(home, "hidden", "name", "remove", "myweb")
    assert again.returncode == EXIT_USAGE and "no petname" in again.stderr
