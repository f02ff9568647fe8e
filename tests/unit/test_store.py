from __future__ import annotations

import hashlib
import os
import random
import select
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import vx6
from vx6.errors import VX6Error
from vx6.store import registry as store
from vx6.store import schema as store_schema
from vx6.store.registry import LocalService, Registry, RegistryError

SIGNER_A = b"\xaa" * 32
SIGNER_B = b"\xbb" * 32
FAR_FUTURE = 2**40


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(tmp_path / "registry.db")
    yield registry
    registry.close()


def put(
    reg: Registry,
    seq: int,
    *,
    kind: int = 1,
    signer: bytes = SIGNER_A,
    subject: str = "alice",
    expires: int = FAR_FUTURE,
    raw: bytes | None = None,
    now: float = 100.0,
) -> bool:
    return reg.put_record(
        kind,
        signer,
        subject,
        seq,
        10,
        expires,
        raw if raw is not None else b"raw%d" % seq,
        "peer:1",
        now,
    )


# ------------------------------------------------------------------ records


def test_put_new_record_then_read_back(reg: Registry) -> None:
    assert reg.held_seq(1, SIGNER_A, "alice") is None
    assert reg.get_record(1, SIGNER_A, "alice") is None
    assert put(reg, 5, raw=b"\x00\xffbody", now=123.5)
    record = reg.get_record(1, SIGNER_A, "alice")
    assert record == store.StoredRecord(
        1, SIGNER_A, "alice", 5, 10, FAR_FUTURE, b"\x00\xffbody", "peer:1", 123.5
    )
    assert isinstance(record.raw, bytes) and isinstance(record.signer, bytes)
    assert reg.held_seq(1, SIGNER_A, "alice") == 5


def test_higher_seq_replaces_lower_and_equal_are_refused(reg: Registry) -> None:
    assert put(reg, 5, raw=b"five")
    assert not put(reg, 5, raw=b"other five")
    assert not put(reg, 4, raw=b"four")
    record = reg.get_record(1, SIGNER_A, "alice")
    assert record is not None and (record.seq, record.raw) == (5, b"five")
    assert put(reg, 6, raw=b"six", now=200.0)
    record = reg.get_record(1, SIGNER_A, "alice")
    assert record is not None and (record.seq, record.raw, record.received_at) == (6, b"six", 200.0)
    assert reg.count_records() == 1


def test_key_is_kind_signer_subject(reg: Registry) -> None:
    assert put(reg, 5)
    assert put(reg, 1, kind=2)
    assert put(reg, 1, signer=SIGNER_B)
    assert put(reg, 1, subject="bob")
    assert reg.count_records() == 4
    assert reg.held_seq(1, SIGNER_A, "alice") == 5


def test_seq_range_is_checked(reg: Registry) -> None:
    assert put(reg, 2**63 - 1)
    with pytest.raises(RegistryError):
        put(reg, 2**63)
    with pytest.raises(VX6Error):
        reg.put_record(1, SIGNER_A, "x", 1, 0, 2**64, b"", "s", 0.0)


def test_records_filters_and_expiry(reg: Registry) -> None:
    put(reg, 1, subject="alice.ssh", kind=3, expires=50)
    put(reg, 1, subject="alice.ssh", kind=3, signer=SIGNER_B, expires=500)
    put(reg, 1, subject="alice", kind=2, expires=500)
    put(reg, 1, subject="bob", kind=2, signer=SIGNER_B, expires=500)
    assert len(reg.records()) == 4
    assert [r.signer for r in reg.records(subject="alice.ssh")] == [SIGNER_A, SIGNER_B]
    assert [r.signer for r in reg.records(subject="alice.ssh", now=50)] == [SIGNER_B]
    assert [r.subject for r in reg.records(kind=2)] == ["alice", "bob"]
    assert [r.subject for r in reg.records(signer=SIGNER_B)] == ["bob", "alice.ssh"]
    assert [r.subject for r in reg.records(kind=2, signer=SIGNER_B)] == ["bob"]
    assert len(reg.records(limit=2)) == 2
    assert reg.count_records(now=49) == 4
    assert reg.count_records(now=50) == 3
    assert reg.purge_expired(now=50) == 1
    assert reg.count_records() == 3
    assert reg.purge_expired(now=50) == 0
    assert reg.purge_expired(now=10_000) == 3
    assert reg.records() == []
    with pytest.raises(RegistryError):
        reg.records(limit=-1)


