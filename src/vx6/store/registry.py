"""The node's local registry: one SQLite file holding what the node has learnt.

Theory of operation
-------------------
A Registry owns one sqlite3 connection, used from one thread (the asyncio loop). The
connection runs in autocommit mode and every mutation opens its own
``BEGIN IMMEDIATE ... COMMIT`` transaction: a write lands whole or not at all, and it
takes the write lock up front (waiting up to busy_timeout for another process such as
the CLI) instead of failing half-way while upgrading a read lock.

Records are stored as opaque bytes plus the metadata columns the caller has already
checked (kind, signer, subject, seq, issued, expires); the store verifies nothing
itself. There is one row per (kind, signer, subject); a new offer replaces it only when
its seq is strictly higher, and that comparison happens inside the UPSERT statement, so
a lower seq never replaces a higher one, however writers interleave.

The schema is versioned and migrated when a file is opened (`vx6.store.schema`); a file
written by a newer VX6 is refused rather than misread.

Bounds and faults: the records and peers tables are capped (`vx6.store.bounds`: rows and
bytes in total, rows per signer key, eviction by trust inside the write that went over).
A write SQLite refuses raises `RegistryWriteError` and marks the registry degraded until
a write succeeds again (`vx6.store.health`); it never leaves half a write behind.

Durability: WAL journal with synchronous=NORMAL. A commit appends to the WAL and returns
without fsync; the WAL is fsynced at checkpoints. That is safe here: a process crash
(even kill -9) loses nothing that was committed, because committed frames are already
in the OS page cache and the WAL is replayed on the next open; only a power loss or
kernel crash may lose the last few transactions, and even then the database stays
consistent (the lost ones are simply absent). Every record can be re-fetched from peers,
so that trade is worth the much cheaper commits.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vx6.errors import RecordRejected
from vx6.store.bounds import (
    RegistryLimits,
    evict_peers,
    evict_records,
    record_totals,
    signer_rows,
)
from vx6.store.health import RegistryWriteError as RegistryWriteError
from vx6.store.health import WriteHealth, write_failure_reason
from vx6.store.schema import SCHEMA_VERSION_KEY, create_private_file, migrate
from vx6.store.schema import LocalService as LocalService  # row types, imported from here
from vx6.store.schema import Peer as Peer
from vx6.store.schema import RegistryError as RegistryError  # callers catch it from here
from vx6.store.schema import StoredRecord as StoredRecord

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_BUSY_TIMEOUT_MS = 5000


_RECORD_COLUMNS = "kind, signer, subject, seq, issued, expires, raw, source, received_at"
_PEER_COLUMNS = "key, host, port, last_seen, rtt_ms, first_seen"
_SERVICE_COLUMNS = "name, target_host, target_port, allow_json, public, allow_remote_target"

_PUT_RECORD = f"""
    INSERT INTO records ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (kind, subject, signer) DO UPDATE SET
        seq = excluded.seq, issued = excluded.issued, expires = excluded.expires,
        raw = excluded.raw, source = excluded.source, received_at = excluded.received_at
    WHERE excluded.seq > records.seq
