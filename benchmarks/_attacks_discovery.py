"""Attacks 17 and 18 of bench_hostile.py: what a stranger can make the victim's DHT
discovery hold or do (see docs/security.md, "The hostile suite"). Same contract as
_attacks.py: bounded by counts and `params["seconds"]`, returns counters.

17, relay-directory-flood: relay node records signed by fresh keys, STOREd at the victim
under the relay directory keys (core/dht/directory.py). Those that list the address we
send from may take a slot; the victim must keep at most `max_slots_per_target` under a
key, keep its own entry, and refuse every record listing an address we do not send from
(loopback addresses all: on loopback the per-network cap is exempt, the slot cap and the
listed-address rule are not). 18, allow-nudge: streams from fresh keys to a private
service whose allow-list has a name nobody claims; each refusal may nudge the name's DHT
chase, at most once per 10 s (node/allow_names.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from _attack_kit import Budget, NullSink, Target, bounded_gather, close_all, open_link
from _attacks_more import DhtClient, _txid

from vx6.core.dht.keys import RELAY_DIRECTORY_BUCKETS, RELAY_DIRECTORY_KEYS, relay_bucket
from vx6.core.records import make_record
from vx6.crypto.keys import Identity
from vx6.errors import StreamError
from vx6.net.link import LinkProtocol
from vx6.wire import dht as wire
from vx6.wire.records import Capability, Endpoint, NodeBody, decode_record

LISTED_HOST = "127.0.0.1"  # where our DHT datagrams come from (the victim's DHT family)
NOBODY_PORT = 9  # discard: nothing an unprivileged process could listen on
UNLISTED_HOSTS = ("::1", "127.0.0.2", "127.0.0.77")  # loopback, but not our source
STORE_PACE = 1.0 / 15  # per UDP source: the victim allows 20 datagrams a second each
ANSWER_WAIT = 2.0  # what a refused OPEN's answer may take at the end


def relay_record(bucket: int, host: str) -> bytes:
    """A valid relay node record at `host` from a fresh key whose directory bucket is
    `bucket` (a key costs nothing: about 8 tries)."""
    while True:
        identity = Identity(os.urandom(32))
        if relay_bucket(identity.public) == bucket:
            break
    body = NodeBody(
        os.urandom(32), os.urandom(32), (Endpoint(host, NOBODY_PORT),), int(Capability.RELAY)
    )
    return make_record(identity, body, 1, time.time(), 3600)[1]


async def _store_all(
    client: DhtClient, jobs: list[tuple[int, bytes, bool]], budget: Budget, stats: Counter[str]
) -> None:
    """STORE each (bucket, record, listed) under its directory key from `client`'s
    address, with a token fetched once (tokens are per address, valid for minutes)."""
    me = client.identity.public
    nodes, _, _ = await client.ask(wire.FindNode(_txid(), me, RELAY_DIRECTORY_KEYS[0]), 1.0)
    if not isinstance(nodes, wire.Nodes):
        stats["dht_unanswered"] += 1
        return
    for bucket, raw, listed in jobs:
        if budget.over:
            break
        target = RELAY_DIRECTORY_KEYS[bucket]
        kind = "listed" if listed else "unlisted"
        answer, _, _ = await client.ask(wire.Store(_txid(), me, target, nodes.token, raw), 1.0)
        if not isinstance(answer, wire.Stored):
            stats[f"{kind}_unanswered"] += 1
        elif answer.status == wire.StoreStatus.OK:
            stats[f"{kind}_stored"] += 1
            stats[f"stored_key_{bucket}"] += 1
        else:
            stats[f"{kind}_refused_{answer.reason or answer.status.name}"] += 1
        stats[f"{kind}_sent"] += 1
        await asyncio.sleep(min(STORE_PACE, budget.left()))


async def _honest_relay_seen(t: Target, client: DhtClient, probes: int) -> int | None:
    """How many FIND_VALUEs of the victim's own directory key it took to see the
    victim's entry among the sampled few an answer carries (None: never)."""
    me, target = client.identity.public, RELAY_DIRECTORY_KEYS[relay_bucket(t.key)]
    nodes, _, _ = await client.ask(wire.FindNode(_txid(), me, target), 1.0)
    token = nodes.token if isinstance(nodes, wire.Nodes) else b""
    for i in range(probes):
        answer, _, _ = await client.ask(wire.FindValue(_txid(), me, target, token), 1.0)
        if isinstance(answer, wire.Values) and any(
            decode_record(raw).signer == t.key for raw in answer.records
        ):
            return i + 1
        await asyncio.sleep(STORE_PACE)
    return None


