"""Attacks 1-6 of bench_hostile.py: links, sockets and records (see docs/security.md,
"The hostile suite"). Each is `async def attack(target, params) -> achieved`, bounded by
the counts in `params` and by `params["seconds"]`; it returns counters of what it did
and what the victim did to it (links closed, dials refused), never raising for a
victim that fights back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from _attack_kit import (
    Budget,
    NullSink,
    Target,
    backlog,
    bounded_gather,
    close_all,
    fresh_identity,
    open_link,
    send_plain,
)

from vx6.core.records import make_record
from vx6.crypto.keys import Identity
from vx6.net.link import LinkProtocol
from vx6.wire import frames as fr
from vx6.wire.records import Endpoint, NodeBody

MAX_BACKLOG = 4 * 1024 * 1024  # what an attacker queues at most on its own side
EMPTY_RECORDS = bytes([fr.FrameType.RECORDS, 0])  # 2 bytes: "let us sync"
RECONNECT_PAUSE = 0.1  # a raw connection the victim closed is reopened after this


def _ping(token: int) -> bytes:
    return fr.encode_frame(fr.Ping(token & 0xFFFFFFFFFFFFFFFF))


def _abort(links: list[LinkProtocol | None]) -> None:
    """The links die (no CLOSE frame): what a crashed or vanished peer looks like."""
    for link in links:
        if link is not None and link.transport is not None:
            link.transport.abort()


async def _sleep(budget: Budget, seconds: float) -> None:
    await asyncio.sleep(min(seconds, budget.left()))


# ---------------------------------------------------------------- 1
async def stream_setup(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`links` links each send `opens` OPENs to a public service whose target is slow
    to accept; after `hold` seconds the links die. `rounds` times, within `seconds`."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    for _ in range(p["rounds"]):
        if budget.over:
            break
        links = await bounded_gather([open_link(t, stats) for _ in range(p["links"])], 8)
        live = [link for link in links if isinstance(link, LinkProtocol)]
        for link in live:
            for _ in range(p["opens"]):
                try:
                    link.open_stream(t.services["slow"], 0, NullSink(stats))
                    stats["opens"] += 1
                except Exception:
                    stats["open_refused_locally"] += 1
                    break
        await _sleep(budget, p["hold"])
        _abort(list(live))
        stats["rounds"] += 1
        await _sleep(budget, 0.2)
    return dict(stats)


# ---------------------------------------------------------------- 2
async def _keep_link(
    t: Target, p: dict[str, Any], budget: Budget, gate: asyncio.Semaphore, stats: Counter[str]
) -> None:
    """One slot of the link table: a link from a fresh key, PINGed every `ping_every`
    seconds; replaced (fresh key) when the victim closes it."""
    token = 0
    while not budget.over:
        async with gate:
            link = await open_link(t, stats, timeout=min(5.0, budget.left() + 0.1))
        if link is None:
            await _sleep(budget, 1.0)
            continue
        while link.is_open and not budget.over:
            await _sleep(budget, p["ping_every"])
            token += 1
            send_plain(link, _ping(token))
        close_all([link])


async def _slowloris(t: Target, budget: Budget, trickle: bool, stats: Counter[str]) -> None:
    """A raw TCP connection without any key: silent, or one byte a second of a
    handshake that never completes; reconnects when the victim closes it."""
    while not budget.over:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(t.host, t.port), min(5.0, budget.left() + 0.1)
            )
        except (OSError, TimeoutError):
            stats["slowloris_connect_failed"] += 1
            await _sleep(budget, 0.5)
            continue
        stats["slowloris_connects"] += 1
        if trickle:
            writer.write(b"\x00\xff")  # the length of a first handshake message
        while not budget.over:
            try:
                if await asyncio.wait_for(reader.read(1), min(1.0, budget.left() + 0.01)) == b"":
                    stats["slowloris_closed_by_victim"] += 1
                    break
            except TimeoutError:
                if trickle:
                    writer.write(os.urandom(1))
            except OSError:
                stats["slowloris_closed_by_victim"] += 1
                break
        writer.close()
        await _sleep(budget, RECONNECT_PAUSE)


async def link_fill(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`links` links from fresh keys (the node's link cap), each kept alive by a PING
    every `ping_every` s, plus `slowloris` keyless raw connections; for `seconds`."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    gate = asyncio.Semaphore(p["concurrency"])  # dials at once: handshakes cost CPU

    jobs: list[Awaitable[None]] = [_keep_link(t, p, budget, gate, stats) for _ in range(p["links"])]
    jobs += [_slowloris(t, budget, i % 2 == 1, stats) for i in range(p["slowloris"])]
    await asyncio.gather(*jobs, return_exceptions=True)
    return dict(stats)


# ---------------------------------------------------------------- 3
async def _never_reading(
    t: Target,
    budget: Budget,
    stats: Counter[str],
    frames: Callable[[int], list[bytes]],
    keys: Any = None,
) -> None:
    """A link that writes `frames(n)` as fast as the victim takes them (at most
    MAX_BACKLOG queued here) and never reads; replaced when the victim closes it."""
    n = 0
    while not budget.over:
        link = await open_link(t, stats, keys=keys, timeout=min(5.0, budget.left() + 0.1))
        if link is None:
            await _sleep(budget, 0.2)
            continue
        assert link.transport is not None
        link.transport.pause_reading()  # never read: the victim's replies pile up
        while not budget.over and not link.transport.is_closing():
            if backlog(link) > MAX_BACKLOG:
                await asyncio.sleep(0.005)
                continue
            batch = frames(n)
            for plain in batch:
                link.core._emit_frame(plain)
            link._write_out()
            n += len(batch)
            stats["frames_sent"] += len(batch)
            await asyncio.sleep(0)
        stats["bytes_sent"] += link.core.bytes_out
        with contextlib.suppress(Exception):
            link.transport.abort()


async def loop_stall(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """One authenticated link (one key) sends PINGs as fast as it can, never reads."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    started = time.monotonic()
    keys = fresh_identity()
    await _never_reading(t, budget, stats, lambda n: [_ping(n + i) for i in range(200)], keys)
    stats["send_rate_kB_s"] = int(stats["bytes_sent"] / 1000 / (time.monotonic() - started))
    return dict(stats)


