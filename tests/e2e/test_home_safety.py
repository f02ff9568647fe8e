"""A home another user could have tampered with is refused before anything is read from
it (like ssh's StrictModes), key files are created without following anything planted,
loose key modes are tightened, and an unusable home is one line on stderr, exit 1.

Tests that need another uid (chown) or a mount run only as root, and skip otherwise."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.cli import run_vx6
from vx6.store.home import Home, HomeError
from vx6.store.registry import Registry, RegistryError

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mount)")


def vx6(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_vx6(home, *argv, timeout=60)


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vx6: ") and words in lines[0], lines
    assert "Traceback" not in result.stderr


@root_only
def test_a_home_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    os.chown(home, NOBODY, NOBODY)
    with pytest.raises(HomeError, match="belongs to another user"):
        Home(home).identity()
    assert_one_line_refusal(vx6(home, "run", "--listen", "[::1]:0"), "belongs to another user")
    assert not (home / "identity.key").exists()


def test_a_world_writable_home_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    home.chmod(0o777)
    assert_one_line_refusal(vx6(home, "run", "--listen", "[::1]:0"), "other users can write it")
    assert list(home.iterdir()) == []  # nothing created in it


def test_a_parent_writable_by_others_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(HomeError, match="writable by other users"):
        Home(shared / "h").ensure()
    assert not (shared / "h").exists()  # refused before creating anything there
    shared.chmod(0o1777)  # like /tmp: the sticky bit stops others renaming our entries
    Home(shared / "h").ensure()
    assert (shared / "h").stat().st_mode & 0o777 == 0o700


@root_only
def test_a_symlink_home_of_another_user_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(HomeError, match="symlink owned by another user"):
        Home(link).ensure()
    with pytest.raises(HomeError, match="symlink owned by another user"):
        Home(link / "below").ensure()  # a symlinked directory above the home, too
    assert not (real / "below").exists()


def test_a_symlink_planted_at_the_temporary_key_path_is_not_followed(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    victim.chmod(0o644)
    (home / "identity.tmp").symlink_to(victim)
    identity = Home(home).identity()
    assert victim.read_bytes() == b"precious"  # untouched
    assert victim.stat().st_mode & 0o777 == 0o644
    key = home / "identity.key"
    assert not key.is_symlink() and key.stat().st_mode & 0o777 == 0o600
    assert Home(home).identity().public == identity.public  # stable across loads
    assert not (home / "identity.tmp").exists()


def test_a_key_file_readable_by_others_is_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = Home(tmp_path / "h")
    first = home.identity()
    key = tmp_path / "h" / "identity.key"
    key.chmod(0o644)
    caplog.set_level(logging.WARNING, "vx6.home")
    assert Home(tmp_path / "h").identity().public == first.public
    assert key.stat().st_mode & 0o777 == 0o600
    assert any("tightened to 0600" in r.getMessage() for r in caplog.records)


def test_a_key_file_others_can_write_is_refused(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.identity()
    (tmp_path / "h" / "identity.key").chmod(0o622)
    with pytest.raises(HomeError, match="other users can write it"):
        Home(tmp_path / "h").identity()


@root_only
def test_a_key_file_of_another_user_is_refused(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.link_key()
    os.chown(tmp_path / "h" / "link.key", NOBODY, NOBODY)
    with pytest.raises(HomeError, match="belongs to uid 65534"):
        Home(tmp_path / "h").link_key()


def test_a_registry_symlink_is_not_followed(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.ensure()
    victim = tmp_path / "victim"
    victim.write_bytes(b"not a database")
    victim.chmod(0o644)
    home.registry_path.symlink_to(victim)
    with pytest.raises(RegistryError):
        Registry(home.registry_path)
    assert victim.read_bytes() == b"not a database"
    assert victim.stat().st_mode & 0o777 == 0o644


@contextlib.contextmanager
def read_only_mount(where: Path) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


@root_only
def test_a_read_only_home_is_one_line_at_start(tmp_path: Path) -> None:
    with read_only_mount(tmp_path / "ro") as mnt:
        home = mnt / "home"
        home.mkdir(mode=0o700)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        assert_one_line_refusal(vx6(home, "run", "--listen", "[::1]:0"), "read-only file system")
        assert_one_line_refusal(vx6(home, "status"), "no node is running")
        assert_one_line_refusal(vx6(home, "id"), "read-only file system")


def test_commands_for_the_node_refuse_a_home_or_socket_another_user_could_replace(
    tmp_path: Path,
) -> None:
    """`vx6 status` and the other commands that talk to the node send their request,
    and trust the answer, through the home's control socket: not through one that
    another user could have planted."""
    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    (home / "control.sock").write_text("not a socket")  # planted, say, by an earlier owner
    assert_one_line_refusal(vx6(home, "status"), "unsafe control socket")
    (home / "control.sock").unlink()
    home.chmod(0o777)
    assert_one_line_refusal(vx6(home, "status"), "other users can write it")
    assert_one_line_refusal(vx6(home, "nc", "alice.ssh"), "other users can write it")
    home.chmod(0o700)
    # A safe home without a node: the usual message.
    result = vx6(home, "status")
    assert result.returncode == 1 and "no node is running" in result.stderr
