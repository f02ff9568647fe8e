"""A hidden service's files in the home: `HOME/hidden/NAME/` (docs/hidden.md 1, 6).

Theory of operation. Each hidden service has a 0700 directory holding its alias key
`alias.key` (a 32-byte Ed25519 seed made once, 0600, like identity.key: same checks,
same atomic write) and its `state.json` (vx6/store/hidden_state.py), written the same
atomic way (temporary file, fsync, rename). A missing state file is a fresh state; a
malformed one is moved aside to `state.json.bad` with a warning and a fresh state is
used. Removing a service renames its directory to a unique name first and then deletes
it, so a crash never leaves half a service under its name: its alias is gone for good.
`vx6.store.home.Home` mixes these methods in.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from pathlib import Path

from vx6.core.names import validate_label
from vx6.store.hidden_state import (
    MAX_STATE_BYTES,
    HiddenState,
    HiddenStateError,
    decode_state,
    encode_state,
)
from vx6.store.home_errors import HomeError

log = logging.getLogger("vx6.home")

KEY_LEN = 32


class HiddenServiceFiles:
    """The hidden-service part of `Home` (which provides the four members below)."""

    path: Path

    def ensure(self) -> None:
        raise NotImplementedError

    def _read_key(self, file: Path) -> bytes | None:
        raise NotImplementedError

    def _write_key(self, file: Path, raw: bytes) -> None:
        raise NotImplementedError

    def _hidden_dir(self, name: str, create: bool) -> Path:
        folder = self.path / "hidden" / validate_label(name, "hidden service name")
        if create:
            self.ensure()
            for path in (folder.parent, folder):
                path.mkdir(mode=0o700, exist_ok=True)
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                    raise HomeError(f"unsafe directory {path}: not a directory of this user")
                if stat.S_IMODE(st.st_mode) != 0o700:
                    os.chmod(path, 0o700)
        return folder

    def hidden_alias_seed(self, name: str) -> bytes:
        """The alias key seed of hidden service `name`, made on first use."""
        try:
            file = self._hidden_dir(name, create=True) / "alias.key"
            raw = self._read_key(file)
            if raw is None:
                raw = os.urandom(KEY_LEN)
                self._write_key(file, raw)
        except OSError as exc:
            raise HomeError(f"cannot use the alias key of {name}: {exc.strerror or exc}") from exc
        return raw

    def hidden_alias_exists(self, name: str) -> bool:
        return (self._hidden_dir(name, create=False) / "alias.key").exists()

    def hidden_state(self, name: str) -> HiddenState:
        """The saved state of hidden service `name`; a fresh one if there is none. A
        malformed file is moved aside to `state.json.bad` (logged) and a fresh one used."""
        file = self._hidden_dir(name, create=False) / "state.json"
        try:
            fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return HiddenState()
        except OSError as exc:
            raise HomeError(f"cannot read {file}: {exc.strerror or exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise HomeError(f"unsafe state file {file}: not a regular file of this user")
            raw = os.read(fd, MAX_STATE_BYTES + 1)
        finally:
            os.close(fd)
        try:
            return decode_state(raw)
        except HiddenStateError as exc:
            aside = file.with_name("state.json.bad")
            try:
                os.replace(file, aside)
            except OSError as move_exc:
                raise HomeError(
                    f"{file} is damaged ({exc}) and cannot be moved aside"
                ) from move_exc
            log.warning(
                "hidden service %s: state file %s is damaged (%s); moved to %s, starting afresh",
                name,
                file,
                exc,
                aside.name,
            )
            return HiddenState()

    def save_hidden_state(self, name: str, state: HiddenState) -> None:
        file = self._hidden_dir(name, create=True) / "state.json"
        try:
            self._write_key(file, encode_state(state))
        except OSError as exc:
            raise HomeError(f"cannot write {file}: {exc.strerror or exc}") from exc

    def remove_hidden(self, name: str) -> bool:
        """Delete hidden service `name`'s key and state (False if it had none): its alias
        can never be used again."""
        folder = self._hidden_dir(name, create=False)
        if not folder.exists():
            return False
        try:
            # A unique name first, so a crash never leaves half a service under its name.
            doomed = folder.with_name(f".{folder.name}.removed-{time.time_ns()}")
            os.replace(folder, doomed)
            shutil.rmtree(doomed)
        except OSError as exc:
            raise HomeError(f"cannot remove {folder}: {exc.strerror or exc}") from exc
        return True
