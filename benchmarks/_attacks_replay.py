"""The hostile suite's attack on a hidden service's introductions (docs/hidden.md
section 7, "Service"; row 23 of docs/security.md, "The hostile suite").

Theory of operation. The victim hosts a public hidden service. The attacker is a client
that does what a real one does up to INTRODUCE1: it reads the service's descriptor from
the DHT (FIND_VALUE at every node until one has it), opens it with the alias, picks the
first intro, looks the intro relay's node record up in the victim's registry (a file on
this machine) and builds a one-hop circuit to that relay. Its introductions name a
rendezvous point of its own making: a fresh identity and onion key at a target that
accepts TCP and never answers, so every rendezvous build the service starts for it hangs
(until the service's build timeout) and the number under way at once is what the row
measures. Then, on the one client circuit:

1. one good INTRODUCE1 (fresh X, cookie C) that starts a build (tried again with a new
   cookie if the service found no route for it), then the very same bytes `replays`
   times (a captured introduction replayed: the same X on the same intro), then
   `reuses` more with fresh X but the cookie C again;
2. `flood` good introductions at once (fresh X, fresh cookie each), fewer than the intro
   point's burst (so all pass it): only `max_rendezvous_builds` (16) may be under way.

The service's counters (the `hidden` control op's `counts`, from the victim's control
socket) are read after each phase; every INTRODUCE_ACK is counted by status.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _attack_kit import Budget, Target
from _attacks_hidden import CircuitLink, _answered
from _attacks_more import DhtClient, _txid

from vx6.core.circuit.client import HopSpec
from vx6.core.dht.keys import hidden_descriptor_keys
from vx6.core.hidden.alias import parse_alias
from vx6.core.hidden.descriptor import blinded_key_for, open_descriptor_body, time_period
from vx6.crypto.hidden_desc import seal_introduce, subcredential
from vx6.crypto.keys import Identity, StaticKey
from vx6.net.addresses import parse_endpoint
from vx6.net.control import request
from vx6.node.pool import hop_endpoints
from vx6.store.registry import Registry
from vx6.wire import dht as wire
from vx6.wire.cells import Endpoint, RelayCommand
from vx6.wire.hidden import (
    Introduce1,
    IntroducePlaintext,
    decode_introduce_ack,
    encode_introduce1,
    encode_introduce_plaintext,
)
from vx6.wire.hidden_desc import IntroEntry
from vx6.wire.records import Kind, NodeBody, decode_body, decode_record

FIRST_TRIES = 10
SETTLE = 1.0  # seconds for the service to judge what reached it before its counters are read


class _Dht(DhtClient):
    """A DHT speaker at any node, not only the victim."""

    def __init__(self, t: Target, endpoint: str) -> None:
        super().__init__(t)
        self.where = parse_endpoint(endpoint)
        family = socket.AF_INET6 if ":" in self.where[0] else socket.AF_INET
        self.sock.close()
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((self.where[0], 0))
        self.sock.setblocking(False)

    def send(self, message: wire.Message) -> int:
        data = wire.encode_message(message, self.identity.sign)
        self.sock.sendto(data, self.where)
        return len(data)


async def find_intros(t: Target, stats: Counter[str]) -> tuple[bytes, list[IntroEntry]]:
    """(subcredential, intros) of the victim's service, from the first node holding it."""
    assert t.alias is not None, "the victim must host a hidden service"
    alias = parse_alias(t.alias)
    period = time_period(time.time())
    blinded = blinded_key_for(alias, period)
    for endpoint in t.dht:
        client = _Dht(t, endpoint)
        try:
            for key in hidden_descriptor_keys(blinded):
                message = wire.FindValue(_txid(), client.identity.public, key)
                values, _, _ = await client.ask(message, 1.0)
                if isinstance(values, wire.Nodes):  # unproved: ask again with the token
                    message = wire.FindValue(_txid(), message.sender, key, values.token)
                    values, _, _ = await client.ask(message, 1.0)
                if not isinstance(values, wire.Values):
                    stats[f"descriptor_lookup_{type(values).__name__}"] += 1
                    continue
                record = max((decode_record(r) for r in values.records), key=lambda r: r.seq)
                body = decode_body(Kind.HIDDEN_DESCRIPTOR, record.body)
                inner = open_descriptor_body(body.blob, alias, period, record.seq, None)
                stats["descriptor_found"] += 1
                return subcredential(alias, blinded), list(inner.intros)
        finally:
            client.close()
    raise SystemExit(f"no node had the service's descriptor: {dict(stats)} at {t.dht}")


