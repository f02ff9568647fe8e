"""Client circuits ready before they are needed, and the routes they take.

Theory of operation. A forward with `--hops N` asks the pool for a circuit to its owner.
The pool keeps up to `SPARE` open circuits per (owner, hops) and hands out the least
loaded one, so a new connection only opens a stream on a circuit that is already built;
whenever it hands one out, or one dies, it builds replacements in the background. Only
when nothing is ready (the first connection, or right after every circuit died) does a
connection wait for a build.

Circuits are rotated like Tor's (MaxCircuitDirtiness): a circuit takes new connections
for `circuit_lifetime` seconds (config, default 600) after its first one; after that it
is *retiring*: its connections go on, new ones go over a fresh circuit, and it is closed
once its last connection ends (checked on every hand-out and by `maintain_loop`). Spares
that never carried a connection do not age, but an (owner, hops) that has not been asked
for a circuit in `IDLE_LIFETIMES` lifetimes (an hour by default) drops them, so a forward
nobody uses does not keep circuits open at relays. So one circuit never links more than a
few minutes of a client's connections.

Routes come from the local registry (`relay_candidates`): nodes whose signed node record
advertises the relay capability and an onion key, weighted by how long we have seen them
up and by their measured RTT, and kept apart by network (core/routes.py). Relays reach
the registry by peer sync or from the DHT's relay directory (node/relay_directory.py);
a route that finds too few asks the directory once more before it gives up. A build that
fails names the first hop that did not answer (the hop after the last keyed one); that
node is avoided for `AVOID_SECONDS`, and the build is retried on a fresh route, so a dead
relay costs the next connection one failed attempt at most, not an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from vx6.core.circuit.client import HopSpec
from vx6.core.dht.contacts import prefix_of
from vx6.core.routes import RelayCandidate, plan_route
from vx6.crypto.keys import fingerprint
from vx6.errors import DecodeError, StreamError, StreamFailed
from vx6.net.circuit import ClientPath
from vx6.net.ports import Clock, LinkSource, Spawn
from vx6.net.router import BuildFailed
from vx6.node.resolver import Resolver
from vx6.store.registry import Registry
from vx6.wire.cells import MAX_ENDPOINTS, Endpoint
from vx6.wire.records import Capability, Kind, NodeBody, decode_body, decode_record

log = logging.getLogger("vx6.pool")

SPARE = 2  # open circuits kept per (owner, hops)
SWEEP_EVERY = 30.0  # at most this long between checks for retiring circuits to close
IDLE_LIFETIMES = 6  # an (owner, hops) unused this many circuit lifetimes drops its spares
BUILD_ATTEMPTS = 3
AVOID_SECONDS = 300.0

PoolKey = tuple[bytes, int]


class HostPort(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


def hop_endpoints(addresses: Sequence[HostPort]) -> tuple[Endpoint, ...]:
    """The endpoints an EXTEND may carry: IPv6 first, as the node record lists them."""
    return tuple(Endpoint(a.host, a.port) for a in addresses[:MAX_ENDPOINTS])


class CircuitBuilder(Protocol):
    async def build(self, owner: HopSpec, relays: list[HopSpec]) -> ClientPath: ...


class RelaySource(Protocol):
    async def on_demand(self) -> None:
        """Look for more relays now (bounded by the source), into the registry."""
        ...


class CircuitPool:
    def __init__(
        self,
        own_key: bytes,
        circuit_lifetime: float,
        *,
        builder: CircuitBuilder,
        resolver: Resolver,
        links: LinkSource,
        registry: Registry,
        spawn: Spawn,
        clock: Clock,
        rng: Callable[[], float],
        own_endpoints: Callable[[], Sequence[HostPort]] = tuple,
    ) -> None:
        self.own_key = own_key
        self.own_endpoints = own_endpoints  # what this node publishes: its families
        self.relay_source: RelaySource | None = None
        self.circuit_lifetime = circuit_lifetime
        self.builder = builder
        self.resolver = resolver
        self.links = links
        self.registry = registry
        self.spawn = spawn
        self.clock = clock
        self.paths: dict[PoolKey, list[ClientPath]] = {}
        self._building: dict[PoolKey, int] = {}
        self._avoid: dict[bytes, float] = {}
        self._last_asked: dict[PoolKey, float] = {}
        self._rng = rng

    def use_relay_source(self, source: RelaySource) -> None:
        """Where to look for more relays when a route finds too few (the directory)."""
        self.relay_source = source

    # ------------------------------------------------------------------ handing out
    def takes_new(self, path: ClientPath, now: float) -> bool:
        """Does this circuit take new connections (it is not retiring)?"""
        first = path.first_stream_at
        return first is None or now - first < self.circuit_lifetime

    def ready(self, key: PoolKey) -> list[ClientPath]:
        """The open circuits that take new connections. Drops closed circuits and closes
        retiring ones whose last connection has ended."""
        now = self.clock.monotonic()
        fresh: list[ClientPath] = []
        kept: list[ClientPath] = []
        for path in self.paths.get(key, []):
            if not path.is_open:
                continue
            if self.takes_new(path, now):
                fresh.append(path)
            elif path.active_streams:
                kept.append(path)  # retiring: its connections go on
            else:
                log.info("circuit %d retired after its lifetime", path.circuit_id)
                path.close()
        self.paths[key] = fresh + kept
        return fresh

    async def maintain_loop(self) -> None:
        """Close retiring circuits once idle and build their fresh replacements; drop
        the spares of an (owner, hops) nobody has asked for in a long time."""
        while True:
            lifetime = self.circuit_lifetime
            await self.clock.sleep(min(SWEEP_EVERY, lifetime / 2))  # a periodic timer
            now = self.clock.monotonic()
            for key in list(self.paths):
                self.ready(key)
                paths = self.paths[key]
                unused = now - self._last_asked.get(key, 0.0) > IDLE_LIFETIMES * lifetime
                if unused and not any(p.active_streams for p in paths):
                    log.info("closing %d spare circuits nobody used", len(paths))
                    for path in paths:
                        path.close()
                    del self.paths[key]
                elif paths:  # in use: keep its spares fresh
                    self._top_up(key)

    async def get(self, owner: bytes, hops: int) -> ClientPath:
        key = (owner, hops)
        self._last_asked[key] = self.clock.monotonic()
        for path in sorted(self.ready(key), key=lambda p: p.active_streams):
            if path.active_streams < path.session.streams.max_streams:
                self._top_up(key)
                return path
        path = await self.build(owner, hops)
        self.paths.setdefault(key, []).append(path)
        self._top_up(key)
        return path

    def _top_up(self, key: PoolKey) -> None:
        missing = SPARE - len(self.ready(key)) - self._building.get(key, 0)
        for _ in range(max(0, missing)):
            self._building[key] = self._building.get(key, 0) + 1
            self.spawn(self._build_spare(key))

    async def _build_spare(self, key: PoolKey) -> None:
        try:
            path = await self.build(*key)
        except StreamFailed as exc:
            log.info("spare circuit to %s not built: %s", fingerprint(key[0]), exc)
            return
        finally:
            self._building[key] -= 1
        self.paths.setdefault(key, []).append(path)

    # ------------------------------------------------------------------ building
    async def build(self, owner: bytes, hops: int) -> ClientPath:
        exit_spec = await self._owner_spec(owner)
        last: StreamFailed | None = None
        for _ in range(BUILD_ATTEMPTS):
            relays = await self._plan_or_look(owner, hops, exit_spec.endpoints)
            specs = [HopSpec(r.identity, r.onion_key, r.endpoints) for r in relays]
            try:
                return await self.builder.build(exit_spec, specs)
            except BuildFailed as exc:
                last = exc
                self._blame([*specs, exit_spec], exc.hops_keyed, exc)
        assert last is not None
        raise last

    def _blame(self, path: list[HopSpec], keyed: int, exc: StreamFailed) -> None:
        """The hop after the last keyed one did not answer; the owner is never blamed."""
        if keyed >= len(path) - 1:
            return
        suspect = path[keyed].identity
        self._avoid[suspect] = self.clock.monotonic() + AVOID_SECONDS
        log.info("avoiding relay %s for a while: %s", fingerprint(suspect), exc.detail)

    async def _plan_or_look(
        self, owner: bytes, hops: int, owner_endpoints: Sequence[Endpoint]
    ) -> list[RelayCandidate]:
        """A route; with too few relays known, after one more look for them."""
        try:
            return self.plan(owner, hops, owner_endpoints)
        except StreamFailed as exc:
            if exc.code is not StreamError.NO_ROUTE or self.relay_source is None:
                raise
        await self.relay_source.on_demand()
        return self.plan(owner, hops, owner_endpoints)

    def known_relays(self) -> int:
        """Relays route planning could choose from, this node not counted."""
        return sum(1 for c in self.relay_candidates() if c.identity != self.own_key)

    def plan(
        self, owner: bytes, hops: int, owner_endpoints: Sequence[Endpoint] = ()
    ) -> list[RelayCandidate]:
        now = self.clock.monotonic()
        self._avoid = {k: t for k, t in self._avoid.items() if t > now}
        exclude = {self.own_key, owner, *self._avoid}
        return plan_route(
            self.relay_candidates(),
            hops,
            exclude=exclude,
            rng=self._rng,
            owner_endpoints=owner_endpoints,
            own_endpoints=hop_endpoints(self.own_endpoints()),
        )

    def relay_candidates(self) -> list[RelayCandidate]:
        reg = self.registry
        now = self.clock.wall()
        seen: dict[bytes, tuple[float, float, float | None]] = {}
        for peer in reg.peers(limit=2000):
            if peer.key is None:
                continue
            first, last, rtt = seen.get(peer.key, (peer.first_seen, peer.last_seen, None))
            seen[peer.key] = (
                min(first, peer.first_seen),
                max(last, peer.last_seen),
                rtt if rtt is not None else peer.rtt_ms,
            )
        out = []
        for stored in reg.records(kind=int(Kind.NODE), now=now, limit=5000):
            try:
                body = decode_body(Kind.NODE, decode_record(stored.raw).body)
            except DecodeError:
                continue
            if not isinstance(body, NodeBody) or not body.capabilities & Capability.RELAY:
                continue
            if not body.addresses:
                continue
            first, last, rtt_ms = seen.get(stored.signer, (now, now, None))
            link = self.links.open_link(stored.signer)
            if link is not None and link.rtt is not None:
                rtt_ms = link.rtt * 1000
            out.append(
                RelayCandidate(
                    identity=stored.signer,
                    onion_key=body.onion_key,
                    endpoints=hop_endpoints(body.addresses),
                    network=prefix_of(body.addresses[0].host),
                    uptime=max(0.0, last - first),
                    rtt=None if rtt_ms is None else rtt_ms / 1000,
                )
            )
        return out

    async def _owner_spec(self, owner: bytes) -> HopSpec:
        body = await self.resolver.node_record_or_lookup(owner)
        if body is None or not body.addresses:
            raise StreamFailed(
                StreamError.OWNER_UNREACHABLE, f"no node record for {fingerprint(owner)}"
            )
        return HopSpec(owner, body.onion_key, hop_endpoints(body.addresses))

    def describe_circuits(self, key: PoolKey) -> list[dict[str, object]]:
        now = self.clock.monotonic()
        return [
            {**path.describe(), "retiring": path.is_open and not self.takes_new(path, now)}
            for path in self.paths.get(key, [])
        ]

    def describe(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for key in self.paths:
            owner, hops = key
            circuits = self.describe_circuits(key)
            out.append({"owner": fingerprint(owner), "hops": hops, "circuits": circuits})
        return out

    def close(self) -> None:
        for paths in self.paths.values():
            for path in paths:
                path.close()
        self.paths.clear()
