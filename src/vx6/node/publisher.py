"""Publishing this node's own signed records and keeping them fresh.

Theory of operation. The node signs three kinds of record about itself: its node record
(addresses IPv6 first, link and onion keys, capabilities), its name claim (if it has a
name), and one service record per exposed service (a withdrawn service is published
with no modes, so the withdrawal outranks the old record by sequence number). Sequence
numbers come from one counter kept in the registry, never below the wall clock in
milliseconds, so they keep rising across restarts and lost state. Every new record goes
into the node's own registry and out to every sync link; a loop republishes well
before expiry and whenever the host's addresses change.

A registry that cannot be written (disk full) does not stop publishing: the record is
signed with a sequence number above every one used in this process (kept in memory
too), pushed and stored in the DHT all the same, and the loop publishes everything again
every UNSAVED_RETRY_EVERY until a copy lands in the registry.

The latest node record and name claim are also kept in memory (`identity_records`): a
direct-mode client that knows no claim of our name asks for them on its link
(OPEN_FLAG_IDENTIFY), and the answer must not depend on the disk.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from vx6.core.names import name_pow_ok, solve_name_pow
from vx6.core.records import make_record
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import UsageError
from vx6.net.addresses import is_wildcard, local_addresses
from vx6.net.ports import Clock
from vx6.store.config import NodeConfig, ServiceConfig
from vx6.store.registry import Registry, RegistryError
from vx6.wire.records import (
    Body,
    Capability,
    Endpoint,
    Kind,
    Mode,
    NameClaimBody,
    NodeBody,
    RotationBody,
    ServiceBody,
)

log = logging.getLogger("vx6.publish")

RECORD_LIFETIME = 24 * 3600
REPUBLISH_EVERY = 6 * 3600
ADDRESS_CHECK_EVERY = 2.0  # cheap: reads kernel tables, sends nothing
MAX_ADDRESSES = 8
UNSAVED_RETRY_EVERY = 60.0


# Where a new record of ours goes besides the registry: to the sync neighbours (the
# records hub) and into the DHT (the DHT service).
class SyncPush(Protocol):
    def push(self, fresh: list[bytes]) -> None: ...


class DhtPublish(Protocol):
    def publish(self, raw: bytes, slot: bytes) -> None: ...


@dataclass
class NodeKeys:
    """The node's keys as the publisher announces them; the onion key changes on rotation."""

    identity: Identity
    link_key: StaticKey
    onion_key: StaticKey


