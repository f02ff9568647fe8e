"""The registry's file: its schema, row types, versioned migrations, a private file mode.

Theory of operation: ``meta['schema_version']`` names how many entries of MIGRATIONS a
file has had applied. `migrate` applies the missing ones in order, each in its own
transaction (SQLite DDL is transactional, so a failed migration leaves the previous
version intact), reading the version inside the write lock so two processes opening a
fresh file at once cannot both apply a step. A file written by a newer VX6 is refused
rather than misread. `vx6.store.registry.Registry` calls both when it opens a file.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

from vx6.errors import VX6Error

SCHEMA_VERSION_KEY = "schema_version"


class RegistryError(VX6Error):
    """The local registry cannot be opened or used (newer schema, corrupt file, I/O)."""


# The rows `vx6.store.registry.Registry` hands out (and callers import from vx6.store.registry).
@dataclass(frozen=True)
class StoredRecord:
    kind: int
    signer: bytes
    subject: str
    seq: int
    issued: int
    expires: int
    raw: bytes
    source: str
    received_at: float


@dataclass(frozen=True)
class Peer:
    key: bytes | None
    host: str
    port: int
    last_seen: float
    rtt_ms: float | None
    first_seen: float


@dataclass(frozen=True)
class LocalService:
    name: str
    target_host: str
    target_port: int
    allow: tuple[str, ...]
    public: bool
    allow_remote_target: bool


# Each migration is a tuple of single statements (executescript would COMMIT on its own
# and break the one-transaction-per-migration rule). Append only; never edit a shipped one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
        """CREATE TABLE records (
            kind INTEGER NOT NULL, signer BLOB NOT NULL, subject TEXT NOT NULL,
            seq INTEGER NOT NULL, issued INTEGER NOT NULL, expires INTEGER NOT NULL,
            raw BLOB NOT NULL, source TEXT NOT NULL, received_at REAL NOT NULL,
            UNIQUE (kind, subject, signer))""",
        # Resolving a name: subject first, then kind (the unique index covers kind-first).
        "CREATE INDEX records_by_subject ON records (subject, kind)",
        "CREATE INDEX records_by_signer ON records (signer, kind)",
        "CREATE INDEX records_by_expiry ON records (expires)",
        "CREATE INDEX records_by_received ON records (received_at)",
        """CREATE TABLE peers (
            host TEXT NOT NULL, port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
            key BLOB, last_seen REAL NOT NULL, rtt_ms REAL, first_seen REAL NOT NULL,
            PRIMARY KEY (host, port)) WITHOUT ROWID""",
        "CREATE INDEX peers_by_last_seen ON peers (last_seen)",
        """CREATE TABLE pins (name TEXT PRIMARY KEY, key BLOB NOT NULL, pinned_at REAL NOT NULL)
            WITHOUT ROWID""",
        """CREATE TABLE services (
            name TEXT PRIMARY KEY CHECK (name <> ''), target_host TEXT NOT NULL,
            target_port INTEGER NOT NULL CHECK (target_port BETWEEN 1 AND 65535),
            allow_json TEXT NOT NULL, public INTEGER NOT NULL,
            allow_remote_target INTEGER NOT NULL) WITHOUT ROWID""",
    ),
    (  # 2: petnames, the user's own names for hidden-service aliases (docs/hidden.md 1)
        """CREATE TABLE petnames (
            name TEXT PRIMARY KEY CHECK (name <> ''),
            alias_key BLOB NOT NULL CHECK (length(alias_key) = 32)) WITHOUT ROWID""",
    ),
)


def create_private_file(path: str) -> None:
    """Create the file 0600 before SQLite does (SQLite gives its -wal/-shm the same mode).

    An existing file readable by others is tightened: it holds pins and allow-lists. A
    symlink is not followed, and a file of another user's is refused: it could be made to
    say anything, or be a file of theirs we would write to.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise RegistryError(f"registry {path} belongs to another user (uid {st.st_uid})")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _read_schema_version(conn: sqlite3.Connection, path: str) -> int:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (SCHEMA_VERSION_KEY,)).fetchone()
    if row is None:
        return 0
    if not isinstance(row[0], int | str) or not str(row[0]).isdigit():
        raise RegistryError(f"registry {path}: unreadable schema_version {row[0]!r}")
    return int(row[0])


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the file up to len(MIGRATIONS), one transaction per step; return the version."""
    known = len(MIGRATIONS)
    while True:
        # Read the version inside the write lock so two processes opening a fresh file
        # at once cannot both apply the same migration.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _read_schema_version(conn, path)
            if version > known:
                raise RegistryError(
                    f"registry {path} has schema version {version}, but this VX6 only knows "
                    f"up to {known}: it was written by a newer VX6; upgrade VX6 or move the "
                    "file aside"
                )
            if version == known:
                conn.execute("COMMIT")
                return version
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (SCHEMA_VERSION_KEY, version + 1),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