def test_records_changed_since_orders_by_received_at(reg: Registry) -> None:
    put(reg, 1, subject="a", now=30.0)
    put(reg, 1, subject="b", now=10.0)
    put(reg, 1, subject="c", now=20.0)
    assert [r.subject for r in reg.records_changed_since(0.0, 10)] == ["b", "c", "a"]
    assert [r.subject for r in reg.records_changed_since(10.0, 10)] == ["c", "a"]
    put(reg, 2, subject="b", now=40.0)  # a replacement counts as a change
    assert [r.subject for r in reg.records_changed_since(20.0, 10)] == ["a", "b"]
    assert [r.subject for r in reg.records_changed_since(0.0, 1)] == ["c"]


def test_records_changed_since_never_splits_a_timestamp(reg: Registry) -> None:
    for name in "abcde":
        put(reg, 1, subject=name, now=10.0)
    put(reg, 1, subject="late", now=11.0)
    seen: list[str] = []
    cursor = 0.0
    while page := reg.records_changed_since(cursor, 2):
        seen += [r.subject for r in page]
        cursor = page[-1].received_at
    assert sorted(seen) == ["a", "b", "c", "d", "e", "late"]
    assert len(seen) == 6


def test_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with Registry(path) as reg:
        put(reg, 7, raw=b"seven")
        reg.upsert_peer("2001:db8::1", 4242, now=5.0, key=SIGNER_B, rtt_ms=3.5)
        reg.set_pin("alice", SIGNER_A, now=6.0)
        reg.put_service(LocalService("ssh", "127.0.0.1", 22, ("k1", "k2"), False, False))
        reg.set_meta("last_seq", "41")
    with Registry(path) as reg:
        record = reg.get_record(1, SIGNER_A, "alice")
        assert record is not None and record.raw == b"seven"
        assert not put(reg, 7)
        assert [(p.host, p.port, p.key) for p in reg.peers()] == [("2001:db8::1", 4242, SIGNER_B)]
        assert reg.pins() == [("alice", SIGNER_A, 6.0)]
        assert reg.services() == [LocalService("ssh", "127.0.0.1", 22, ("k1", "k2"), False, False)]
        assert reg.get_meta("last_seq") == "41"
        assert reg.integrity_ok()


