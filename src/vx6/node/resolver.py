"""The one resolver: from a name to an owner's key and node record, saying how it knew.

Theory of operation. A service address names its owner by a key (`KEY.svc`), a name with
a fingerprint (`alice~fp.svc`) or a bare name (`alice.svc`). The registry alone decides,
by the claim-and-pin rule of core/names.py: the live signed name claims held for the
name, the key pinned for it (like ssh's known_hosts) and the rotation records that move a
name from an old key to a new one. If the registry knows no claim, the DHT is asked once
and the registry asked again. Every answer is a `Resolution` whose `provenance` tells
where the key came from: the address itself, the pin, the DHT, a sync peer, or the
registry (a record we held already, our own included).

Direct mode (`--via`) asks `known_owner`: the key the registry already binds the address
to, changing no pin, or None if it knows nothing of the name (no pin, no live claim), so
the endpoint's key must match what is known, or prove a claim before it is pinned.

Node records (a node's addresses and link key) are read the same way: `node_record` from
the registry, `fresh_node_record` after asking the DHT. Answers are remembered until the
registry changes (`RegistryMemo`), since every new stream asks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from vx6.core.dht.keys import name_key
from vx6.core.names import ServiceAddress, resolve_owner
from vx6.crypto.keys import fingerprint, node_id
from vx6.errors import DecodeError, StreamError, StreamFailed
from vx6.net.ports import Clock
from vx6.store.memo import RegistryMemo
from vx6.store.registry import Registry
from vx6.wire.records import Kind, NodeBody, RotationBody, decode_body, decode_record

log = logging.getLogger("vx6.client")


class Provenance(Enum):
    ADDRESS = "address"  # the address carries the key itself
    PINNED = "pinned"  # the name's pin decided (a claim may also be held)
    DHT = "dht"  # the claim came from a DHT lookup
    PEER = "peer"  # the claim came from a sync peer
    REGISTRY = "registry"  # held already: our own record, or of unknown origin
    VIA = "via"  # direct mode: the claim the endpoint showed when asked (see known_owner)


@dataclass(frozen=True)
class Resolution:
    key: bytes
    provenance: Provenance
    looked_up: bool = False  # this call asked the DHT

    def describe(self) -> dict[str, object]:
        return {
            "owner": fingerprint(self.key),
            "provenance": self.provenance.value,
            "looked_up": self.looked_up,
        }


class Lookup(Protocol):
    async def __call__(self, target: bytes) -> bool:
        """Ask the DHT for the records under `target` and keep what passes the record
        rules; True if it had any."""
        ...


class Resolver:
    def __init__(self, registry: Registry, lookup: Lookup, clock: Clock) -> None:
        self.registry = registry
        self.lookup = lookup
        self.clock = clock
        # (name, fingerprint, follow_pin) -> Resolution; see owner_key.
        self._known: RegistryMemo[tuple[str, str | None, bool], Resolution] = RegistryMemo(registry)

    # ------------------------------------------------------------------ names
    def owner_key(self, addr: ServiceAddress, follow_pin: bool = True) -> Resolution:
        """By the claim-and-pin rule, from the registry alone (StreamFailed if it cannot
        say). A pinned name that moved to a new key by a chain of rotation records is
        re-pinned, unless `follow_pin` is False (a question that must not change pins)."""
        name = addr.owner_name
        if not name:
            return Resolution(resolve_owner(addr, [], None), Provenance.ADDRESS)
        now = self.clock.wall()
        memo_key = (name, addr.fingerprint, follow_pin)
        known = self._known.get(memo_key, now)
        if known is not None:
            return known
        reg = self.registry
        claims = reg.records(kind=int(Kind.NAME_CLAIM), subject=name, now=now)
        rotations: dict[bytes, bytes] = {}
        for r in reg.records(kind=int(Kind.ROTATION), subject=name, now=now):
            body = decode_record(r.raw).parsed_body()
            if isinstance(body, RotationBody):
                rotations[r.signer] = body.new_key
        pinned = reg.get_pin(name)
        key = resolve_owner(addr, [(r.subject, r.signer) for r in claims], pinned, rotations)
        if follow_pin and pinned is not None and key != pinned and addr.fingerprint is None:
            reg.set_pin(name, key, now)
            log.warning(
                "%s moved from %s to %s by a rotation signed by the old key; pin updated",
                name,
                fingerprint(pinned),
                fingerprint(key),
            )
        sources = [r.source for r in claims if r.signer == key]
        if pinned == key:
            provenance = Provenance.PINNED
        elif sources and sources[0] == "dht":
            provenance = Provenance.DHT
        elif sources and sources[0].startswith("peer"):
            provenance = Provenance.PEER
        elif sources and sources[0].startswith("via"):
            provenance = Provenance.VIA
        else:
            provenance = Provenance.REGISTRY
        found = Resolution(key, provenance)
        self._known.put(memo_key, found)  # not kept after a re-pin: the registry moved
        return found

    def known_owner(self, addr: ServiceAddress) -> Resolution | None:
        """The key the registry binds `addr` to, changing nothing: the key of a KEY
        address, the pin (also when only other keys claim the name now: the pin is what
        the user trusted), or the claim the rule picks. None if the registry knows
        nothing that decides: no pin and no live claim, or a fingerprint that no pin or
        claim has (the endpoint's key is then checked against the fingerprint itself).
        Raises StreamFailed if the name is ambiguous."""
        try:
            return self.owner_key(addr, follow_pin=False)
        except StreamFailed as exc:
            name = addr.owner_name
            if name is None:
                raise
            pinned = self.registry.get_pin(name)
            if exc.code is StreamError.KEY_MISMATCH and pinned is not None:
                return Resolution(pinned, Provenance.PINNED)
            if exc.code is not StreamError.UNKNOWN_NAME:
                raise
            if addr.fingerprint is not None:
                return None
            claims = self.registry.records(
                kind=int(Kind.NAME_CLAIM), subject=name, now=self.clock.wall()
            )
            if pinned is None and not claims:
                return None
            raise

    async def resolve(self, addr: ServiceAddress) -> Resolution:
        """The registry first; if it knows no claim for the name, the DHT, then the
        registry again."""
        try:
            return self.owner_key(addr)
        except StreamFailed as exc:
            if exc.code is not StreamError.UNKNOWN_NAME or addr.owner_name is None:
                raise
            if not await self.lookup(name_key(addr.owner_name)):
                raise
        found = self.owner_key(addr)
        return Resolution(found.key, found.provenance, looked_up=True)

    # ------------------------------------------------------------------ node records
    def node_record(self, key: bytes) -> NodeBody | None:
        stored = self.registry.get_record(int(Kind.NODE), key, "")
        if stored is None or stored.expires <= self.clock.wall():
            return None
        try:
            body = decode_body(Kind.NODE, decode_record(stored.raw).body)
        except DecodeError:
            return None
        return body if isinstance(body, NodeBody) else None

    async def fresh_node_record(self, key: bytes) -> NodeBody | None:
        await self.lookup(node_id(key))
        return self.node_record(key)

    async def node_record_or_lookup(self, key: bytes) -> NodeBody | None:
        """The held node record, or, if none with an address is held, a fresh one."""
        body = self.node_record(key)
        if body is None or not body.addresses:
            body = await self.fresh_node_record(key)
        return body
