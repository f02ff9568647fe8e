"""Attacks 7, 8, 9, 12, 15 and 16 of bench_hostile.py: circuits, logs, streams, the
DHT and peer sync (see docs/security.md, "The hostile suite"). Same contract as
_attacks.py: bounded by counts and `params["seconds"]`, returns counters.
"""

from __future__ import annotations

import asyncio
import os
import socket
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
from _attacks import EMPTY_RECORDS, MAX_BACKLOG, node_records, push_records

from vx6.core.dht.keys import name_key, record_key
from vx6.crypto.keys import Identity, node_id
from vx6.crypto.onion import ntor_client_start
from vx6.errors import DecodeError
from vx6.net.link import LinkProtocol
from vx6.wire import dht as wire
from vx6.wire import frames as fr
from vx6.wire.cells import (
    CELL_SIZE,
    CELLS_PER_FRAME,
    CellCommand,
    Create,
    Destroy,
    encode_cell,
    write_cell_header,
)
from vx6.wire.records import decode_record

DHT_RATE = 10.0  # requests per second from our one source address (the node allows 20)


def _txid() -> int:
    return int.from_bytes(os.urandom(8), "big")


class DhtClient:
    """A DHT speaker with its own key and its own UDP port (a source never seen before)."""

    def __init__(self, t: Target) -> None:
        self.t = t
        self.identity = Identity(os.urandom(32))
        family = socket.AF_INET6 if ":" in t.dht_host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((t.dht_host, 0))
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    def send(self, message: wire.Message) -> int:
        data = wire.encode_message(message, self.identity.sign)
        self.sock.sendto(data, (self.t.dht_host, self.t.dht_port))
        return len(data)

    async def ask(self, message: wire.Message, timeout: float) -> tuple[Any, int, int]:
        """(answer or None, request bytes, answer bytes)."""
        loop = asyncio.get_running_loop()
        sent = self.send(message)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 2048), left)
                answer = wire.decode_message(data).message
            except (TimeoutError, OSError, DecodeError):
                break
            if answer.txid == message.txid:
                return answer, sent, len(data)
        return None, sent, 0

    async def store_many(self, records: list[bytes], budget: Budget, stats: Counter[str]) -> None:
        """STORE each record at its own DHT key, with a token fetched just before."""
        me = self.identity.public
        for raw in records:
            if budget.over:
                break
            target = record_key(decode_record(raw))
            nodes, _, _ = await self.ask(wire.FindNode(_txid(), me, target), 1.0)
            if not isinstance(nodes, wire.Nodes):
                stats["dht_unanswered"] += 1
                await asyncio.sleep(1.0 / DHT_RATE)
                continue
            stored, _, _ = await self.ask(wire.Store(_txid(), me, target, nodes.token, raw), 1.0)
            ok = isinstance(stored, wire.Stored) and stored.status == wire.StoreStatus.OK
            stats["dht_stored" if ok else "dht_store_refused"] += 1
            await asyncio.sleep(2.0 / DHT_RATE)


async def _hold(budget: Budget) -> None:
    await asyncio.sleep(budget.left())