"""
_KEY_WHERE = "kind = ? AND subject = ? AND signer = ?"


def _check_int64(what: str, value: int) -> None:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise RegistryError(f"{what} {value} does not fit the registry's 64-bit column")


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise RegistryError(f"limit must not be negative, got {limit}")


class Registry:
    """The node's SQLite registry. Not thread-safe: use from one thread."""

    def __init__(self, path: str | os.PathLike[str], limits: RegistryLimits | None = None) -> None:
        self._path = os.fspath(path)
        self._conn: sqlite3.Connection | None = None
        self._changes = 0  # see `generation`
        self.limits = RegistryLimits.from_env() if limits is None else limits
        self.health = WriteHealth(self._path)
        self.evicted = 0  # records evicted to stay under the caps since open
        in_memory = self._path == ":memory:"
        try:
            if not in_memory:
                create_private_file(self._path)
            conn = sqlite3.connect(
                self._path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000
            )
        except (OSError, sqlite3.Error) as exc:
            raise RegistryError(f"cannot open registry {self._path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if not in_memory and str(mode).lower() != "wal":
                raise RegistryError(f"registry {self._path}: cannot enable WAL (got {mode!r})")
            # Safe with WAL; see the module docstring for what it does and does not risk.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._schema_version = migrate(conn, self._path)
            # Running totals for the caps, moved by every write below.
            self._count, self._bytes = record_totals(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise RegistryError(f"cannot open registry {self._path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self._schema_version

    @property
    def generation(self) -> tuple[int, int]:
        """Moves whenever what the registry says about names may have changed: a record
        stored or purged or a pin set through this object (counted here), or a commit to
        the file by any other connection (SQLite's data_version: the CLI or another
        process). Answers derived from the registry stay valid while it stands still and
        no record expires; vx6.store.memo keeps them on that basis."""
        return self._changes, int(self._fetchone("PRAGMA data_version")[0])

    def next_expiry(self, now: float) -> float:
        """When the first record still valid at `now` expires (inf if none)."""
        row = self._fetchone("SELECT min(expires) FROM records WHERE expires > ?", (now,))
        return math.inf if row[0] is None else float(row[0])

    # ----------------------------------------------------------------- plumbing

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RegistryError(f"registry {self._path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                # SQLite may have rolled back already, or fail again: the write is void.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                reason = write_failure_reason(exc)
                self.health.failed(reason)
                raise RegistryWriteError(self._path, reason) from exc
            raise
        self.health.succeeded()

    def _fetchone(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        try:
            return self._db().execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise RegistryError(f"registry {self._path}: read failed: {exc}") from exc

    def _fetchall(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        try:
            return self._db().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise RegistryError(f"registry {self._path}: read failed: {exc}") from exc

    # ------------------------------------------------------------------ records

    def put_record(
        self,
        kind: int,
        signer: bytes,
        subject: str,
        seq: int,
        issued: int,
        expires: int,
        raw: bytes,
        source: str,
        now: float,
    ) -> bool:
        """Store the record if its seq beats the one held; True when it was stored.

        A new row over the signer's quota is refused (RecordRejected "signer-full"),
        unless it is the node's own (source "self"); a write that takes the table over
        its caps evicts others by trust (`vx6.store.bounds`)."""
        for what, value in (("kind", kind), ("seq", seq), ("issued", issued), ("expires", expires)):
            _check_int64(what, value)
        signer, raw = bytes(signer), bytes(raw)
        params = (kind, signer, subject, seq, issued, expires, raw, source, now)
        limits = self.limits
        with self._write() as conn:
            old = conn.execute(
                f"SELECT length(raw) FROM records WHERE {_KEY_WHERE}", (kind, subject, signer)
            ).fetchone()
            if (
                old is None
                and source != "self"
                and signer_rows(conn, signer) >= limits.max_per_signer
            ):
                raise RecordRejected("signer-full")
            stored: bool = conn.execute(_PUT_RECORD, params).rowcount == 1
            count, size = self._count, self._bytes
            if stored:
                count += old is None
                size += len(raw) - (0 if old is None else int(old[0]))
            evicted = (0, 0)
            if limits.over(count, size):
                evicted = evict_records(conn, limits, count, size)
        # Committed: only now move the totals the caps are checked against.
        self._count, self._bytes = count - evicted[0], size - evicted[1]
        self.evicted += evicted[0]
        self._changes += stored or evicted[0] > 0
        return stored

    def held_seq(self, kind: int, signer: bytes, subject: str) -> int | None:
        row = self._fetchone(
            f"SELECT seq FROM records WHERE {_KEY_WHERE}", (kind, subject, bytes(signer))
        )
        return None if row is None else int(row[0])

    def get_record(self, kind: int, signer: bytes, subject: str) -> StoredRecord | None:
        row = self._fetchone(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE {_KEY_WHERE}",
            (kind, subject, bytes(signer)),
        )
        return None if row is None else StoredRecord(*row)

    def records(
        self,
        kind: int | None = None,
        subject: str | None = None,
        signer: bytes | None = None,
        now: float | None = None,
        limit: int = 1000,
    ) -> list[StoredRecord]:
        """Records matching every filter given, ordered by (kind, subject, signer).

        With ``now``, only records still valid at that time (expires > now).
        """
        _check_limit(limit)
        signer_bytes = None if signer is None else bytes(signer)
        filters = (("kind = ?", kind), ("subject = ?", subject), ("signer = ?", signer_bytes))
        active = [
            (sql, value) for sql, value in (*filters, ("expires > ?", now)) if value is not None
        ]
        where = " AND ".join(sql for sql, _ in active) or "1"
        params = [value for _, value in active]
        rows = self._fetchall(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE {where} "
            "ORDER BY kind, subject, signer LIMIT ?",
            (*params, limit),
        )
        return [StoredRecord(*row) for row in rows]

    def records_changed_since(self, received_after: float, limit: int) -> list[StoredRecord]:
        """Records received strictly after ``received_after``, oldest first, for peer sync.

        A sync cursor is the last record's ``received_at``. So that a page boundary never
        splits records sharing one timestamp (the next page would skip the rest), a full
        page is extended with the remaining records of its last timestamp: the result may
        exceed ``limit`` by that many.
        """
        _check_limit(limit)
        select = f"SELECT {_RECORD_COLUMNS}, rowid FROM records"
        rows = self._fetchall(
            f"{select} WHERE received_at > ? ORDER BY received_at, rowid LIMIT ?",
            (received_after, limit),
        )
        if rows and len(rows) == limit:
            last = rows[-1]
            rows += self._fetchall(
                f"{select} WHERE received_at = ? AND rowid > ? ORDER BY rowid",
                (last[8], last[9]),
            )
        return [StoredRecord(*row[:9]) for row in rows]

    def purge_expired(self, now: float) -> int:
        with self._write() as conn:
            sizes = conn.execute(
                "DELETE FROM records WHERE expires <= ? RETURNING length(raw)", (now,)
            ).fetchall()
        self._count -= len(sizes)
        self._bytes -= sum(int(s[0]) for s in sizes)
        self._changes += bool(sizes)
        return len(sizes)

    def record_bytes(self) -> int:
        """Bytes of record blobs held (what max_bytes caps)."""
        return self._bytes

    def records_page(
        self, after_rowid: int, now: float, limit: int
    ) -> tuple[list[StoredRecord], int]:
        """Up to `limit` records still valid at `now` stored after `after_rowid`, in
        storage order, and the rowid to continue from (a dump sent in batches)."""
        _check_limit(limit)
        rows = self._fetchall(
            f"SELECT {_RECORD_COLUMNS}, rowid FROM records WHERE rowid > ? AND expires > ? "
            "ORDER BY rowid LIMIT ?",
            (after_rowid, now, limit),
        )
        last = int(rows[-1][9]) if rows else after_rowid
        return [StoredRecord(*row[:9]) for row in rows], last

    def count_records(self, now: float | None = None) -> int:
        if now is None:
            row = self._fetchone("SELECT count(*) FROM records")
        else:
            row = self._fetchone("SELECT count(*) FROM records WHERE expires > ?", (now,))
        return int(row[0])

    # -------------------------------------------------------------------- peers

    def upsert_peer(
        self,
        host: str,
        port: int,
        now: float,
        key: bytes | None = None,
        rtt_ms: float | None = None,
    ) -> None:
        """Note that host:port was seen; a key or rtt given replaces the one held."""
        _check_int64("port", port)
        with self._write() as conn:
            conn.execute(
                f"""INSERT INTO peers ({_PEER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (host, port) DO UPDATE SET
                    key = coalesce(excluded.key, peers.key),
                    last_seen = max(peers.last_seen, excluded.last_seen),
                    rtt_ms = coalesce(excluded.rtt_ms, peers.rtt_ms)""",
                (None if key is None else bytes(key), host, port, now, rtt_ms, now),
            )
            evict_peers(conn, self.limits)

    def peers(self, limit: int = 1000) -> list[Peer]:
        """Known peers, most recently seen first."""
        _check_limit(limit)
        rows = self._fetchall(
            f"SELECT {_PEER_COLUMNS} FROM peers "
            "ORDER BY last_seen DESC, host DESC, port DESC LIMIT ?",
            (limit,),
        )
        return [Peer(*row) for row in rows]

    def forget_peer(self, host: str, port: int) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM peers WHERE host = ? AND port = ?", (host, port))

    # --------------------------------------------------------------------- pins

    def get_pin(self, name: str) -> bytes | None:
        row = self._fetchone("SELECT key FROM pins WHERE name = ?", (name,))
        return None if row is None else bytes(row[0])

    def set_pin(self, name: str, key: bytes, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO pins (name, key, pinned_at) VALUES (?, ?, ?)",
                (name, bytes(key), now),
            )
        self._changes += 1

    def remove_pin(self, name: str) -> bool:
        """Forget the key pinned for `name` (False if none was): the next successful
        connection pins it afresh. Moves `generation`, so memos drop what they derived."""
        with self._write() as conn:
            removed = conn.execute("DELETE FROM pins WHERE name = ?", (name,)).rowcount > 0
        if removed:
            self._changes += 1
        return removed

    def pins(self) -> list[tuple[str, bytes, float]]:
        rows = self._fetchall("SELECT name, key, pinned_at FROM pins ORDER BY name")
        return [(str(name), bytes(key), float(at)) for name, key, at in rows]

    # ----------------------------------------------------------------- petnames

    def set_petname(self, name: str, alias_key: bytes, limit: int) -> None:
        """Name an alias key (replacing what `name` named); RegistryError if `limit`
        petnames exist already and `name` is not one of them."""
        with self._write() as conn:
            held = conn.execute("SELECT count(*) FROM petnames WHERE name <> ?", (name,))
            if held.fetchone()[0] >= limit:
                raise RegistryError(f"{limit} petnames already: remove one first")
            conn.execute(
                "INSERT OR REPLACE INTO petnames (name, alias_key) VALUES (?, ?)",
                (name, bytes(alias_key)),
            )

    def get_petname(self, name: str) -> bytes | None:
        row = self._fetchone("SELECT alias_key FROM petnames WHERE name = ?", (name,))
        return None if row is None else bytes(row[0])

    def remove_petname(self, name: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM petnames WHERE name = ?", (name,)).rowcount > 0

    def petnames(self) -> list[tuple[str, bytes]]:
        rows = self._fetchall("SELECT name, alias_key FROM petnames ORDER BY name")
        return [(str(name), bytes(key)) for name, key in rows]

    # ----------------------------------------------------------------- services

    def put_service(self, svc: LocalService) -> None:
        allow_json = json.dumps(list(svc.allow))
        row = (svc.name, svc.target_host, svc.target_port, allow_json, svc.public)
        with self._write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO services ({_SERVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (*row, svc.allow_remote_target),
            )

    def remove_service(self, name: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM services WHERE name = ?", (name,)).rowcount > 0

    def services(self) -> list[LocalService]:
        rows = self._fetchall(f"SELECT {_SERVICE_COLUMNS} FROM services ORDER BY name")
        return [
            LocalService(name, host, port, tuple(json.loads(allow)), bool(public), bool(remote))
            for name, host, port, allow, public, remote in rows
        ]

    # --------------------------------------------------------------------- meta

    def get_meta(self, key: str) -> str | None:
        row = self._fetchone("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        if key == SCHEMA_VERSION_KEY:
            raise RegistryError(f"meta key {key!r} is owned by the registry itself")
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def integrity_ok(self) -> bool:
        rows = self._fetchall("PRAGMA integrity_check")
        return len(rows) == 1 and rows[0][0] == "ok"
