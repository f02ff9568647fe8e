"""The owner side: which services this node exposes and who may open streams to them.

Theory of operation. Deny by default. A stream request names a service; it is refused
with a distinct code if the service is unknown, if the requesting key is not on the
service's allow-list (unless the service is explicitly public), if the node is at one
of its bounds on owner streams, or if the target does not accept a connection (both in
owner_streams.py). A stream only ever reaches the target configured for its service,
which is loopback unless the owner allowed otherwise when exposing it.

Allow-list entries (validated when given: store/config.py) are keys, NAME#FINGERPRINT
or bare names, resolved from the registry with the claim-and-pin rule the client uses
(core/names.py). A bare name is pinned here the first time it resolves (trust on first
use, like the client's first connection): a later claim by another key then never
replaces the allowed key; only a rotation signed by the pinned key moves it (the owner
follows the rotation but never moves the pin itself). If only
other keys claim a pinned name, the pinned key stays allowed. A name that resolves to
no key yet is chased through the DHT in the background (node/allow_names.py) from the
moment it is exposed, with a bounded backoff; a claim that arrives by sync counts at
once, since the entries' answers are remembered only until the registry changes. A
stream refused while some of the service's names are unresolved nudges the chase
(rate-limited) but is refused all the same: the client's next try may succeed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from vx6.core.names import parse_service_address, resolve_owner
from vx6.crypto.keys import fingerprint
from vx6.errors import StreamError, StreamFailed, UsageError
from vx6.net.carrier import StreamCarrier
from vx6.net.pipe import StreamPipe
from vx6.net.ports import Clock, Count, Spawn
from vx6.net.ratelog import RATELOG
from vx6.node.allow_names import AllowNameChaser
from vx6.node.owner_streams import OwnerStreams
from vx6.node.resolver import Resolver
from vx6.store.config import OwnerLimits, ServiceConfig
from vx6.store.memo import RegistryMemo
from vx6.store.registry import LocalService, Registry, RegistryError
from vx6.wire.frames import OPEN_FLAG_PROBE

log = logging.getLogger("vx6.owner")

TARGET_CONNECT_TIMEOUT = 5.0
EXPOSE_LOOKUP_WAIT = 2.0  # how long an expose waits for its names' first DHT lookup


@dataclass(frozen=True)
class AllowEntry:
    """What one allow-list entry means now: the key it allows (None: nobody yet)."""

    entry: str
    name: str | None  # the owner name it gives, if it is not a key
    key: bytes | None
    state: str  # "key", "resolved", "pinned" or "unresolved"
    detail: str = ""

    def describe(self) -> dict[str, object]:
        return {
            "entry": self.entry,
            "state": self.state,
            "fingerprint": fingerprint(self.key) if self.key else None,
            "detail": self.detail,
        }


class ServicePublisher(Protocol):
    def publish_service(self, name: str, public: bool, withdrawn: bool = False) -> None: ...


class OwnerSide:
    def __init__(
        self,
        services: dict[str, ServiceConfig],
        limits: OwnerLimits,
        *,
        registry: Registry,
        resolver: Resolver,
        publisher: ServicePublisher,
        count: Count,
        clock: Clock,
        spawn: Spawn,
    ) -> None:
        self.services = services  # shared with the publisher, which announces them
        self.registry = registry
        self.resolver = resolver
        self.publisher = publisher
        self.count = count
        self.clock = clock
        self.streams = OwnerStreams(limits, count)
        self._entries: RegistryMemo[tuple[str, tuple[str, ...]], tuple[AllowEntry, ...]] = (
            RegistryMemo(registry)
        )
        self.chaser = AllowNameChaser(self._chase_lookup, self.unresolved_names, spawn, clock)

    async def _chase_lookup(self, target: bytes) -> bool:
        """A DHT lookup of the chaser, counted apart (`allow_names_lookups`): what a
        stranger's refused streams can cause is bounded by the nudge rate."""
        self.count("allow_names_lookups")
        return await self.resolver.lookup(target)

    def load_services(self, configured: Mapping[str, ServiceConfig]) -> None:
        """The services exposed earlier (kept in the registry), then config.toml's."""
        for s in self.registry.services():
            self.services[s.name] = ServiceConfig(
                s.name, s.target_host, s.target_port, s.allow, s.public, s.allow_remote_target
            )
        self.services.update(configured)
        self.chaser.want()

    def configure(self, svc: ServiceConfig) -> None:
        """A service config.toml declares (or changed) on reload: new streams use it;
        streams already open keep the target connection they have."""
        self.services[svc.name] = svc
        self.publisher.publish_service(svc.name, svc.public)
        self.chaser.want(self._unresolved_in(svc))  # its allow-list's names, like expose

    def unconfigure(self, name: str) -> None:
        """A service config.toml no longer declares, on reload: the one `vx6 expose`
        stored under that name comes back (as after a restart), else it is withdrawn.
        Its open streams are not cut; they run until they end."""
        try:
            stored = next((s for s in self.registry.services() if s.name == name), None)
        except RegistryError:
            stored = None  # degraded (the registry logs it): as if nothing were stored
        if stored is not None:
            self.configure(
                ServiceConfig(
                    stored.name,
                    stored.target_host,
                    stored.target_port,
                    stored.allow,
                    stored.public,
                    stored.allow_remote_target,
                )
            )
        elif self.services.pop(name, None) is not None:
            self.publisher.publish_service(name, False, withdrawn=True)

    def allow_lists(self) -> list[frozenset[bytes]]:
        """The keys on each private service's allow-list (trusted by the link table)."""
        return [self.allowed_keys(svc) for svc in self.services.values() if not svc.public]

    def expose(self, svc: ServiceConfig) -> None:
        self.registry.put_service(
            LocalService(
                svc.name,
                svc.target_host,
                svc.target_port,
                svc.allow,
                svc.public,
                svc.allow_remote_target,
            )
        )
        self.services[svc.name] = svc
        self.publisher.publish_service(svc.name, svc.public)
        log.info(
            "exposed %s -> %s:%d (%s)",
            svc.name,
            svc.target_host,
            svc.target_port,
            "public" if svc.public else f"allow {len(svc.allow)}",
        )
        self.chaser.want(self._unresolved_in(svc))

    async def settle(self, svc: ServiceConfig, timeout: float = EXPOSE_LOOKUP_WAIT) -> None:
        """Give the service's unresolved names one DHT lookup, waiting `timeout` at most
        (the expose reply then says what resolved; the chase goes on in the background)."""
        await self.chaser.first_round(self._unresolved_in(svc), timeout)

    def unexpose(self, name: str) -> bool:
        # The registry first: if the write fails (disk full) it raises and the service
        # stays exposed in memory too, as a restart would bring it back from disk.
        removed = self.registry.remove_service(name)
        svc = self.services.pop(name, None)
        if svc is None and not removed:
            return False
        self.publisher.publish_service(name, False, withdrawn=True)
        return True

    def allowed_keys(self, svc: ServiceConfig) -> frozenset[bytes]:
        return frozenset(e.key for e in self.allow_entries(svc) if e.key is not None)

    def allow_entries(self, svc: ServiceConfig) -> tuple[AllowEntry, ...]:
        # Asked on every stream request: remembered until the registry changes (a new
        # claim, rotation or pin can change what an allowed name means).
        memo_key = (svc.name, tuple(svc.allow))
        result: tuple[AllowEntry, ...] = ()
        for _ in range(2):  # a first pin moves the registry: the second pass is kept
            known = self._entries.get(memo_key, self.clock.wall())
            if known is not None:
                return known
            result = tuple(self._entry(entry, svc.name) for entry in svc.allow)
            self._entries.put(memo_key, result)
        return result

    def _entry(self, entry: str, service: str) -> AllowEntry:
        try:
            addr = parse_service_address(f"{entry}.{service}")
        except UsageError as exc:  # stored before entries were checked
            return AllowEntry(entry, None, None, "unresolved", str(exc))
        name = addr.owner_name
        if name is None:
            try:
                return AllowEntry(entry, None, resolve_owner(addr, [], None), "key")
            except StreamFailed as exc:  # KEY#FINGERPRINT that do not match
                return AllowEntry(entry, None, None, "unresolved", str(exc))
        # NAME#FINGERPRINT chose its key already; a bare name is pinned on first use.
        # A rotation signed by the pinned key is followed, but the pin is not moved here
        # (follow_pin=False): only the client side re-pins.
        bare = addr.fingerprint is None
        try:
            found = self.resolver.owner_key(addr, follow_pin=False)
        except StreamFailed as exc:
            pinned = self.registry.get_pin(name) if bare else None
            if exc.code is StreamError.KEY_MISMATCH and pinned is not None:
                return AllowEntry(entry, name, pinned, "pinned", str(exc))
            return AllowEntry(entry, name, None, "unresolved", str(exc))
        if bare and self.registry.get_pin(name) is None:
            # A failed write is reported by the registry's health; a later pass pins.
            with contextlib.suppress(RegistryError):
                self.registry.set_pin(name, found.key, self.clock.wall())
        return AllowEntry(entry, name, found.key, "resolved")

    def unresolved_names(self) -> set[str]:
        """The names on private services' allow-lists that allow nobody yet."""
        names: set[str] = set()
        for svc in self.services.values():
            names.update(self._unresolved_in(svc))
        return names

    def _unresolved_in(self, svc: ServiceConfig) -> set[str]:
        if svc.public:
            return set()
        return {e.name for e in self.allow_entries(svc) if e.key is None and e.name}

    def describe(self, svc: ServiceConfig) -> dict[str, object]:
        entries = () if svc.public else self.allow_entries(svc)
        return {
            "name": svc.name,
            "target": f"{svc.target_host}:{svc.target_port}",
            "public": svc.public,
            "allow": list(svc.allow),
            "allow_status": [e.describe() for e in entries],
            "allowed_keys": sorted({fingerprint(e.key) for e in entries if e.key}),
        }

    # ------------------------------------------------------------------ streams
    def stream_requested(self, link: StreamCarrier, sid: int, service: str, flags: int) -> None:
        peer = link.peer_identity
        who = fingerprint(peer) if peer else "an anonymous circuit client"
        svc = self.services.get(service)
        if svc is None:
            RATELOG.warning(
                log,
                "owner-unknown-service",
                "refused stream from %s: unknown service %r",
                who,
                service,
            )
            self.count("streams_refused_unknown_service")
            link.reject_stream(sid, StreamError.UNKNOWN_SERVICE, f"no service {service!r} here")
            return
        if not svc.public and (peer is None or peer not in self.allowed_keys(svc)):
            if peer is not None and self._unresolved_in(svc) and self.chaser.nudge():
                self.count("allow_names_nudged")  # refused all the same: see the docstring
            RATELOG.warning(
                log,
                "owner-not-allowed",
                "refused stream from %s to %s: not on the allow-list",
                who,
                service,
            )
            self.count("streams_refused_not_allowed")
            link.reject_stream(sid, StreamError.NOT_ALLOWED, f"{who} may not use {service!r}")
            return
        self.streams.open(link, sid, svc, bool(flags & OPEN_FLAG_PROBE), TARGET_CONNECT_TIMEOUT)

    @property
    def active(self) -> set[StreamPipe]:
        return self.streams.active

    @property
    def streams_total(self) -> int:
        return self.streams.streams_total
