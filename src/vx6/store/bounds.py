"""The registry's size bounds and who is evicted first when they are reached.

Theory of operation. Records come from anyone: a peer that generates fresh keys can sign
as many valid records as it likes, so the records table is capped in rows and in record
bytes (`RegistryLimits`), and one signer key may hold at most `max_per_signer` rows.
`vx6.store.registry.Registry` keeps running totals (read once when the file is opened, then moved
by every write it makes) and, when a write takes them over a cap, evicts inside the same
transaction down to LOW_WATER of the cap, so a flood at the cap pays for one eviction per
few hundred records rather than one per record.

Eviction goes by trust: first records learnt from strangers (DHT, peer sync) whose
signer is not pinned, oldest received first; then records of pinned keys, oldest first;
never the node's own records (source "self"). The peers table is capped too, the least
recently seen going first. Limits come from `[registry_limits]` in config.toml, else the
environment (VX6_REGISTRY_MAX_RECORDS, VX6_REGISTRY_MAX_BYTES, VX6_REGISTRY_MAX_PER_SIGNER,
VX6_REGISTRY_MAX_PEERS), else the defaults below.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, fields

from vx6.store.schema import RegistryError

LOW_WATER = 0.95
EVICT_BATCH = 256

# Strangers' records first, then those of pinned keys; never the node's own.
_EVICTION_TIERS = (
    "source <> 'self' AND signer NOT IN (SELECT key FROM pins)",
    "source <> 'self' AND signer IN (SELECT key FROM pins)",
)


@dataclass(frozen=True)
class RegistryLimits:
    max_records: int = 20_000
    max_bytes: int = 32 << 20  # bytes of record blobs (each record <= 1024 bytes)
    max_per_signer: int = 256  # rows one signer key may hold (a node, its name, services)
    max_peers: int = 2_000

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise RegistryError(f"registry limit {f.name} must be at least 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RegistryLimits:
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for f in fields(cls):
            text = env.get(f"VX6_REGISTRY_{f.name.upper()}")
            if text:
                try:
                    values[f.name] = int(text)
                except ValueError:
                    raise RegistryError(
                        f"VX6_REGISTRY_{f.name.upper()} must be an integer, got {text!r}"
                    ) from None
        return cls(**values)

    def over(self, count: int, size: int) -> bool:
        return count > self.max_records or size > self.max_bytes


def record_totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """(rows, bytes of record blobs) of the records table: one scan, at open."""
    row = conn.execute("SELECT count(*), coalesce(sum(length(raw)), 0) FROM records").fetchone()
    return int(row[0]), int(row[1])


def evict_records(
    conn: sqlite3.Connection, limits: RegistryLimits, count: int, size: int
) -> tuple[int, int]:
    """Delete records by trust until (count, size) is at LOW_WATER of the caps; call
    inside a write transaction. Returns (rows, bytes) deleted."""
    target_count = math.floor(limits.max_records * LOW_WATER)
    target_size = math.floor(limits.max_bytes * LOW_WATER)
    rows = freed = 0
    for tier in _EVICTION_TIERS:
        while count - rows > target_count or size - freed > target_size:
            excess = count - rows - target_count
            batch = EVICT_BATCH if size - freed > target_size else min(EVICT_BATCH, excess)
            sizes = conn.execute(
                "DELETE FROM records WHERE rowid IN (SELECT rowid FROM records WHERE "
                f"{tier} ORDER BY received_at, rowid LIMIT ?) RETURNING length(raw)",
                (batch,),
            ).fetchall()
            if not sizes:
                break  # this tier is empty: on to the next one
            rows += len(sizes)
            freed += sum(int(s[0]) for s in sizes)
    return rows, freed


def signer_rows(conn: sqlite3.Connection, signer: bytes) -> int:
    row = conn.execute("SELECT count(*) FROM records WHERE signer = ?", (signer,)).fetchone()
    return int(row[0])


def evict_peers(conn: sqlite3.Connection, limits: RegistryLimits) -> int:
    """Keep at most max_peers rows in peers, dropping the least recently seen."""
    count = int(conn.execute("SELECT count(*) FROM peers").fetchone()[0])
    if count <= limits.max_peers:
        return 0
    return conn.execute(
        "DELETE FROM peers WHERE (host, port) IN (SELECT host, port FROM peers "
        "ORDER BY last_seen, host, port LIMIT ?)",
        (count - limits.max_peers,),
    ).rowcount