def test_closed_registry_raises_typed_error(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.db")
    reg.close()
    reg.close()
    with pytest.raises(RegistryError):
        reg.held_seq(1, SIGNER_A, "alice")
    with pytest.raises(RegistryError):
        put(reg, 1)


def test_two_registries_share_a_file(tmp_path: Path) -> None:
    with Registry(tmp_path / "r.db") as first, Registry(tmp_path / "r.db") as second:
        assert put(first, 3)
        assert second.held_seq(1, SIGNER_A, "alice") == 3
        assert not put(second, 3)
        assert put(second, 4)
        assert first.held_seq(1, SIGNER_A, "alice") == 4


def test_in_memory_registry_works() -> None:
    with Registry(":memory:") as reg:
        assert put(reg, 1)
        assert reg.integrity_ok()


# ---------------------------------------------------- peers, pins, services, meta


def test_peers_upsert_learns_key_and_orders_by_last_seen(reg: Registry) -> None:
    reg.upsert_peer("192.0.2.1", 4242, now=10.0)
    reg.upsert_peer("2001:db8::2", 4242, now=20.0, rtt_ms=12.0)
    reg.upsert_peer("192.0.2.1", 4242, now=30.0, key=SIGNER_A)
    reg.upsert_peer("192.0.2.1", 4242, now=25.0)  # late report neither rewinds nor forgets
    peers = reg.peers()
    assert [(p.host, p.last_seen) for p in peers] == [("192.0.2.1", 30.0), ("2001:db8::2", 20.0)]
    assert peers[0].key == SIGNER_A and peers[0].first_seen == 10.0 and peers[0].rtt_ms is None
    assert peers[1].key is None and peers[1].rtt_ms == 12.0
    assert len(reg.peers(limit=1)) == 1
    reg.forget_peer("192.0.2.1", 4242)
    assert [p.host for p in reg.peers()] == ["2001:db8::2"]
    with pytest.raises(RegistryError):
        reg.upsert_peer("192.0.2.1", 70000, now=1.0)


def test_pins_insert_or_replace(reg: Registry) -> None:
    assert reg.get_pin("alice") is None
    reg.set_pin("alice", SIGNER_A, now=1.0)
    reg.set_pin("bob", SIGNER_B, now=2.0)
    reg.set_pin("alice", SIGNER_B, now=3.0)
    assert reg.get_pin("alice") == SIGNER_B
    assert reg.pins() == [("alice", SIGNER_B, 3.0), ("bob", SIGNER_B, 2.0)]


def test_services_put_replace_remove(reg: Registry) -> None:
    web = LocalService("web", "127.0.0.1", 8080, (), True, False)
    reg.put_service(LocalService("ssh", "127.0.0.1", 22, ("a",), False, False))
    reg.put_service(web)
    reg.put_service(LocalService("ssh", "::1", 2222, ("a", "b"), False, True))
    assert reg.services() == [LocalService("ssh", "::1", 2222, ("a", "b"), False, True), web]
    assert reg.remove_service("ssh")
    assert not reg.remove_service("ssh")
    assert reg.services() == [web]
    with pytest.raises(RegistryError):
        reg.put_service(LocalService("bad", "127.0.0.1", 0, (), False, False))


def test_meta_roundtrip_and_reserved_key(reg: Registry) -> None:
    assert reg.get_meta("node.seq") is None
    reg.set_meta("node.seq", "1")
    reg.set_meta("node.seq", "2")
    assert reg.get_meta("node.seq") == "2"
    with pytest.raises(RegistryError):
        reg.set_meta("schema_version", "99")


# ------------------------------------------------------------ schema, file


def test_schema_version_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with Registry(path) as reg:
        assert reg.schema_version == len(store_schema.MIGRATIONS)
    with sqlite3.connect(path) as conn:
        (value,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert int(value) == len(store_schema.MIGRATIONS)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    Registry(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'",
            (len(store_schema.MIGRATIONS) + 1,),
        )
    conn.close()
    with pytest.raises(RegistryError, match="newer"):
        Registry(path)


def test_migrations_apply_in_order_and_a_failed_one_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.db"
    Registry(path).close()
    base = len(store_schema.MIGRATIONS)
    broken = ("CREATE TABLE half_done (x)", "THIS IS NOT SQL")
    monkeypatch.setattr(
        store_schema, "MIGRATIONS", (*store_schema.MIGRATIONS, ("CREATE TABLE extra (x)",), broken)
    )
    with pytest.raises(RegistryError):
        Registry(path)
    monkeypatch.setattr(store_schema, "MIGRATIONS", store_schema.MIGRATIONS[: base + 1])
    with Registry(path) as reg:
        assert reg.schema_version == base + 1  # the good step stayed applied
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "extra" in tables and "half_done" not in tables


def test_garbage_file_is_a_registry_error(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryError):
        Registry(path)


def test_file_mode_is_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0o002)
    try:
        path = tmp_path / "r.db"
        with Registry(path) as reg:
            put(reg, 1)
            for suffix in ("", "-wal", "-shm"):
                mode = stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode)
                assert mode == 0o600, (suffix, oct(mode))
        loose = tmp_path / "loose.db"
        loose.touch(mode=0o644)
        os.chmod(loose, 0o644)
        Registry(loose).close()
        assert stat.S_IMODE(os.stat(loose).st_mode) == 0o600
    finally:
        os.umask(old_umask)


# ------------------------------------------------------------ property test


KEYS = [
    (kind, signer, subject)
    for kind in (1, 2)
    for signer in (SIGNER_A, SIGNER_B)
    for subject in ("alice", "bob")
]


class HeldSeqIsTheMaximum(RuleBasedStateMachine):
    """The seq held per key is the max ever offered (since the key was last purged)."""

    @initialize()
    def open_registry(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="vx6-store-")
        self.path = os.path.join(self.directory, "r.db")
        self.reg = Registry(self.path)
        self.model: dict[tuple[int, bytes, str], tuple[int, int]] = {}

    @rule(
        key=st.sampled_from(KEYS),
        seq=st.integers(0, 20) | st.integers(0, 2**63 - 1),
        expires=st.integers(0, 100),
    )
    def offer(self, key: tuple[int, bytes, str], seq: int, expires: int) -> None:
        held = self.model.get(key)
        stored = self.reg.put_record(
            *key, seq, 0, expires, hashlib.sha256(b"%d" % seq).digest(), "test", 0.0
        )
        assert stored == (held is None or seq > held[0])
        if stored:
            self.model[key] = (seq, expires)

    @rule(now=st.integers(0, 100))
    def purge(self, now: int) -> None:
        doomed = [key for key, (_, expires) in self.model.items() if expires <= now]
        assert self.reg.purge_expired(now) == len(doomed)
        for key in doomed:
            del self.model[key]

    @rule()
    def reopen(self) -> None:
        self.reg.close()
        self.reg = Registry(self.path)

    @invariant()
    def held_matches_model(self) -> None:
        if not hasattr(self, "reg"):
            return
        for key in KEYS:
            expected = self.model.get(key)
            assert self.reg.held_seq(*key) == (None if expected is None else expected[0])
            record = self.reg.get_record(*key)
            if expected is not None:
                assert record is not None
                assert record.raw == hashlib.sha256(b"%d" % expected[0]).digest()

    def teardown(self) -> None:
        if hasattr(self, "reg"):
            self.reg.close()
            shutil.rmtree(self.directory, ignore_errors=True)