# ---------------------------------------------------------------- 4
async def never_reading(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`links` links send requests that produce replies (PING -> PONG, OPEN of an
    unknown service -> OPEN_FAIL, RECORDS -> the sync dump) and never read."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])

    def requests(n: int) -> list[bytes]:
        sid = (2 * n + 1) & 0x7FFFFFFF
        return [
            _ping(n),
            fr.encode_frame(fr.Open(sid | 1, f"nosuch{n % 1000}", 0)),
            EMPTY_RECORDS,
        ]

    await asyncio.gather(
        *(_never_reading(t, budget, stats, requests) for _ in range(p["links"])),
        return_exceptions=True,
    )
    return dict(stats)


# ---------------------------------------------------------------- 5
async def idle_sockets(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`count` TCP connections that send nothing, held for `seconds` (reconnected when
    the victim closes them)."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    gate = asyncio.Semaphore(p["concurrency"])

    async def hold() -> None:
        while not budget.over:
            async with gate:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(t.host, t.port), min(5.0, budget.left() + 0.1)
                    )
                except (OSError, TimeoutError):
                    stats["connect_failed"] += 1
                    await _sleep(budget, 0.5)
                    continue
            stats["connects"] += 1
            try:
                if await asyncio.wait_for(reader.read(1), budget.left() + 0.01) == b"":
                    stats["closed_by_victim"] += 1
            except (TimeoutError, OSError):
                pass
            writer.close()
            await _sleep(budget, RECONNECT_PAUSE)

    await asyncio.gather(*(hold() for _ in range(p["count"])), return_exceptions=True)
    return dict(stats)


# ---------------------------------------------------------------- 6
def node_records(count: int) -> list[bytes]:
    """`count` valid node records, each signed by a fresh key."""
    now = time.time()
    out = []
    for i in range(count):
        body = NodeBody(os.urandom(32), os.urandom(32), (Endpoint("::1", 1024 + i % 60000),), 0)
        out.append(make_record(Identity(os.urandom(32)), body, 1, now, 3600)[1])
    return out


async def push_records(
    t: Target, total: int, per_link: int, budget: Budget, stats: Counter[str]
) -> None:
    """Push `total` fresh records, `per_link` per link (each a new sync neighbour
    with a fresh burst), RECORDS frames of 60, as fast as the victim reads them."""
    sent = 0
    while sent < total and not budget.over:
        link = await open_link(t, stats, timeout=min(5.0, budget.left() + 0.1))
        if link is None:
            await _sleep(budget, 0.5)
            continue
        on_link = 0
        while on_link < per_link and sent < total and link.is_open and not budget.over:
            if backlog(link) > MAX_BACKLOG // 4:
                await asyncio.sleep(0.01)
                continue
            batch = node_records(min(fr.MAX_RECORDS_PER_FRAME, total - sent))
            link.send_records(batch)
            sent += len(batch)
            on_link += len(batch)
            stats["records_sent"] += len(batch)
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        close_all([link])


async def registry_flood(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`records` valid records from fresh keys over RECORDS frames on `links` links at
    a time, plus `dht_stores` of them by DHT STORE; for at most `seconds`."""
    from _attacks_more import DhtClient

    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    share = p["records"] // p["links"]
    jobs = [push_records(t, share, p["per_link"], budget, stats) for _ in range(p["links"])]
    sender = DhtClient(t)
    jobs.append(sender.store_many(node_records(p["dht_stores"]), budget, stats))
    await asyncio.gather(*jobs, return_exceptions=True)
    sender.close()
    return dict(stats)


ATTACKS: dict[str, Callable[[Target, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "stream-setup": stream_setup,
    "link-fill": link_fill,
    "loop-stall": loop_stall,
    "never-reading": never_reading,
    "idle-sockets": idle_sockets,
    "registry-flood": registry_flood,
}