def relay_hop(t: Target, identity: bytes) -> tuple[HopSpec, tuple[str, int]]:
    with Registry(str(t.registry)) as reg:
        stored = reg.get_record(int(Kind.NODE), identity, "")
    assert stored is not None, "the victim has no node record for the intro relay"
    body = decode_body(Kind.NODE, decode_record(stored.raw).body)
    assert isinstance(body, NodeBody)
    endpoints = hop_endpoints(body.addresses)
    where = next(e for e in endpoints if e.host in ("127.0.0.1", "::1"))
    return HopSpec(identity, body.onion_key, endpoints), (where.host, where.port)


class Introducer:
    """INTRODUCE1s for one intro, naming a rendezvous point that never answers."""

    def __init__(self, t: Target, subcred: bytes, intro: IntroEntry) -> None:
        self.subcred, self.intro = subcred, intro
        self.rp_identity = Identity(os.urandom(32)).public
        self.rp_onion = StaticKey(os.urandom(32)).public
        self.rp_where = (Endpoint("127.0.0.1", t.hold_port),)

    def make(self, cookie: bytes) -> bytes:
        plaintext = IntroducePlaintext(
            cookie, self.rp_identity, self.rp_onion, self.rp_where, None, None
        )
        x_public, ciphertext = seal_introduce(
            os.urandom(32),
            self.intro.enc_key,
            self.intro.auth_key,
            self.subcred,
            encode_introduce_plaintext(plaintext),
        )
        return encode_introduce1(Introduce1(self.intro.auth_key, x_public, ciphertext))


def service_counts(t: Target) -> dict[str, int] | None:
    if t.control is None:
        return None
    try:
        reply = request(Path(t.control), {"op": "hidden"}, 10.0)
    except Exception:  # a stalled or gone victim: the row says so
        return None
    hosts = reply.get("hidden") or []
    return dict(hosts[0].get("counts", {})) if hosts else None


async def introduction_replay(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    subcred, intros = await find_intros(t, stats)
    hop, where = relay_hop(t, intros[0].relay)
    link = CircuitLink(t, stats, hop, where)
    if not await link.open():
        raise SystemExit("could not reach the intro relay")
    (cid,) = await link.build(1, budget)
    introducer = Introducer(t, subcred, intros[0])
    before = await asyncio.to_thread(service_counts, t)
    sent = 0

    async def send(messages: list[bytes]) -> None:
        nonlocal sent
        for data in messages:
            link.send(cid, RelayCommand.INTRODUCE1, data)
        link.flush()
        sent += len(messages)
        await _answered(link, sent, budget)

    # The first introduction must start a build (a random cookie may leave the service
    # no route in its half of the relays): a few tries, each judged by the counters.
    first, before = b"", before or {}
    for _ in range(FIRST_TRIES):
        cookie = os.urandom(32)
        first = introducer.make(cookie)
        await send([first])
        await asyncio.sleep(SETTLE / 4)
        now = await asyncio.to_thread(service_counts, t) or {}
        started = now.get("rendezvous_builds", 0) > before.get("rendezvous_builds", 0)
        before = now
        stats["first_tries"] += 1
        if started:
            break
    await send([first] * p["replays"])
    await send([introducer.make(cookie) for _ in range(p["reuses"])])
    await asyncio.sleep(SETTLE)
    after_replay = await asyncio.to_thread(service_counts, t)
    await asyncio.sleep(min(p.get("refill", 0), budget.left()))  # the intro's bucket refills
    await send([introducer.make(os.urandom(32)) for _ in range(p["flood"])])
    await asyncio.sleep(SETTLE)
    after_flood = await asyncio.to_thread(service_counts, t)
    acks = Counter(
        decode_introduce_ack(body).status.name
        for command, body in link.messages.get(cid, [])
        if command == RelayCommand.INTRODUCE_ACK
    )
    link.close()

    def added(now: dict[str, int] | None, was: dict[str, int] | None) -> dict[str, int] | None:
        if now is None or was is None:
            return None
        return {k: v - was.get(k, 0) for k, v in now.items() if v != was.get(k, 0)}

    return {
        **stats,
        "introductions_sent": sent,
        "acks": dict(acks),
        "replay_phase": added(after_replay, before),
        "flood_phase": added(after_flood, after_replay),
        "builds_under_way_after_flood": None
        if after_flood is None
        else after_flood.get("rendezvous_builds", 0)
        - after_flood.get("rendezvous_ok", 0)
        - after_flood.get("rendezvous_failed", 0),
    }


ATTACKS = {"introduction-replay": introduction_replay}
