"""What the daemon answers on its control socket (one function per CLI command).

A command that changes state and cannot be written to the registry (disk full, read-only
file) fails with one line saying so, and leaves the node as the disk says it is: nothing
changed in memory that the registry did not keep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vx6 import __version__
from vx6.core.names import parse_service_address
from vx6.crypto.keys import fingerprint, key_from_text, key_to_text
from vx6.errors import StreamFailed, UsageError
from vx6.net.addresses import format_endpoint
from vx6.net.dht import DhtService
from vx6.net.ports import Clock
from vx6.net.ratelog import RATELOG
from vx6.net.router import CircuitRouter
from vx6.node.forwards import ClientSide
from vx6.node.hidden import HiddenRole
from vx6.node.links import Links
from vx6.node.owner import OwnerSide
from vx6.node.pool import CircuitPool
from vx6.node.publisher import Publisher
from vx6.node.records import RecordHub
from vx6.node.resolver import Resolver
from vx6.store.config import MAX_RELAYS, forward_config, service_config
from vx6.store.registry import Registry, RegistryError
from vx6.wire.control import OP_FIELDS, check_fields
from vx6.wire.records import Kind, decode_record

log = logging.getLogger("vx6.control")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class NodeInfo:
    """What `id` and `status` say about the node itself."""

    name: str | None
    identity: bytes
    home: Path
    started: float
    listen_addresses: Sequence[tuple[str, int]]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity)


class ControlOps:
    """The control plane sees every role: it is the one place that reports on all of
    them. Each is handed in by name; the ops call their public methods only."""

    def __init__(
        self,
        info: NodeInfo,
        *,
        links: Links,
        owner: OwnerSide,
        client: ClientSide,
        pool: CircuitPool,
        router: CircuitRouter,
        records: RecordHub,
        resolver: Resolver,
        publisher: Publisher,
        registry: Registry,
        dht: DhtService,
        counters: Mapping[str, int],
        stop: Callable[[], None],
        peering: Callable[[], Mapping[str, object]],
        clock: Clock,
        reload: Callable[[], Awaitable[Mapping[str, object]]] | None = None,
        hidden: HiddenRole | None = None,
    ) -> None:
        self.info = info
        self.links = links
        self.owner = owner
        self.client = client
        self.pool = pool
        self.router = router
        self.records = records
        self.resolver = resolver
        self.publisher = publisher
        self.registry = registry
        self.dht = dht
        self.counters = counters
        self._stop = stop
        self.peering = peering
        self.clock = clock
        self._reload = reload
        self._hidden = hidden
        self._ops: dict[str, Handler] = {
            "status": self.status,
            "id": self.id,
            "peers": self.peers,
            "expose": self.expose,
            "unexpose": self.unexpose,
            "services": self.services,
            "connect": self.connect,
            "disconnect": self.disconnect,
            "forwards": self.forwards,
            "resolve": self.resolve,
            "ping": self.ping,
            "stop": self.stop,
            "rotate": self.rotate,
            "pins": self.pins,
            "unpin": self.unpin,
            "relays": self.relays,
            "build_circuit": self.build_circuit,
            "reload": self.reload,
            "hidden": self.hidden,
        }

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown control op {op!r}"}
        try:
            result = await handler(request)
        except StreamFailed as exc:
            log.warning("%s %s failed: %s", op, _subject(request), exc)
            return {"ok": False, "error": str(exc), "code": exc.code.name}
        except RegistryError as exc:
            log.warning("%s %s failed: %s", op, _subject(request), exc)
            return {"ok": False, "error": f"{op} failed: {exc}", "code": "REGISTRY"}
        return {"ok": True, **result}

    async def id(self, _: dict[str, Any]) -> dict[str, Any]:
        info = self.info
        return {
            "name": info.name,
            "key": key_to_text(info.identity),
            "fingerprint": info.fingerprint,
        }

    async def status(self, _: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.wall()
        reg = self.registry
        return {
            **(await self.id({})),
            "version": __version__,
            "home": str(self.info.home),
            "uptime_s": round(now - self.info.started, 1),
            "listen": [format_endpoint(h, p) for h, p in self.info.listen_addresses],
            "advertised": [format_endpoint(e.host, e.port) for e in self.publisher.advertised()],
            "links": len([link for link in self.links.all if link.is_open]),
            "sync_links": len(self.records.neighbours),
            "streams_owner_active": len(self.owner.active),
            "streams_owner_total": self.owner.streams_total,
            "records": reg.count_records(now),
            "registry": reg.health.describe(),
            "registry_record_bytes": reg.record_bytes(),
            "registry_evicted": reg.evicted,
            "registry_failed_writes": reg.health.failed_writes,
            "services": len(self.owner.services),
            "forwards": [f.describe() for f in self.client.forwards.values()],
            "counters": dict(sorted(self.counters.items())),
            # Every rate-limited refusal or drop, counted exactly (the log shows only a few).
            "refusals": dict(sorted(RATELOG.counts.items())),
            "dht": self.dht.health(),
            "circuits": self.router.describe(),
            # The intro-point and rendezvous-point role's counters (relays only).
            "hidden_relay": self._hidden_relay_stats(),
            # Each configured peer's keeper: state, attempts, next retry (vx6.node.peers).
            **self.peering(),
        }

    def _hidden_relay_stats(self) -> dict[str, int] | None:
        role = self._hidden.relay_role if self._hidden is not None else None
        return dict(sorted(role.stats().items())) if role is not None else None

    async def peers(self, _: dict[str, Any]) -> dict[str, Any]:
        links = []
        for link in self.links.all:
            if not link.is_open or link.peer_identity is None:
                continue
            links.append(
                {
                    "fingerprint": fingerprint(link.peer_identity),
                    "key": key_to_text(link.peer_identity),
                    "address": format_endpoint(*link.peer_address) if link.peer_address else None,
                    "direction": "out" if link.core.initiator else "in",
                    "sync": link in self.records.neighbours,
                    "streams": len(link.core.streams),
                    "rtt_ms": round(link.rtt * 1000, 3) if link.rtt is not None else None,
                    "bytes_in": link.core.bytes_in,
                    "bytes_out": link.core.bytes_out,
                }
            )
        known = [
            {
                "address": format_endpoint(p.host, p.port),
                "fingerprint": fingerprint(p.key) if p.key else None,
                "last_seen": p.last_seen,
                "rtt_ms": p.rtt_ms,
            }
            for p in self.registry.peers(limit=200)
        ]
        table = [
            {"node_id": c.node_id.hex()[:16], "address": format_endpoint(*c.address)}
            for c in self.dht.node.table.contacts()
        ]
        return {"links": links, "known": known, "dht_table": table}

    async def expose(self, req: dict[str, Any]) -> dict[str, Any]:
        check_fields(req, OP_FIELDS["expose"])  # "allow": "abc" is refused, not a, b, c
        svc = service_config(
            str(req.get("name", "")),
            str(req.get("target", "")),
            list(req.get("allow", [])),
            bool(req.get("public", False)),
            bool(req.get("allow_remote_target", False)),
        )
        if not svc.public and not svc.allow:
            raise UsageError(
                "a private service needs --allow KEY_OR_NAME (or --public to open it to everyone)"
            )
        self.owner.expose(svc)
        await self.owner.settle(svc)  # bounded: names still unresolved are said so
        owner = self.info.name or key_to_text(self.info.identity)
        return {"service": self.owner.describe(svc), "address": f"{owner}.{svc.name}"}

    async def unexpose(self, req: dict[str, Any]) -> dict[str, Any]:
        name = str(req.get("name", ""))
        # A registry that cannot be written raises RegistryError: the service stays
        # exposed (a restart would bring it back) and the user is told.
        removed = self.owner.unexpose(name)
        if not removed:
            raise UsageError(f"no service named {name!r}")
        return {"removed": name}

    async def services(self, _: dict[str, Any]) -> dict[str, Any]:
        owner = self.owner
        return {"services": [owner.describe(s) for s in owner.services.values()]}

    async def connect(self, req: dict[str, Any]) -> dict[str, Any]:
        service = str(req.get("service", ""))
        name = str(req.get("name") or service)
        hops, fallback = req.get("hops", 0), req.get("relay_fallback", 0)
        if not isinstance(hops, int) or not isinstance(fallback, int):
            raise UsageError("hops and relay_fallback are integers")
        cfg = forward_config(
            name,
            service,
            str(req.get("local", "")),
            req.get("via") or None,
            hops,
            fallback,
            str(req.get("profile") or ""),
        )
        fwd = await self.client.connect(cfg)
        return {"forward": fwd.describe(), "setup": fwd.setup}

    async def hidden(self, req: dict[str, Any]) -> dict[str, Any]:
        """This node's hidden services as they run (docs/hidden.md, "CLI and config");
        `close_paths=ALIAS` first closes the client's joined paths to ALIAS (benchmarks)."""
        if not self._hidden:
            return {"hidden": []}
        closed = {}
        if req.get("close_paths"):
            closed = {"closed_paths": self._hidden.close_paths(str(req["close_paths"]))}
        return {"hidden": self._hidden.describe(), **closed}

    async def disconnect(self, req: dict[str, Any]) -> dict[str, Any]:
        name = str(req.get("name", ""))
        if not await self.client.disconnect(name):
            raise UsageError(f"no forward named {name!r}")
        return {"removed": name}

    async def relays(self, _: dict[str, Any]) -> dict[str, Any]:
        """The relays route planning can choose from (node records with the relay
        capability), with what the weights use."""
        out = []
        for c in self.pool.relay_candidates():
            out.append(
                {
                    "fingerprint": fingerprint(c.identity),
                    "address": format_endpoint(c.endpoints[0].host, c.endpoints[0].port),
                    "uptime_s": round(c.uptime),
                    "rtt_ms": None if c.rtt is None else round(c.rtt * 1000, 2),
                }
            )
        return {"relays": out}

    async def build_circuit(self, req: dict[str, Any]) -> dict[str, Any]:
        """Build one circuit to an owner outside the pool, report its build time and
        destroy it (benchmarks/bench_relay.py: cold builds)."""
        hops = req.get("hops")
        if not isinstance(hops, int) or not 1 <= hops <= MAX_RELAYS:
            raise UsageError(f"hops must be 1..{MAX_RELAYS}")
        found = await self.resolver.resolve(parse_service_address(f"{req.get('owner', '')}.any"))
        started = time.perf_counter()
        path = await self.pool.build(found.key, hops)
        total_ms = (time.perf_counter() - started) * 1000
        info = path.describe()
        path.close()
        return {
            "build_ms": info["build_ms"],
            "total_ms": round(total_ms, 2),
            "relays": info["relays"],
        }

    async def forwards(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"forwards": [f.describe() for f in self.client.forwards.values()]}

    async def resolve(self, req: dict[str, Any]) -> dict[str, Any]:
        addr = parse_service_address(str(req.get("address", "")))
        started = time.perf_counter()
        found = await self.resolver.resolve(addr)
        key = found.key
        looked_up = found.looked_up
        if self.resolver.node_record(key) is None:
            await self.resolver.fresh_node_record(key)
            looked_up = True
        elapsed_ms = (time.perf_counter() - started) * 1000
        reg = self.registry
        records = []
        for stored in reg.records(signer=key, now=self.clock.wall()):
            rec = decode_record(stored.raw)
            records.append(
                {
                    "kind": Kind(rec.kind).name.lower(),
                    "subject": stored.subject,
                    "seq": rec.seq,
                    "expires": rec.expires,
                    "source": stored.source,
                    "body": repr(rec.parsed_body()),
                }
            )
        return {
            "address": str(addr),
            "key": key_to_text(key),
            "fingerprint": fingerprint(key),
            "pinned": reg.get_pin(addr.owner_name) == key if addr.owner_name else None,
            "resolved_via": "dht" if looked_up else "registry",
            "provenance": found.provenance.value,
            "elapsed_ms": round(elapsed_ms, 3),
            "records": records,
        }

    async def ping(self, req: dict[str, Any]) -> dict[str, Any]:
        text = str(req.get("address", ""))
        # `vx6 ping alice` pings the owner's node; any service label will do for parsing.
        addr = parse_service_address(text if "." in text else text + ".ping")
        link = await self.client.link_for(addr, None)
        rtts = []
        for _ in range(int(req.get("count", 3))):
            async with asyncio.timeout(5):
                rtt = await link.ping()
            rtts.append(round(rtt * 1000, 3))
        return {"owner": fingerprint(link.peer_identity or b""), "rtt_ms": rtts}

    async def rotate(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            new_key = key_from_text(str(req.get("to", "")))
        except ValueError as exc:
            raise UsageError(f"--to must be a 52-character key: {exc}") from exc
        self.publisher.publish_rotation(new_key)
        return {
            "name": self.info.name,
            "to": key_to_text(new_key),
            "fingerprint": fingerprint(new_key),
        }

    async def reload(self, _: dict[str, Any]) -> dict[str, Any]:
        """Like SIGHUP: apply config.toml's changes; a refused file raises UsageError."""
        if self._reload is None:
            raise UsageError("this node cannot reload its configuration")
        return dict(await self._reload())

    async def pins(self, _: dict[str, Any]) -> dict[str, Any]:
        """The names this node's client pinned, like ssh's known_hosts."""
        return {
            "pins": [
                {
                    "name": name,
                    "fingerprint": fingerprint(key),
                    "key": key_to_text(key),
                    "pinned_at": pinned_at,
                }
                for name, key, pinned_at in self.registry.pins()
            ]
        }

    async def unpin(self, req: dict[str, Any]) -> dict[str, Any]:
        check_fields(req, OP_FIELDS["unpin"])
        name = str(req.get("name", "")).lower()
        key = self.registry.get_pin(name)
        # The registry first: a failed write (disk full) raises and the pin stays.
        if key is None or not self.registry.remove_pin(name):
            raise UsageError(f"no pin for {name!r}")
        self.client.forget_pin(name)
        return {"removed": name, "fingerprint": fingerprint(key)}

    async def stop(self, _: dict[str, Any]) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(self._stop)
        return {"stopping": True}


def _subject(request: dict[str, Any]) -> str:
    return str(request.get("service") or request.get("address") or "")
