"""A node's home directory: keys, registry, control socket, config.

Theory of operation. Everything a node is lives in one directory, so several nodes can
run on one machine side by side (`VX6_HOME` or `--home`). Keys are created on first use
with mode 0600 inside a 0700 directory, written atomically (temp file, fsync, rename), so
a crash can never leave a half-written key, and are stable across restarts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import UsageError

KEY_FILES = ("identity.key", "link.key", "onion.key")
ONION_KEY_LIFETIME = 7 * 24 * 3600.0


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


class Home:
    def __init__(self, path: Path | None = None) -> None:
        self.path = (path or default_home()).expanduser().resolve()

    @property
    def registry_path(self) -> Path:
        return self.path / "registry.sqlite"

    @property
    def control_path(self) -> Path:
        return self.path / "control.sock"

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)

    def exists(self) -> bool:
        return (self.path / "identity.key").exists()

    def _load_or_create(self, name: str) -> bytes:
        file = self.path / name
        if file.exists():
            raw = file.read_bytes()
            if len(raw) != 32:
                raise UsageError(f"{file} is damaged (expected 32 bytes, found {len(raw)})")
            return raw
        self.ensure()
        raw = os.urandom(32)
        tmp = file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, file)
        return raw

    def identity(self) -> Identity:
        return Identity(self._load_or_create("identity.key"))

    def link_key(self) -> StaticKey:
        return StaticKey(self._load_or_create("link.key"))

    def onion_key(self) -> StaticKey:
        return StaticKey(self._load_or_create("onion.key"))

    def onion_keys(self, now: float, lifetime: float = ONION_KEY_LIFETIME) -> list[StaticKey]:
        """The current onion key, then the previous one if there is one. A current key
        older than `lifetime` is rotated first: it becomes the previous key (relays still
        accept it until the next rotation, so circuits planned from an older node record
        still build) and a fresh one takes its place."""
        current = self.path / "onion.key"
        previous = self.path / "onion.prev.key"
        if current.exists() and now - current.stat().st_mtime > lifetime:
            os.replace(current, previous)
        keys = [self.onion_key()]
        if previous.exists():
            raw = previous.read_bytes()
            if len(raw) == 32:
                keys.append(StaticKey(raw))
        return keys
