"""Whether the registry can be written, with one log line a minute while it cannot.

Theory of operation. A write SQLite refuses (disk full, read-only file, I/O error) is
classified once (`write_failure_reason`) and reported to the registry's `WriteHealth`,
and the caller gets a `RegistryWriteError`. The first failure logs one warning; while
failures go on, at most one line per DEGRADED_LOG_EVERY says how many writes failed since
the last line; the first write that succeeds afterwards logs "registry writable again".
A failure never ends the node: callers decide what it means. A user's command fails with
a one-line error and changes nothing; a background write (a record learnt from a peer, a
remembered contact, the node's own republished record) is dropped, and comes again by
sync, the DHT or the next republish. `vx6 status` shows `describe()`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from vx6.store.schema import RegistryError

log = logging.getLogger("vx6.store")

DEGRADED_LOG_EVERY = 60.0


class RegistryWriteError(RegistryError):
    """SQLite refused a write: the registry is degraded (`reason` says why)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"registry {path} cannot be written ({reason})")
        self.reason = reason


def write_failure_reason(exc: sqlite3.Error) -> str:
    """A short, stable reason for a failed write ("disk full", "read-only", ...)."""
    primary = getattr(exc, "sqlite_errorcode", -1) & 0xFF
    text = str(exc).lower()
    if primary == sqlite3.SQLITE_FULL or "disk is full" in text:
        return "disk full"
    if primary == sqlite3.SQLITE_READONLY or "readonly" in text or "read-only" in text:
        return "read-only"
    if primary == sqlite3.SQLITE_IOERR or "i/o error" in text:
        return "disk I/O error"
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
        return "locked by another process"
    return text[:120] or type(exc).__name__


class WriteHealth:
    """How the registry's writes have gone lately (one per Registry)."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self.degraded: str | None = None  # reason of the failure still in force
        self.failed_writes = 0  # every failed write since the registry was opened
        self._unlogged = 0
        self._logged_at = 0.0

    def failed(self, reason: str) -> None:
        self.failed_writes += 1
        now = self._clock()
        if self.degraded is None:
            self.degraded = reason
            self._logged_at, self._unlogged = now, 0
            log.warning(
                "registry %s cannot be written (%s): commands that change state fail, "
                "records from peers are dropped until it can",
                self._path,
                reason,
            )
            return
        self.degraded = reason
        self._unlogged += 1
        if now - self._logged_at >= DEGRADED_LOG_EVERY:
            log.warning(
                "registry %s still cannot be written (%s): %d writes failed in the last %.0f s",
                self._path,
                reason,
                self._unlogged,
                now - self._logged_at,
            )
            self._logged_at, self._unlogged = now, 0

    def succeeded(self) -> None:
        if self.degraded is not None:
            log.warning(
                "registry %s writable again (after %d failed writes)",
                self._path,
                self.failed_writes,
            )
            self.degraded = None

    def describe(self) -> str:
        return "ok" if self.degraded is None else f"degraded: {self.degraded}"