# ---------------------------------------------------------------- 7
async def circuit_fill(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`circuits` CREATEs with valid handshakes against the relay's onion key, `per_link`
    on each link from a fresh key (a source's burst), then held idle for `seconds`."""
    assert t.onion is not None, "the victim must be a relay"
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    relay_id, onion = node_id(t.key), t.onion

    async def one_link() -> LinkProtocol | None:
        link = await open_link(t, stats)
        if link is None:
            return None
        cells = [
            encode_cell(Create(2 * i + 1, 1, ntor_client_start(relay_id, onion, os.urandom(32))[1]))
            for i in range(p["per_link"])
        ]
        link.send_cells(cells)
        stats["creates_sent"] += len(cells)
        return link

    count = -(-p["circuits"] // p["per_link"])
    links = await bounded_gather([one_link() for _ in range(count)], 16)
    await _hold(budget)
    close_all([link for link in links if isinstance(link, LinkProtocol)])
    return dict(stats)


# ---------------------------------------------------------------- 8
async def _junk_connection(t: Target, stats: Counter[str]) -> None:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(t.host, t.port), 2.0)
    except (OSError, TimeoutError):
        stats["junk_connect_failed"] += 1
        return
    writer.write(os.urandom(64))
    stats["junk_connections"] += 1
    await asyncio.sleep(0.05)
    writer.close()


async def log_flood(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`rate` per second of each: junk connections, OPENs of a private service from a
    key not allowed, DHT STOREs with a made-up token, records with bad signatures,
    CREATEs with broken handshakes and DESTROYs of circuits that never were; at most
    `max_ops` in all, for `seconds`."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    dht = DhtClient(t)
    bad = bytearray(node_records(1)[0])
    bad[-1] ^= 1
    link: LinkProtocol | None = None
    tick = 1.0 / (p["rate"] * 5)
    tasks: set[asyncio.Task[None]] = set()
    for i in range(p["max_ops"]):
        if budget.over:
            break
        if link is None or not link.is_open:
            link = await open_link(t, stats, timeout=min(2.0, budget.left() + 0.1))
        kind = i % 5
        if kind == 0:
            task = asyncio.create_task(_junk_connection(t, stats))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif kind == 1 and link is not None and link.is_open:
            try:
                link.open_stream(t.services["priv"], 0, NullSink(stats))
                stats["refused_opens_sent"] += 1
            except Exception:
                link = None
        elif kind == 2:
            target = os.urandom(32)
            record = bytes(bad)
            dht.send(wire.Store(_txid(), dht.identity.public, target, bytes(16), record))
            stats["bad_stores_sent"] += 1
        elif kind == 3 and link is not None and link.is_open:
            link.send_records([bytes(bad)])
            stats["bad_records_sent"] += 1
        elif kind == 4 and link is not None and link.is_open:
            cid = 2 * i + 1
            link.send_cells(
                [encode_cell(Create(cid, 1, os.urandom(96))), encode_cell(Destroy(cid + 2, 1))]
            )
            stats["bad_circuits_sent"] += 1
        await asyncio.sleep(min(tick, budget.left()))
    await asyncio.gather(*tasks, return_exceptions=True)
    close_all([link])
    dht.close()
    return dict(stats)


# ---------------------------------------------------------------- 9
async def fd_streams(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`links` links each open `streams` streams to a public service whose target
    accepts at once, and hold them for `seconds`."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])

    async def one_link() -> LinkProtocol | None:
        link = await open_link(t, stats)
        opened = 0
        while link is not None and opened < p["streams"] and link.is_open and not budget.over:
            try:
                for _ in range(min(50, p["streams"] - opened)):
                    link.open_stream(t.services["pub"], 0, NullSink(stats))
                    opened += 1
                    stats["opens"] += 1
            except Exception:
                stats["open_refused_locally"] += 1
                break
            await asyncio.sleep(0.02)  # lets the victim answer between batches
        return link

    links = await bounded_gather([one_link() for _ in range(p["links"])], p["links"])
    await _hold(budget)
    close_all([link for link in links if isinstance(link, LinkProtocol)])
    return dict(stats)


# ---------------------------------------------------------------- 12
async def dht_amplification(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`requests` signed FIND_NODE / FIND_VALUE requests, each from a fresh key and a
    fresh UDP port (a source that never proved its address), `DHT_RATE` per second;
    the bytes answered over the bytes asked, per kind."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    sizes: dict[str, list[int]] = {"find_node": [0, 0], "find_value": [0, 0]}
    worst = 0.0
    for i in range(p["requests"]):
        if budget.over:
            break
        client = DhtClient(t)
        me = client.identity.public
        message: wire.FindNode | wire.FindValue
        if i % 2 == 0:
            kind, message = "find_node", wire.FindNode(_txid(), me, os.urandom(32))
        else:
            kind, message = "find_value", wire.FindValue(_txid(), me, name_key(t.name))
        answer, asked, answered = await client.ask(message, 1.0)
        client.close()
        stats["answered" if answer is not None else "unanswered"] += 1
        sizes[kind][0] += asked
        sizes[kind][1] += answered
        worst = max(worst, answered / asked)
        await asyncio.sleep(min(1.0 / DHT_RATE, budget.left()))
    out: dict[str, Any] = dict(stats)
    for kind, (asked, answered) in sizes.items():
        out[f"amplification_{kind}"] = round(answered / asked, 2) if asked else None
    out["amplification_worst"] = round(worst, 2)
    return out


# ---------------------------------------------------------------- 15
async def dump_spam(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """Seed the victim with `seed` records, then from one key: `reconnects` times a
    fresh link sends `frames` 2-byte RECORDS frames and takes whatever dump comes."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    await push_records(t, p["seed"], p["seed"], budget, stats)
    keys = fresh_identity()
    for _ in range(p["reconnects"]):
        if budget.over:
            break
        link = await open_link(t, stats, keys=keys, timeout=min(5.0, budget.left() + 0.1))
        if link is None:
            await asyncio.sleep(min(0.2, budget.left()))
            continue
        before = stats["records_in"]
        for _ in range(p["frames"]):
            if not send_plain(link, EMPTY_RECORDS):
                break
            stats["requests_sent"] += 1
        deadline = time.monotonic() + min(1.0, budget.left())
        while stats["records_in"] == before and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # bounded wait for the dump to arrive
        stats["dumps"] += stats["records_in"] > before
        close_all([link])
    return dict(stats)


# ---------------------------------------------------------------- 16
async def unknown_cells(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`links` links send CELLS frames of RELAY cells for circuit ids that were never
    created, as fast as the victim takes them, up to `max_cells` in all."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    block = bytearray(os.urandom(CELLS_PER_FRAME * CELL_SIZE))

    async def flood() -> None:
        while not budget.over and stats["cells_sent"] < p["max_cells"]:
            link = await open_link(t, stats, timeout=min(5.0, budget.left() + 0.1))
            if link is None:
                await asyncio.sleep(min(0.2, budget.left()))
                continue
            while link.is_open and not budget.over and stats["cells_sent"] < p["max_cells"]:
                if backlog(link) > MAX_BACKLOG:
                    await asyncio.sleep(0.005)
                    continue
                for n in range(CELLS_PER_FRAME):
                    cid = int.from_bytes(os.urandom(4), "big") | 1
                    write_cell_header(memoryview(block)[n * CELL_SIZE :], cid, CellCommand.RELAY)
                send_plain(link, bytes([fr.FrameType.CELLS]) + bytes(block))
                stats["cells_sent"] += CELLS_PER_FRAME
                await asyncio.sleep(0)
            close_all([link])

    await asyncio.gather(*(flood() for _ in range(p["links"])), return_exceptions=True)
    return dict(stats)


ATTACKS: dict[str, Callable[[Target, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "circuit-fill": circuit_fill,
    "log-flood": log_flood,
    "fd-streams": fd_streams,
    "dht-amplification": dht_amplification,
    "dump-spam": dump_spam,
    "unknown-cells": unknown_cells,
}
