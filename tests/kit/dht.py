"""DHT test helpers: a fixed clock value, deterministic identities, contacts, records
and seeded randomness for the sans-IO DHT core (core/dht) and the simulator."""

from __future__ import annotations

import random
from collections.abc import Callable

from vx6.core.dht import DhtConfig
from vx6.core.dht.contacts import Contact
from vx6.core.records import make_record
from vx6.crypto.keys import Identity
from vx6.wire.records import Endpoint, NameClaimBody, NodeBody

NOW = 1_700_000_000.0
CFG = DhtConfig()


def identity(n: int) -> Identity:
    return Identity(n.to_bytes(4, "big") * 8)


def node_record(owner: Identity, seq: int, port: int = 4242, now: float = NOW) -> bytes:
    body = NodeBody(bytes(32), bytes(32), (Endpoint("2001:db8::1", port),), 2)
    return make_record(owner, body, seq, now, 86400)[1]


def claim(owner: Identity, seq: int, name: str = "alice", nonce: int = 0) -> bytes:
    return make_record(owner, NameClaimBody(name, nonce), seq, NOW, 86400)[1]


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def contact(i: int, host: str | None = None) -> Contact:
    return Contact(random.Random(i).randbytes(32), (host or f"2001:db8:{i + 1:x}::1", 4242))
