"""Cheap identities for the simulator (and only for it).

Real nodes sign every DHT datagram with Ed25519; ten thousand simulated nodes doing
that would spend most of the run in signature code. Here each node gets a random 64-byte
tag in a precomputed table, "signing" returns the tag and "verifying" compares it: the
core runs exactly the same checks, against a stand-in that is only as strong as the
simulated attackers are honest about signatures (they lie about contacts and records,
they never forge). Records (node records, name claims) stay real Ed25519 records,
checked with `vx6.core.records.check_record`.

Ids are SHA-256 of the key, as for real nodes, except where the scenario grinds an id
(hostile nodes placed next to a target): those are entered in an override table, which
stands in for the hashing work an attacker would spend.
"""

from __future__ import annotations

import random

from vx6.core.dht import Credentials
from vx6.crypto.keys import node_id


class SimIdentities:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._tags: dict[bytes, bytes] = {}
        self._ids: dict[bytes, bytes] = {}

    def id_of(self, public: bytes) -> bytes:
        known = self._ids.get(public)
        if known is None:
            known = self._ids[public] = node_id(public)
        return known

    def verify(self, public: bytes, message: bytes, signature: bytes) -> bool:
        return self._tags.get(public) == signature

    def credentials(
        self, public: bytes | None = None, ground_id: bytes | None = None
    ) -> Credentials:
        """Credentials for a new node: `public` defaults to 32 random bytes; `ground_id`
        places the node at a chosen id (an attacker's ground key)."""
        key = public if public is not None else self._rng.randbytes(32)
        tag = self._rng.randbytes(64)
        self._tags[key] = tag
        if ground_id is not None:
            self._ids[key] = ground_id

        def sign(message: bytes) -> bytes:
            return tag

        return Credentials(key, sign, self.verify, self.id_of)
