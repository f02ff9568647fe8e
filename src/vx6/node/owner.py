"""The owner side: which services this node exposes and who may open streams to them.

Theory of operation. Deny by default. A stream request names a service; it is refused
with a distinct code if the service is unknown, if the requesting key is not on the
service's allow-list (unless the service is explicitly public), if the node is at one
of its bounds on owner streams, or if the target does not accept a connection (both in
owner_streams.py). Allow-list entries are keys, or names resolved through the
registry with the same claim-and-pin rule the client uses. A stream only ever reaches
the target configured for its service, which is loopback unless the owner allowed
otherwise when exposing it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from vx6.core.names import parse_service_address
from vx6.crypto.keys import fingerprint, key_from_text
from vx6.errors import StreamError, StreamFailed, UsageError
from vx6.net.carrier import StreamCarrier
from vx6.net.pipe import StreamPipe
from vx6.net.ports import Clock, Count
from vx6.net.ratelog import RATELOG
from vx6.node.owner_streams import OwnerStreams
from vx6.node.resolver import Resolver
from vx6.store.config import OwnerLimits, ServiceConfig
from vx6.store.memo import RegistryMemo
from vx6.store.registry import LocalService, Registry, RegistryError
from vx6.wire.frames import OPEN_FLAG_PROBE

log = logging.getLogger("vx6.owner")

TARGET_CONNECT_TIMEOUT = 5.0


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
    ) -> None:
        self.services = services  # shared with the publisher, which announces them
        self.registry = registry
        self.resolver = resolver
        self.publisher = publisher
        self.count = count
        self.clock = clock
        self.streams = OwnerStreams(limits, count)
        self._allowed: RegistryMemo[tuple[str, tuple[str, ...]], frozenset[bytes]] = RegistryMemo(
            registry
        )

    def load_services(self, configured: Mapping[str, ServiceConfig]) -> None:
        """The services exposed earlier (kept in the registry), then config.toml's."""
        for s in self.registry.services():
            self.services[s.name] = ServiceConfig(
                s.name, s.target_host, s.target_port, s.allow, s.public, s.allow_remote_target
            )
        self.services.update(configured)

    def configure(self, svc: ServiceConfig) -> None:
        """A service config.toml declares (or changed) on reload: new streams use it;
        streams already open keep the target connection they have."""
        self.services[svc.name] = svc
        self.publisher.publish_service(svc.name, svc.public)

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
        # Asked on every stream request: remembered until the registry changes (a new
        # claim, rotation or pin can change what an allowed name means).
        memo_key = (svc.name, tuple(svc.allow))
        now = self.clock.wall()
        known = self._allowed.get(memo_key, now)
        if known is not None:
            return known
        keys: set[bytes] = set()
        for entry in svc.allow:
            try:
                keys.add(key_from_text(entry))
                continue
            except ValueError:
                pass
            try:
                addr = parse_service_address(f"{entry}.{svc.name}")
                keys.add(self.resolver.owner_key(addr, follow_pin=False).key)
            except (UsageError, StreamFailed):
                continue  # a name we cannot resolve yet allows nobody
        result = frozenset(keys)
        self._allowed.put(memo_key, result)
        return result

    def describe(self, svc: ServiceConfig) -> dict[str, object]:
        return {
            "name": svc.name,
            "target": f"{svc.target_host}:{svc.target_port}",
            "public": svc.public,
            "allow": list(svc.allow),
            "allowed_keys": sorted(fingerprint(k) for k in self.allowed_keys(svc)),
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
