"""A full disk degrades a real node and never ends it, and a flood of valid records
cannot grow its registry past the cap (issue: hardening, finding 6).

A node's home is a tiny tmpfs (2 MiB, mounted by the test, root only). Once the disk is
filled, records pushed by peers are dropped (counted, a line or two in the log, no
traceback), `vx6 expose` and `vx6 unexpose` fail with one line and change nothing,
`vx6 status` says the registry is degraded, and the node survives a restart. When space
comes back, the next write lands and the node says "writable again".
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import knows_owner
from kit.net import counters, push_records, stderr_line
from vx6.app.localnet import LocalNet, LocalNode, wait_for
from vx6.core.records import make_record
from vx6.crypto.keys import Identity
from vx6.wire.records import Mode, ServiceBody

pytestmark = pytest.mark.timeout(180)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tiny tmpfs")


@contextlib.contextmanager
def tiny_disk(where: Path, size: str = "2m") -> Iterator[Path]:
    where.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(mnt: Path) -> Path:
    """Write a file until the file system has no block left; returns it."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 16, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


def fresh_records(count: int) -> list[bytes]:
    body = ServiceBody(service="flood", modes=int(Mode.DIRECT), public=True)
    now = time.time()
    return [make_record(Identity(os.urandom(32)), body, 1, now, 3600)[1] for _ in range(count)]


def registry_state(node: LocalNode) -> str:
    return str(node.call("status")["registry"])


def degraded_by_pushes(node: LocalNode) -> bool:
    push_records(node, fresh_records(10))
    return registry_state(node) == "degraded: disk full"


def registry_lines(node: LocalNode) -> list[str]:
    return [ln for ln in node.log_text().splitlines() if "vx6.store" in ln]


@root_only
def test_a_full_disk_degrades_the_node_and_space_brings_it_back(tmp_path: Path) -> None:
    base = tmp_path / "net"
    with tiny_disk(base / "full") as mnt, LocalNet(base=base) as net:
        hub = net.start("hub")
        full = net.start("full", peers=(hub.listen,))
        wait_for(lambda: knows_owner(hub, "full"), 15, "hub to learn full's records")
        assert full.cli("expose", "web", "--target", "127.0.0.1:1", "--public").returncode == 0
        filler = fill(mnt)

        wait_for(lambda: degraded_by_pushes(full), 30, "the registry to report the full disk")
        shown = full.cli("status")
        assert shown.returncode == 0 and b"(registry degraded: disk full)" in shown.stdout
        # Commands that change state fail with one line and change nothing.
        refused = full.cli("expose", "ssh", "--target", "127.0.0.1:22", "--public")
        assert refused.returncode == 1
        assert "disk" in stderr_line(refused)
        refused = full.cli("unexpose", "web")
        assert refused.returncode == 1
        assert "disk" in stderr_line(refused)
        assert [s["name"] for s in full.call("services")["services"]] == ["web"]

        # Records from peers are dropped; the node, its links and its log stay calm.
        before = counters(full).get("records_dropped_registry", 0)
        for _ in range(10):
            push_records(full, fresh_records(20))
        assert counters(full)["records_dropped_registry"] >= before + 200
        assert full.process.poll() is None
        assert full.call("status")["sync_links"] >= 1
        assert len(registry_lines(full)) <= 2, registry_lines(full)
        assert "Traceback" not in full.log_text()

        # A restart on the full disk comes up (degraded), instead of exiting at once.
        full = net.restart("full", peers=(hub.listen,))
        assert full.process.poll() is None
        wait_for(lambda: degraded_by_pushes(full), 30, "the restarted node to see the full disk")
        wait_for(lambda: full.call("status")["sync_links"] >= 1, 15, "full to sync with hub")
        assert [s["name"] for s in full.call("services")["services"]] == ["web"]

        # Space comes back: the next write lands, and commands work again.
        filler.unlink()
        accepted = counters(full).get("records_accepted", 0)
        push_records(full, fresh_records(5))
        assert counters(full)["records_accepted"] == accepted + 5
        assert registry_state(full) == "ok"
        assert any("writable again" in ln for ln in registry_lines(full))
        assert full.cli("unexpose", "web").returncode == 0
        assert full.call("services")["services"] == []
        assert "Traceback" not in full.log_text()


def test_a_flood_of_fresh_keys_cannot_grow_the_registry_past_its_cap(tmp_path: Path) -> None:
    cap = 150
    with LocalNet(base=tmp_path) as net:
        node = net.start("capped", env={"VX6_REGISTRY_MAX_RECORDS": str(cap)})
        node.call("expose", name="own", target="127.0.0.1:1", public=True)
        for _ in range(8):  # 480 valid records, every one from a fresh key
            push_records(node, fresh_records(60))
        status = node.call("status")
        assert status["records"] <= cap
        assert status["registry_evicted"] >= 480 + 3 - cap
        assert counters(node)["records_accepted"] == 480  # all valid, all taken in turn
        own = node.call("resolve", address=f"{node.key}.own")["records"]
        assert {r["kind"] for r in own} >= {"node", "name_claim", "service"}  # ours survive
        assert node.process.poll() is None