TestHeldSeqIsTheMaximum = HeldSeqIsTheMaximum.TestCase
TestHeldSeqIsTheMaximum.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ------------------------------------------------------------ crash safety

# The writer child: per seq, a fresh record "n<seq>" then a bump of the single "head"
# record, each in its own transaction; it reports a seq only after both committed.
WRITER = """
import hashlib, sys
from vx6.store.registry import Registry
from vx6.store.bounds import RegistryLimits
# Crash safety, not the caps: one signer writes thousands of rows here.
unbounded = RegistryLimits(max_records=10**9, max_bytes=2**60, max_per_signer=10**9)
reg = Registry(sys.argv[1], unbounded)
signer = b"\\x01" * 32
seq = (reg.held_seq(2, signer, "head") or 0) + 1
while True:
    raw = hashlib.sha256(seq.to_bytes(8, "big")).digest() * 100
    reg.put_record(1, signer, f"n{seq}", seq, 0, 2**40, raw, "writer", float(seq))
    reg.put_record(2, signer, "head", seq, 0, 2**40, raw, "writer", float(seq))
    print(seq, flush=True)
    seq += 1
"""
WRITER_SIGNER = b"\x01" * 32


def expected_raw(seq: int) -> bytes:
    # 3200 bytes: larger than a page fragment, so a record spans overflow pages.
    return hashlib.sha256(seq.to_bytes(8, "big")).digest() * 100


def wait_for_progress(proc: subprocess.Popen[bytes], target: int, deadline: float) -> int:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = b""
    reported = 0
    while reported < target:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"writer stuck at {reported}, wanted {target}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        assert chunk, f"writer exited early (rc={proc.poll()})"
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if lines:
            reported = int(lines[-1])
    return reported


def check_after_crash(path: Path, reported: int) -> int:
    with Registry(path) as reg:
        assert reg.integrity_ok()
        numbered = reg.records(kind=1, limit=1_000_000)
        seqs = sorted(r.seq for r in numbered)
        assert seqs == list(range(1, len(seqs) + 1)), "seqs are not a prefix"
        assert len(seqs) >= reported, "a committed record was lost"
        for record in numbered:
            assert record.subject == f"n{record.seq}"
            assert record.raw == expected_raw(record.seq), f"torn record {record.seq}"
        head = reg.get_record(2, WRITER_SIGNER, "head")
        assert head is not None and head.seq in (len(seqs) - 1, len(seqs))
        assert head.raw == expected_raw(head.seq)
        return len(seqs)


def test_kill_9_leaves_a_consistent_registry(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    print(f"kill -9 test seed {seed}")
    env = dict(os.environ, PYTHONPATH=str(Path(vx6.__file__).resolve().parents[1]))
    written = 0
    test_deadline = time.monotonic() + 20
    for _round in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            target = written + rng.randint(1, 400)
            reported = wait_for_progress(proc, target, min(test_deadline, time.monotonic() + 10))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        assert proc.returncode == -signal.SIGKILL
        written = check_after_crash(path, reported)
        print(f"round {_round}: killed after >= {reported}, found {written} intact")


# ------------------------------------------------------------ micro-check


def test_get_record_latency_micro_check(reg: Registry) -> None:
    for i in range(5000):
        put(reg, 1, subject=f"user{i}.ssh", kind=3, signer=i.to_bytes(32, "big"))
    probes = [(3, i.to_bytes(32, "big"), f"user{i}.ssh") for i in range(0, 5000, 7)]
    start = time.perf_counter()
    for key in probes:
        assert reg.get_record(*key) is not None
    per_lookup = (time.perf_counter() - start) / len(probes)
    start = time.perf_counter()
    for _, _, subject in probes:
        assert reg.records(subject=subject, kind=3, now=50.0)
    per_resolve = (time.perf_counter() - start) / len(probes)
    print(f"get_record: {per_lookup * 1e6:.1f} us; records(subject=): {per_resolve * 1e6:.1f} us")
