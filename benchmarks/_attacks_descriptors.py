"""The hostile suite's attack on a DHT node's descriptor storage (docs/hidden.md
section 3; row 22 of docs/security.md, "The hostile suite").

Theory of operation. An honest service (its own alias key, its own DHT socket) stores a
real descriptor (revision R, sealed with `seal_descriptor_body`, signed by the period's
blinded key) at the victim under both replica keys. Then the attacker, from other DHT
sockets with their own keys, STOREs at the victim, `rounds` times each:

* oversized: the honest record with bytes appended and its length field saying so (a
  value over 1024 bytes; in a datagram under the 1232-byte cap, so it is parsed);
* tampered: the honest record with one byte of its body flipped;
* older: the service's own revision R-1 (captured earlier: a replay);
* wrong key: the honest record under a DHT key that is neither replica key, and the
  attacker's own valid descriptor under the honest service's replica key.

Each STORE gets its own token (FIND_NODE first) and the victim's answer is counted by
status and reason. The victim's DHT counters (`vx6 status` dht.stats, from its control
socket) are read before and after, and at the end FIND_VALUE on both replica keys must
still hand out the honest descriptor, byte for byte, and nothing the attacker sent.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _attack_kit import Budget, Target
from _attacks_more import DhtClient, _txid

from vx6.core.dht.keys import hidden_descriptor_keys
from vx6.core.hidden.descriptor import (
    DESCRIPTOR_LIFETIME,
    PERIOD_LENGTH,
    seal_descriptor_body,
    time_period,
)
from vx6.core.records import make_record
from vx6.crypto.hidden import AliasKey
from vx6.crypto.keys import Identity, StaticKey
from vx6.net.control import request
from vx6.wire import dht as wire
from vx6.wire.hidden_desc import InnerPlaintext, IntroEntry
from vx6.wire.records import HiddenDescriptorBody

PACE = 0.12  # seconds between a client's requests (the victim allows 20/s per source)
KINDS = ("oversized", "tampered", "older", "wrong-key", "foreign-under-key")


class Service:
    """A hidden service's descriptors: its own alias key, revisions on demand."""

    def __init__(self) -> None:
        self.alias = AliasKey(os.urandom(32))
        self.period = time_period(time.time())
        self.blinded = self.alias.blinded(self.period, PERIOD_LENGTH)
        intro = IntroEntry(
            Identity(os.urandom(32)).public,
            Identity(os.urandom(32)).public,
            StaticKey(os.urandom(32)).public,
        )
        self.contents = InnerPlaintext((intro,), proof_required=False)

    def descriptor(self, revision: int) -> bytes:
        body = seal_descriptor_body(
            self.alias, self.period, revision, self.contents, [], os.urandom
        )
        _, raw = make_record(
            self.blinded, HiddenDescriptorBody(body), revision, time.time(), DESCRIPTOR_LIFETIME
        )
        return raw

    @property
    def keys(self) -> tuple[bytes, ...]:
        return hidden_descriptor_keys(self.blinded.public)


def oversized_store(
    client: DhtClient, target: bytes, token: bytes, raw: bytes, extra: int
) -> bytes:
    """A STORE datagram whose record is `raw` plus `extra` bytes, its u16 length field
    saying so (wire.encode_message refuses to write one: this is by hand)."""
    data = wire.encode_message(wire.Store(_txid(), client.identity.public, target, token, raw),
                               client.identity.sign)  # fmt: skip
    at = data.index(raw)
    extra = max(1, min(extra, wire.MAX_DATAGRAM - len(data)))  # a datagram the victim parses
    length = struct.pack(">H", len(raw) + extra)
    return data[: at - 2] + length + raw + os.urandom(extra) + data[at + len(raw) :]


async def _token(client: DhtClient, target: bytes, stats: Counter[str]) -> bytes | None:
    nodes, _, _ = await client.ask(wire.FindNode(_txid(), client.identity.public, target), 1.0)
    await asyncio.sleep(PACE)
    if not isinstance(nodes, wire.Nodes):
        stats["dht_unanswered"] += 1
        return None
    return nodes.token


async def store(
    client: DhtClient, target: bytes, raw: bytes, stats: Counter[str], extra: int = 0
) -> str:
    """STORE `raw` under `target` at the victim; its answer as 'OK' or 'STATUS:reason'."""
    token = await _token(client, target, stats)
    if token is None:
        return "unanswered"
    if extra:
        client.sock.sendto(
            oversized_store(client, target, token, raw, extra),
            (client.t.dht_host, client.t.dht_port),
        )
        await asyncio.sleep(PACE)
        return "sent"  # a datagram that does not parse gets no answer
    answer, _, _ = await client.ask(
        wire.Store(_txid(), client.identity.public, target, token, raw), 1.0
    )
    await asyncio.sleep(PACE)
    if not isinstance(answer, wire.Stored):
        return "unanswered"
    status = wire.StoreStatus(answer.status).name
    return status if not answer.reason else f"{status}:{answer.reason}"


def dht_stats(t: Target) -> dict[str, int] | None:
    if t.control is None:
        return None
    try:
        reply = request(Path(t.control), {"op": "status"}, 10.0)
    except Exception:  # a stalled or gone victim: the row says so
        return None
    stats = reply.get("dht", {}).get("stats")
    return dict(stats) if isinstance(stats, dict) else None


async def descriptor_storage(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    before = await asyncio.to_thread(dht_stats, t)
    service, other = Service(), Service()
    revision = 1000
    older, honest = service.descriptor(revision - 1), service.descriptor(revision)
    publisher = DhtClient(t)
    honest_stored = [await store(publisher, key, honest, stats) for key in service.keys]
    clients = {kind: DhtClient(t) for kind in KINDS}
    answers: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}

    async def attack(kind: str) -> None:
        client = clients[kind]
        for n in range(p["rounds"]):
            if budget.over:
                return
            key = service.keys[n % 2]
            if kind == "oversized":
                answer = await store(client, key, honest, stats, extra=1 + n % 100)
            elif kind == "tampered":
                spoiled = bytearray(honest)
                spoiled[len(honest) // 2 + n % 256] ^= 0x01 << (n % 8)
                answer = await store(client, key, bytes(spoiled), stats)
            elif kind == "older":
                answer = await store(client, key, older, stats)
            elif kind == "wrong-key":
                answer = await store(client, os.urandom(32), honest, stats)
            else:
                answer = await store(client, key, other.descriptor(revision + 1 + n), stats)
            answers[kind][answer] += 1

    await asyncio.gather(*(attack(kind) for kind in KINDS))
    served = []
    for key in service.keys:
        values, _, _ = await publisher.ask(
            wire.FindValue(_txid(), publisher.identity.public, key), 1.0
        )
        served.append(list(values.records) if isinstance(values, wire.Values) else None)
        await asyncio.sleep(PACE)
    after = await asyncio.to_thread(dht_stats, t)
    for client in [publisher, *clients.values()]:
        client.close()
    added = None
    if before is not None and after is not None:
        added = {
            k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k) != before.get(k)
        }
    return {
        **stats,
        "honest_stored": honest_stored,
        "answers": {kind: dict(c) for kind, c in answers.items()},
        "served_honest": [s == [honest] for s in served],
        "served_counts": [None if s is None else len(s) for s in served],
        "victim_dht_added": added,
    }


ATTACKS = {"descriptor-storage": descriptor_storage}
