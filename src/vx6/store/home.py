"""A node's home directory: keys, registry, control socket, config.

Theory of operation. Everything a node is lives in one directory, so several nodes can
run on one machine side by side (`VX6_HOME` or `--home`). Keys are created on first use
with mode 0600 inside a 0700 directory, written atomically (temp file, fsync, rename), so
a crash can never leave a half-written key, and are stable across restarts.

Like ssh's StrictModes, a home another user could have tampered with is refused with a
one-line error (`HomeError`) before anything is read from it: the directory (and a
symlink naming it) must belong to this user, and neither it nor any parent may be
writable by others (a parent may belong to root; a world-writable parent needs the
sticky bit, like /tmp). A key file must be a regular file of this user's that nobody
else can write; one that others can read is tightened to 0600 with a warning. A new key
goes to a temporary file opened O_CREAT|O_EXCL|O_NOFOLLOW (so nothing planted at that
name is followed or reused), is fsynced, and is renamed into place. A home that cannot be
written (read-only file system) is a one-line error too, not a traceback.

One node per home: `Home.lock()` takes an exclusive flock on `node.lock` (holding the
owner's pid) before the node binds, opens the registry or joins the DHT; a second node
on the same home stops there with `NodeRunning`, naming the first one's pid. The kernel
drops a flock when its process dies, so the file a killed node leaves blocks nobody;
it is never deleted (unlinking a lock file races with the next node taking it).

Hidden services' alias keys and state files: vx6/store/hidden_home.py (mixed in).
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path

from vx6.core.circuit.onion_schedule import ONION_KEY_LIFETIME, OnionKeyAction, onion_key_step
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import UsageError
from vx6.store.hidden_home import HiddenServiceFiles
from vx6.store.home_errors import HomeError as HomeError  # callers catch it from here

log = logging.getLogger("vx6.home")

KEY_LEN = 32


class NodeRunning(HomeError):
    """Another process holds this home's node lock: a node runs on it already."""