class Publisher:
    def __init__(
        self,
        keys: NodeKeys,
        name: str | None,
        config: NodeConfig,
        *,
        services: Mapping[str, ServiceConfig],
        listen_addresses: Sequence[tuple[str, int]],
        registry: Registry,
        records: SyncPush,
        dht: DhtPublish,
        addresses_changed: Callable[[set[str]], None],
        clock: Clock,
    ) -> None:
        self.keys = keys
        self.name = name
        self.config = config
        self.services = services
        self.listen_addresses = listen_addresses
        self.registry = registry
        self.records = records
        self.dht = dht
        self.addresses_changed = addresses_changed
        self.clock = clock
        self._addresses: tuple[Endpoint, ...] = ()
        self._last_seq = 0  # also in memory: the registry may fail to keep it
        self._identity: dict[int, tuple[bytes, float]] = {}  # kind -> (raw, expires)
        self.unsaved = False  # a record of ours is missing from the registry

    def next_seq(self) -> int:
        reg = self.registry
        try:
            last = int(reg.get_meta("last_seq") or 0)
        except RegistryError:
            last = 0
        seq = max(last + 1, self._last_seq + 1, int(self.clock.wall() * 1000))
        self._last_seq = seq
        # Degraded (logged by the registry): the in-memory counter carries on.
        with contextlib.suppress(RegistryError):
            reg.set_meta("last_seq", str(seq))
        return seq

    def publish(self, body: Body) -> bytes:
        now = self.clock.wall()
        rec, raw = make_record(self.keys.identity, body, self.next_seq(), now, RECORD_LIFETIME)
        r = rec
        try:
            self.registry.put_record(
                r.kind, r.signer, r.subject, r.seq, r.issued, r.expires, raw, "self", now
            )
        except RegistryError:
            self.unsaved = True  # republished until it lands; peers and the DHT get it now
        self.records.push([raw])
        self.dht.publish(raw, slot=bytes([rec.kind]) + rec.subject.encode())
        if rec.kind in (Kind.NODE, Kind.NAME_CLAIM):
            self._identity[rec.kind] = (raw, rec.expires)
        return raw

    def identity_records(self) -> list[bytes]:
        """Our latest node record and name claim, unexpired: what proves to a direct-mode
        client that this key holds our name (see node/links.py)."""
        now = self.clock.wall()
        return [raw for raw, expires in self._identity.values() if expires > now]

    def _name_pow(self) -> int:
        """The claim's proof of work, solved once per (name, key) and kept."""
        name = self.name or ""
        meta_key = f"name_pow:{name}"
        reg = self.registry
        try:
            cached = reg.get_meta(meta_key)
        except RegistryError:
            cached = None
        if cached is not None and name_pow_ok(name, self.keys.identity.public, int(cached)):
            return int(cached)
        nonce = solve_name_pow(name, self.keys.identity.public)
        with contextlib.suppress(RegistryError):  # else solved again next time
            reg.set_meta(meta_key, str(nonce))
        return nonce

    def publish_rotation(self, new_key: bytes) -> None:
        """Hand this node's name to `new_key`: clients that pinned us follow it."""
        if not self.name:
            raise UsageError("this node has no name to rotate")
        self.publish(RotationBody(name=self.name, new_key=new_key))

    def advertised(self) -> tuple[Endpoint, ...]:
        cfg = self.config
        if cfg.advertise:
            pairs = list(cfg.advertise)
        else:
            pairs = []
            for host, port in self.listen_addresses:
                if is_wildcard(host):
                    found = [(a, port) for a in local_addresses()]
                    # Loopback only when the host has nothing else: a peer dialling our
                    # ::1 would reach itself.
                    pairs += found or [("::1", port), ("127.0.0.1", port)]
                else:
                    pairs.append((host, port))
        v6 = [p for p in pairs if ":" in p[0]]
        v4 = [p for p in pairs if ":" not in p[0]]
        unique = list(dict.fromkeys(v6 + v4))[:MAX_ADDRESSES]
        return tuple(Endpoint(h, p) for h, p in unique)

    def node_body(self) -> NodeBody:
        caps = Capability.RELAY if self.config.relay else Capability(0)
        return NodeBody(
            link_key=self.keys.link_key.public,
            onion_key=self.keys.onion_key.public,
            addresses=self._addresses,
            capabilities=int(caps),
        )

    def publish_node(self) -> None:
        self._addresses = self.advertised()
        self.publish(self.node_body())

    def publish_service(self, name: str, public: bool, withdrawn: bool = False) -> None:
        modes = 0 if withdrawn else int(Mode.DIRECT)
        self.publish(ServiceBody(service=name, modes=modes, public=public))

    def publish_all(self) -> None:
        self.unsaved = False
        self.publish_node()
        if self.name:
            self.publish(NameClaimBody(name=self.name, pow_nonce=self._name_pow()))
        for svc in self.services.values():
            self.publish_service(svc.name, svc.public)

    async def republish_loop(self) -> None:
        last_full = self.clock.monotonic()
        while True:
            await self.clock.sleep(ADDRESS_CHECK_EVERY)  # periodic timer, not synchronisation
            since = self.clock.monotonic() - last_full
            if since >= REPUBLISH_EVERY or (self.unsaved and since >= UNSAVED_RETRY_EVERY):
                self.publish_all()
                last_full = self.clock.monotonic()
            elif self.advertised() != self._addresses:
                log.info("addresses changed: republishing the node record")
                self.publish_node()
                self.addresses_changed({ep.host for ep in self._addresses})