async def relay_directory_flood(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`records` relay records from fresh keys listing our address, spread evenly over
    the 8 directory keys, and `unlisted` listing only loopback addresses we do not send
    from; STOREd from `sources` UDP sources at once; then up to `probes` FIND_VALUEs."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    jobs = [(i % RELAY_DIRECTORY_BUCKETS, LISTED_HOST, True) for i in range(p["records"])]
    jobs += [
        (i % RELAY_DIRECTORY_BUCKETS, UNLISTED_HOSTS[i % len(UNLISTED_HOSTS)], False)
        for i in range(p["unlisted"])
    ]
    jobs.sort(key=lambda job: os.urandom(4))  # listed and unlisted interleaved
    records = [(bucket, relay_record(bucket, host), listed) for bucket, host, listed in jobs]
    clients = [DhtClient(t) for _ in range(p["sources"])]
    shares = [records[i :: len(clients)] for i in range(len(clients))]
    stores = [_store_all(c, s, budget, stats) for c, s in zip(clients, shares, strict=True)]
    await asyncio.gather(*stores)
    out: dict[str, Any] = dict(stats)
    per_key = [stats[f"stored_key_{b}"] for b in range(RELAY_DIRECTORY_BUCKETS)]
    out["stored_per_key_max"] = max(per_key)
    out["honest_relay_seen_after"] = await _honest_relay_seen(t, clients[0], p["probes"])
    for client in clients:
        client.close()
    return out


class CodeSink(NullSink):
    """A NullSink that also counts refusals by their code."""

    def on_open_failed(self, code: int, reason: str) -> None:
        super().on_open_failed(code, reason)
        try:
            name = StreamError(code).name
        except ValueError:
            name = str(code)
        self.stats[f"refused_{name}"] += 1


async def allow_nudge(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`links` links, each from a fresh key, open up to `opens` streams each to `nudge`
    (a private service with an unresolved allow-list name), `rate` a second each (well
    under the control bucket), for at most `seconds`; then wait for the answers."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])

    async def refused_opens(link: LinkProtocol) -> None:
        opened = 0
        while link.is_open and opened < p["opens"] and not budget.over:
            for _ in range(min(max(1, p["rate"] // 10), p["opens"] - opened)):
                link.open_stream(t.services["nudge"], 0, CodeSink(stats))
                opened += 1
                stats["opens"] += 1
            await asyncio.sleep(min(0.1, budget.left()))

    dials = [open_link(t, stats, timeout=min(5.0, budget.left() + 0.1)) for _ in range(p["links"])]
    links = [x for x in await bounded_gather(dials, 16) if isinstance(x, LinkProtocol)]
    await asyncio.gather(*(refused_opens(link) for link in links), return_exceptions=True)
    deadline = time.monotonic() + ANSWER_WAIT
    answered = ("streams_refused", "streams_opened", "streams_reset")
    while sum(stats[k] for k in answered) < stats["opens"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # bounded wait for the last answers
    close_all(list(links))
    return dict(stats)


ATTACKS: dict[str, Callable[[Target, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "relay-directory-flood": relay_directory_flood,
    "allow-nudge": allow_nudge,
}
