"""A node started before its bootstrap or sync peer keeps trying (vx6.node.peers): once
the peer appears, the DHT table fills and names resolve (bootstrap), or the sync link
comes up and records arrive (--peer). `vx6 status` shows each keeper's next retry.

The retry schedule starts small here (`peer_retry_start` in config.toml) so the tests
are quick; nothing waits on a sleep, only on bounded polling of `status`."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from vx6.app.localnet import LocalNet, LocalNode, wait_for

pytestmark = pytest.mark.timeout(120)

QUICK_RETRY = "peer_retry_start = 0.2\npeer_retry_max = 1.0\n"


def unused_port() -> int:
    """A loopback port free for both TCP and UDP now (a node listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


def quick_home(local: LocalNet, name: str) -> None:
    home: Path = local.base / name
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home / "config.toml").write_text(QUICK_RETRY)


def keeper_rows(node: LocalNode, key: str) -> list[dict[str, Any]]:
    return list(node.call("status")[key])


def dht_stats(node: LocalNode) -> dict[str, int]:
    return dict(node.call("status")["dht"]["stats"])


def test_bootstrap_is_retried_until_the_peer_appears() -> None:
    with LocalNet() as local:
        port = unused_port()
        quick_home(local, "early")
        early = local.start(
            "early", listen="127.0.0.1:0", extra=("--bootstrap", f"127.0.0.1:{port}")
        )
        # Nobody listens yet: the first ping times out unanswered (the DHT counts it).
        wait_for(lambda: dht_stats(early).get("timeout", 0) >= 1, 30, "an unanswered ping")
        late = local.start("late", listen=f"127.0.0.1:{port}")
        wait_for(lambda: early.call("status")["dht"]["table_size"] > 0, 30, "early's DHT contacts")
        wait_for(lambda: early.try_call("resolve", address="late.x").get("ok"), 30, "resolve")
        assert early.call("resolve", address="late.x")["key"] == late.key
        (row,) = keeper_rows(early, "bootstrap")
        assert row["state"] == "answered" and row["attempts"] == 0


def test_sync_peer_is_redialled_until_it_appears() -> None:
    with LocalNet() as local:
        port = unused_port()
        quick_home(local, "early")
        early = local.start("early", listen="127.0.0.1:0", peers=(f"127.0.0.1:{port}",))
        wait_for(lambda: keeper_rows(early, "sync_peers")[0]["attempts"] >= 2, 30, "a redial")
        late = local.start("late", listen=f"127.0.0.1:{port}")
        wait_for(lambda: early.call("status")["sync_links"] > 0, 30, "early's sync link")
        (row,) = keeper_rows(early, "sync_peers")
        assert row["state"] == "connected" and row["next_retry_s"] is None
        # The link syncs: late's name claim reaches early's registry.
        assert early.call("resolve", address="late.x")["key"] == late.key


def test_status_shows_the_next_retry_of_an_unreachable_peer() -> None:
    with LocalNet() as local:
        port = unused_port()
        node = local.start(
            "lonely",
            listen="127.0.0.1:0",
            peers=(f"127.0.0.1:{port}",),
            extra=("--bootstrap", f"127.0.0.1:{port}"),
        )
        rows = wait_for(
            lambda: [r for r in keeper_rows(node, "sync_peers") if r["attempts"] >= 1],
            30,
            "a failed dial",
        )
        assert rows[0]["state"] == "retrying"
        assert rows[0]["next_retry_s"] is not None and rows[0]["next_retry_s"] >= 0
        assert rows[0]["last_error"]
        boot = keeper_rows(node, "bootstrap")
        assert boot[0]["address"] == f"127.0.0.1:{port}"
        assert boot[0]["state"] == "retrying" and boot[0]["next_retry_s"] is not None
        out = node.cli("status")
        assert out.returncode == 0, out.stderr
        text = out.stdout.decode()
        assert "bootstrap:" in text and "sync peers:" in text
        assert "NEXT_RETRY_S" in text and f"127.0.0.1:{port}" in text