class HomeLock:
    """A held node lock; released by `release()`, leaving the `with` block, or the
    process's death."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> HomeLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _holder_pid(fd: int) -> str:
    """The pid the holder wrote, or "unknown" (it may not have written it yet)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def default_home() -> Path:
    env = os.environ.get("VX6_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "vx6"
    if os.name == "nt":
        return Path(os.environ.get("APPDATA", Path.home())) / "vx6"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vx6"


def _others_may_write(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def check_parents(path: Path) -> None:
    """Refuse `path` if a directory above it lets another user replace what is below:
    owned by someone other than us or root, or writable by others without the sticky
    bit (a sticky world-writable directory such as /tmp only lets owners rename)."""
    uid = os.geteuid()
    for parent in path.parents:
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            continue  # not there yet: mkdir creates it as ours
        if st.st_uid not in (uid, 0):
            raise HomeError(
                f"unsafe home {path}: its parent {parent} belongs to another user (uid {st.st_uid})"
            )
        if _others_may_write(st) and not st.st_mode & stat.S_ISVTX:
            raise HomeError(
                f"unsafe home {path}: its parent {parent} is writable by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}, no sticky bit)"
            )


class Home(HiddenServiceFiles):
    def __init__(self, path: Path | None = None) -> None:
        given = (path or default_home()).expanduser()
        self.given = given if given.is_absolute() else Path.cwd() / given
        self.path = self.given.resolve()
        self._checked = False

    @property
    def registry_path(self) -> Path:
        return self.path / "registry.sqlite"

    @property
    def control_path(self) -> Path:
        return self.path / "control.sock"

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def lock_path(self) -> Path:
        return self.path / "node.lock"

    def lock(self) -> HomeLock:
        """Take this home's node lock (creating the home if needed), or raise
        NodeRunning naming the pid of the node that holds it."""
        import fcntl  # POSIX only, like the control socket

        self.ensure()
        path = self.lock_path
        flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
        flags |= getattr(os, "O_NOFOLLOW", 0)  # a symlink planted there is not followed
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise HomeError(f"cannot use lock file {path}: {exc.strerror or exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise HomeError(f"unsafe lock file {path}: not a regular file of this user")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise NodeRunning(
                    f"another node is running on this home (pid {_holder_pid(fd)})"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise HomeError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        except BaseException:
            os.close(fd)
            raise
        return HomeLock(fd, path)

    def ensure(self) -> None:
        """Create the home (0700) if needed and check it is safe and writable."""
        if self._checked:
            return
        try:
            self._check_symlinks()  # both before creating anything under them
            check_parents(self.path)
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._check_home()
            if stat.S_IMODE(os.stat(self.path).st_mode) != 0o700:
                os.chmod(self.path, 0o700)
            if not os.access(self.path, os.W_OK):
                read_only = os.statvfs(self.path).f_flag & os.ST_RDONLY
                why = "it is on a read-only file system" if read_only else "permission denied"
                raise HomeError(f"home {self.path} cannot be written: {why}")
        except OSError as exc:
            raise HomeError(f"cannot use home {self.path}: {exc.strerror or exc}") from exc
        self._checked = True

    def _check_symlinks(self) -> None:
        uid = os.geteuid()
        # A symlink on the way (the home itself or a directory above it) could be
        # pointed elsewhere by whoever owns it.
        here = Path(self.given.anchor)
        for part in self.given.parts[1:]:
            here = here / part
            try:
                link = os.lstat(here)
            except FileNotFoundError:
                break
            if stat.S_ISLNK(link.st_mode) and link.st_uid not in (uid, 0):
                raise HomeError(
                    f"unsafe home {self.given}: {here} is a symlink owned by another user "
                    f"(uid {link.st_uid})"
                )

    def _check_home(self) -> None:
        uid = os.geteuid()
        st = os.stat(self.path)
        if not stat.S_ISDIR(st.st_mode):
            raise HomeError(f"home {self.path} is not a directory")
        if st.st_uid != uid:
            raise HomeError(
                f"unsafe home {self.path}: it belongs to another user (uid {st.st_uid}, "
                f"we are {uid})"
            )
        if _others_may_write(st):
            raise HomeError(
                f"unsafe home {self.path}: other users can write it "
                f"(mode {stat.S_IMODE(st.st_mode):04o}; chmod 700 it if that was not them)"
            )

    def safe_control_path(self) -> Path:
        """The control socket, for a CLI command that talks to the running node: a
        home (or socket) another user could have replaced would hand our commands, and
        their answers, to that user. Nothing is created; a missing home passes (the
        connect then says no node is running)."""
        try:
            if self.path.exists():
                self._check_symlinks()
                check_parents(self.path)
                self._check_home()
            sock = os.lstat(self.control_path)
        except FileNotFoundError:
            return self.control_path
        except OSError as exc:
            raise HomeError(f"cannot use home {self.path}: {exc.strerror or exc}") from exc
        if not stat.S_ISSOCK(sock.st_mode) or sock.st_uid != os.geteuid():
            raise HomeError(f"unsafe control socket {self.control_path}: not a socket of this user")
        return self.control_path

    def exists(self) -> bool:
        return (self.path / "identity.key").exists()

    def _read_key(self, file: Path) -> bytes | None:
        """The key in `file` after the ownership and mode checks, or None if absent."""
        try:
            link = os.lstat(file)
        except FileNotFoundError:
            return None
        uid = os.geteuid()
        if stat.S_ISLNK(link.st_mode) and link.st_uid != uid:
            raise HomeError(f"unsafe key file {file}: a symlink owned by uid {link.st_uid}")
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOCTTY", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise HomeError(f"unsafe key file {file}: not a regular file")
            if st.st_uid != uid:
                raise HomeError(f"unsafe key file {file}: it belongs to uid {st.st_uid}")
            if _others_may_write(st):
                raise HomeError(
                    f"unsafe key file {file}: other users can write it "
                    f"(mode {stat.S_IMODE(st.st_mode):04o})"
                )
            if st.st_mode & 0o077:
                log.warning(
                    "key file %s was readable by other users (mode %04o): tightened to 0600",
                    file,
                    stat.S_IMODE(st.st_mode),
                )
                os.fchmod(fd, 0o600)
            raw = os.read(fd, KEY_LEN + 1)
        finally:
            os.close(fd)
        if len(raw) != KEY_LEN:
            raise UsageError(f"{file} is damaged (expected {KEY_LEN} bytes, found {len(raw)})")
        return raw

    def _write_key(self, file: Path, raw: bytes) -> None:
        tmp = file.with_suffix(".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            # Left by a crash, or planted: removing the name never touches what a
            # symlink there points to; O_EXCL then makes sure the file is ours.
            os.unlink(tmp)
            fd = os.open(tmp, flags, 0o600)
        try:
            os.write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, file)
        dir_fd = os.open(file.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)

    def write_config(self, text: str) -> None:
        """Replace config.toml atomically (0600: it holds allow lists)."""
        self.ensure()
        try:
            self._write_key(self.config_path, text.encode())
        except OSError as exc:
            raise HomeError(f"cannot write {self.config_path}: {exc.strerror or exc}") from exc

    def _load_or_create(self, name: str) -> bytes:
        self.ensure()
        file = self.path / name
        try:
            raw = self._read_key(file)
            if raw is None:
                raw = os.urandom(KEY_LEN)
                self._write_key(file, raw)
        except OSError as exc:
            raise HomeError(f"cannot use key file {file}: {exc.strerror or exc}") from exc
        return raw

    def identity(self) -> Identity:
        return Identity(self._load_or_create("identity.key"))

    def link_key(self) -> StaticKey:
        return StaticKey(self._load_or_create("link.key"))

    def onion_key(self) -> StaticKey:
        return StaticKey(self._load_or_create("onion.key"))

    def onion_keys(self, now: float, lifetime: float = ONION_KEY_LIFETIME) -> list[StaticKey]:
        """The onion keys a CREATE may name: the current one, then the previous one if
        it is in its grace period. The schedule is applied first (`onion_key_state`)."""
        return self.onion_key_state(now, lifetime)[0]

    def onion_key_state(
        self, now: float, lifetime: float = ONION_KEY_LIFETIME
    ) -> tuple[list[StaticKey], float]:
        """Apply the rotation schedule (core/circuit/onion_schedule.py) to the key files
        and return the accepted keys, current first, with the time the next rotation is
        due. The current key's mtime is when it was made (set to `now` when it is
        written); rotating renames it over `onion.prev.key`, which deletes the key
        whose grace period just ended."""
        self.ensure()
        current = self.path / "onion.key"
        previous = self.path / "onion.prev.key"
        try:
            try:
                made: float | None = os.stat(current).st_mtime
            except FileNotFoundError:
                made = None
            step = onion_key_step(now, made, lifetime)
            if step.action is OnionKeyAction.ROTATE:
                os.replace(current, previous)
            elif step.action is OnionKeyAction.RENEW:
                previous.unlink(missing_ok=True)
                current.unlink()
            if step.action is not OnionKeyAction.KEEP:
                self._write_key(current, os.urandom(KEY_LEN))
                os.utime(current, (now, now))
            elif made is not None and made > now:
                os.utime(current, (now, now))  # the clock went back: its lifetime runs from now
        except OSError as exc:
            raise HomeError(f"cannot rotate {current}: {exc.strerror or exc}") from exc
        keys = [self.onion_key()]
        try:
            old = self._read_key(previous)
        except (OSError, UsageError):
            old = None  # a damaged previous key only costs circuits planned from it
        if old is not None:
            keys.append(StaticKey(old))
        return keys, step.due
