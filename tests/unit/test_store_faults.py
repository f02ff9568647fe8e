"""A registry that cannot be written degrades the node and never ends it; the registry
stays under its caps whatever peers send (issue: a hostile peer must not fill the disk).

Faults are injected in-process: the Registry's real SQLite connection is wrapped so every
data-changing statement raises sqlite3.OperationalError with SQLite's own message (disk
full, read-only, I/O error). Every write path of the Registry, and every caller of one in
a node (records from peers and the DHT, remembered contacts, dialled peers, republish,
expose/unexpose), is driven against it. The cap is checked by flooding a real SQLite file
with valid signed records from fresh keys. The same faults on a real full file system are
in test_e2e_store_faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vx6.core.dht.contacts import Contact
from vx6.core.records import make_record
from vx6.core.sync import DUMP_BATCH, DUMPS_BURST, SYNC_DUMP_LIMIT
from vx6.crypto.keys import Identity
from vx6.errors import RecordRejected, UsageError
from vx6.node.wiring import Node
from vx6.store.bounds import RegistryLimits
from vx6.store.config import NodeConfig, load_config
from vx6.store.health import DEGRADED_LOG_EVERY, WriteHealth
from vx6.store.home import Home
from vx6.store.registry import LocalService, Registry, RegistryWriteError
from vx6.wire.records import Mode, NameClaimBody, ServiceBody, decode_record

FAULTS = {
    "disk full": "database or disk is full",
    "read-only": "attempt to write a readonly database",
    "disk I/O error": "disk I/O error",
}
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "COMMIT")


class FailingConnection:
    """A real sqlite3 connection whose data-changing statements fail while `failing`."""

    def __init__(self, conn: sqlite3.Connection, message: str) -> None:
        self._conn = conn
        self.message = message
        self.failing = True
        self.refused = 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if self.failing and sql.lstrip().upper().startswith(_WRITES):
            self.refused += 1
            raise sqlite3.OperationalError(self.message)
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def break_writes(reg: Registry, message: str) -> FailingConnection:
    failing = FailingConnection(reg._db(), message)
    reg._conn = failing  # type: ignore[assignment]
    return failing


def snapshot(reg: Registry) -> tuple[object, ...]:
    return (
        [r.raw for r in reg.records(limit=10_000)],
        reg.peers(),
        reg.pins(),
        reg.services(),
        reg.get_meta("k"),
    )


SVC = LocalService("web", "127.0.0.1", 8080, ("bob",), False, False)
WRITE_PATHS = {
    "put_record": lambda r: r.put_record(1, b"\x02" * 32, "y", 5, 0, 2**40, b"new", "peer", 2.0),
    "purge_expired": lambda r: r.purge_expired(2**41),
    "upsert_peer": lambda r: r.upsert_peer("::1", 4243, 2.0),
    "forget_peer": lambda r: r.forget_peer("::1", 4242),
    "set_pin": lambda r: r.set_pin("carol", b"\x03" * 32, 2.0),
    "put_service": lambda r: r.put_service(LocalService("ssh", "127.0.0.1", 22, (), True, False)),
    "remove_service": lambda r: r.remove_service("web"),
    "set_meta": lambda r: r.set_meta("k", "new"),
}


@pytest.mark.parametrize("reason", FAULTS)
@pytest.mark.parametrize("path", WRITE_PATHS)
def test_every_write_path_fails_cleanly_and_recovers(
    tmp_path: Path, path: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Registry(tmp_path / "r.sqlite") as reg:
        reg.put_record(1, b"\x01" * 32, "x", 1, 0, 2**40, b"old", "peer", 1.0)
        reg.upsert_peer("::1", 4242, 1.0)
        reg.put_service(SVC)
        reg.set_meta("k", "old")
        before = snapshot(reg)
        failing = break_writes(reg, FAULTS[reason])
        caplog.set_level(logging.WARNING, "vx6.store")
        with pytest.raises(RegistryWriteError) as raised:
            WRITE_PATHS[path](reg)
        assert raised.value.reason == reason
        assert str(raised.value).endswith(f"cannot be written ({reason})")
        assert "\n" not in str(raised.value)
        assert reg.health.describe() == f"degraded: {reason}"
        assert snapshot(reg) == before  # nothing half-written
        failing.failing = False
        WRITE_PATHS[path](reg)  # space is back: the same write now lands
        assert reg.health.describe() == "ok"
        assert any("writable again" in r.getMessage() for r in caplog.records)
        assert failing.refused == 1


def test_degraded_logs_one_line_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    health = WriteHealth("r.sqlite", clock=lambda: clock[0])
    caplog.set_level(logging.WARNING, "vx6.store")
    for _ in range(10):  # ten minutes of a failed write every second
        for _ in range(60):
            health.failed("disk full")
            clock[0] += 1.0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 10 + 1, lines
    assert "599 writes failed" not in " ".join(lines)  # counts per interval, not forever
    assert health.failed_writes == 600
    health.succeeded()
    assert "writable again" in caplog.records[-1].getMessage()
    assert DEGRADED_LOG_EVERY == 60.0


# ------------------------------------------------------------------ a node on a broken registry
@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(Home(tmp_path / "home"), NodeConfig(name="full"))


def fresh_records(count: int, now: float) -> list[bytes]:
    body = ServiceBody(service="svc", modes=int(Mode.DIRECT), public=True)
    return [make_record(Identity(os.urandom(32)), body, 1, now, 3600)[1] for _ in range(count)]


@pytest.mark.parametrize("reason", FAULTS)
def test_background_writes_are_dropped_not_raised(
    node: Node, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        caplog.set_level(logging.WARNING)
        failing = break_writes(node.registry, FAULTS[reason])
        # Records from a peer or the DHT, our own republish, remembered contacts: none raise.
        assert node.records.accept(fresh_records(50, time.time()), source="peer [::1]:1") == []
        assert node.counters["records_dropped_registry"] == 50
        node.publisher.publish_all()
        assert node.publisher.unsaved
        contact = Contact(os.urandom(32), ("::1", 4242))
        node.dht.node.table.contacts = lambda: [contact]  # type: ignore[method-assign]
        failed = node.registry.health.failed_writes
        node.remember_contacts()
        assert node.registry.health.failed_writes == failed + 1  # tried, dropped
        assert node.registry.health.degraded == reason
        store_lines = [r for r in caplog.records if r.name == "vx6.store"]
        assert len(store_lines) == 1, [r.getMessage() for r in store_lines]

        failing.failing = False  # space is back
        fresh = fresh_records(3, time.time())
        assert node.records.accept(fresh, source="peer [::1]:1") == fresh
        assert node.registry.health.describe() == "ok"
        node.publisher.publish_all()
        assert not node.publisher.unsaved
        assert node.registry.count_records() >= 3 + 2  # theirs, our node record and claim

    asyncio.run(run())
    node.registry.close()


def test_commands_fail_with_one_line_and_state_matches_the_disk(node: Node) -> None:
    async def run() -> None:
        ops = node.ops
        ok = await ops.handle(
            {"op": "expose", "name": "web", "target": "127.0.0.1:1", "public": True}
        )
        assert ok["ok"], ok
        failing = break_writes(node.registry, FAULTS["disk full"])
        for request in (
            {"op": "expose", "name": "ssh", "target": "127.0.0.1:22", "public": True},
            {"op": "unexpose", "name": "web"},
        ):
            reply = await ops.handle(request)
            assert not reply["ok"]
            assert reply["error"].startswith(f"{request['op']} failed: registry ")
            assert reply["error"].endswith("cannot be written (disk full)")
            assert "\n" not in reply["error"]
        # Neither change happened, in memory or on disk: web is still exposed, ssh is not.
        assert set(node.owner.services) == {"web"}
        assert [s.name for s in node.registry.services()] == ["web"]
        status = await ops.handle({"op": "status"})
        assert status["registry"] == "degraded: disk full"
        failing.failing = False
        assert (await ops.handle({"op": "unexpose", "name": "web"}))["ok"]
        assert node.registry.services() == [] and not node.owner.services
        assert (await ops.handle({"op": "status"}))["registry"] == "ok"

    asyncio.run(run())
    node.registry.close()


# ------------------------------------------------------------------ the cap
def test_a_flood_of_fresh_keys_stays_under_the_caps(tmp_path: Path) -> None:
    limits = RegistryLimits(max_records=400, max_bytes=60_000, max_per_signer=8)
    now = time.time()
    own = Identity(os.urandom(32))
    pinned = Identity(os.urandom(32))
    with Registry(tmp_path / "r.sqlite", limits) as reg:
        keep = []
        for who, source in ((own, "self"), (pinned, "peer [::1]:9")):
            rec, raw = make_record(who, NameClaimBody(name="n", pow_nonce=0), 1, now, 3600)
            reg.put_record(
                rec.kind, rec.signer, rec.subject, 1, rec.issued, rec.expires, raw, source, now
            )
            keep.append((rec.kind, rec.signer, rec.subject))
        reg.set_pin("n", pinned.public, now)
        for i, raw in enumerate(fresh_records(1500, now)):
            rec = decode_record(raw)
            reg.put_record(
                rec.kind,
                rec.signer,
                rec.subject,
                rec.seq,
                rec.issued,
                rec.expires,
                raw,
                "dht",
                now + 1 + i,
            )
            assert reg.count_records() <= limits.max_records
        real = reg._fetchone("SELECT count(*), sum(length(raw)) FROM records")
        assert real[0] == reg.count_records() <= limits.max_records
        assert real[1] == reg.record_bytes() <= limits.max_bytes
        assert reg.evicted >= 1500 + 2 - limits.max_records
        for key in keep:
            assert reg.get_record(*key) is not None  # own and pinned records survive
        newest = reg.records_changed_since(now + 1500 - 10, 100)
        assert len(newest) == 10  # the newest strangers are kept, the oldest went first


def test_one_signer_cannot_hold_more_than_its_quota(tmp_path: Path) -> None:
    limits = RegistryLimits(max_per_signer=5)
    signer = b"\x07" * 32
    with Registry(tmp_path / "r.sqlite", limits) as reg:
        for i in range(5):
            assert reg.put_record(3, signer, f"s{i}", 1, 0, 2**40, b"r", "peer", 1.0)
        with pytest.raises(RecordRejected) as refused:
            reg.put_record(3, signer, "s5", 1, 0, 2**40, b"r", "peer", 1.0)
        assert refused.value.reason == "signer-full"
        assert reg.put_record(3, signer, "s0", 2, 0, 2**40, b"r2", "peer", 1.0)  # an update
        assert reg.put_record(3, signer, "s6", 1, 0, 2**40, b"r", "self", 1.0)  # our own
        assert reg.count_records() == 6


def test_default_caps_and_environment() -> None:
    assert RegistryLimits() == RegistryLimits(20_000, 32 << 20, 256, 2_000)
    env = {"VX6_REGISTRY_MAX_RECORDS": "50", "VX6_REGISTRY_MAX_BYTES": "4096"}
    assert RegistryLimits.from_env(env) == RegistryLimits(50, 4096, 256, 2_000)


def test_the_peers_table_is_capped(tmp_path: Path) -> None:
    with Registry(tmp_path / "r.sqlite", RegistryLimits(max_peers=10)) as reg:
        for port in range(1, 31):
            reg.upsert_peer("::1", port, float(port))
        assert sorted(p.port for p in reg.peers()) == list(range(21, 31))


@settings(max_examples=30)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 3), st.integers(1, 900)), max_size=80))
def test_running_totals_match_the_file(ops: list[tuple[int, int, int]]) -> None:
    limits = RegistryLimits(max_records=25, max_bytes=6_000, max_per_signer=4)
    with tempfile.TemporaryDirectory() as d, Registry(Path(d) / "r.sqlite", limits) as reg:
        for who, seq, size in ops:
            with contextlib.suppress(RecordRejected):
                reg.put_record(
                    1,
                    bytes([who]) * 32,
                    f"s{seq}",
                    seq,
                    0,
                    2**40 if size % 7 else 5,
                    b"x" * size,
                    "peer",
                    float(len(ops)),
                )
            if size % 11 == 0:
                reg.purge_expired(10)
            real = reg._fetchone("SELECT count(*), coalesce(sum(length(raw)), 0) FROM records")
            assert (real[0], real[1]) == (reg.count_records(), reg.record_bytes())
            assert real[0] <= limits.max_records and real[1] <= limits.max_bytes


# ------------------------------------------------------------------ dumps and backpressure
class PausingLink:
    """Stands in for a LinkProtocol whose write buffer fills after `room` records."""

    def __init__(self, key: bytes, room: int) -> None:
        self.peer_identity = key
        self.is_open = True
        self.paused = False
        self.room = room
        self.sent: list[bytes] = []

    def send_records(self, records: list[bytes]) -> bool:
        if self.paused:
            return False  # as LinkProtocol.send_records: nothing goes out while paused
        self.sent += records
        if len(self.sent) >= self.room:
            self.paused = True
        return True


def test_a_dump_stops_while_the_link_is_paused_and_goes_on_when_it_resumes(node: Node) -> None:

    now = time.time()
    for raw in fresh_records(300, now):
        node.records.accept([raw], source="dht")
    held = node.registry.count_records(now)
    link = PausingLink(b"\x05" * 32, room=2 * DUMP_BATCH)
    node.records.start_sync(link)  # type: ignore[arg-type]
    assert len(link.sent) == 2 * DUMP_BATCH  # stopped at the first batch that filled it
    node.records.continue_dump(link)  # type: ignore[arg-type]
    assert len(link.sent) == 2 * DUMP_BATCH  # still paused: nothing more
    link.paused, link.room = False, 10**9
    node.links.link_paused(link, False)  # type: ignore[arg-type]
    assert len(link.sent) == held <= SYNC_DUMP_LIMIT
    assert len(set(link.sent)) == held  # every record once
    assert node.records.neighbours[link].dump_left == 0  # type: ignore[index]
    node.registry.close()


def test_dumps_beyond_the_shared_budget_wait_for_a_later_reconcile(node: Node) -> None:

    node.records.accept(fresh_records(3, time.time()), source="dht")  # something to dump
    links = [PausingLink(os.urandom(32), room=10**9) for _ in range(int(DUMPS_BURST) + 5)]
    for link in links:
        node.records.start_sync(link)  # type: ignore[arg-type]
    served = [bool(link.sent) for link in links]
    assert served == [True] * int(DUMPS_BURST) + [False] * 5
    assert node.counters["sync_dumps_deferred"] == 5
    node.records.dumps.budget.tokens = 5.0  # as if 10 s had passed
    node.records.reconcile_once()
    assert all(link.sent for link in links)  # the deferred ones got theirs
    assert node.counters["sync_dumps_sent"] == int(DUMPS_BURST) + 5
    again = PausingLink(links[0].peer_identity, room=10**9)
    node.records.start_sync(again)  # type: ignore[arg-type]
    assert again.sent == [] and node.counters["sync_dumps_refused"] == 1
    node.registry.close()


def test_registry_limits_come_from_the_config_file_and_reach_the_registry(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.toml"
    assert load_config(path).registry_limits is None  # then VX6_REGISTRY_* or the defaults
    path.write_text("[registry_limits]\nmax_records = 50\nmax_per_signer = 4\n")
    cfg = load_config(path)
    assert cfg.registry_limits == RegistryLimits(max_records=50, max_per_signer=4)
    assert cfg.with_flags(NodeConfig()).registry_limits == cfg.registry_limits
    for bad in ("max_records = 0", "max_records = true", "max_recs = 5"):
        path.write_text(f"[registry_limits]\n{bad}\n")
        with pytest.raises(UsageError, match="registry_limits"):
            load_config(path)
    with Registry(tmp_path / "r.sqlite", cfg.registry_limits) as reg:
        assert reg.limits.max_records == 50
