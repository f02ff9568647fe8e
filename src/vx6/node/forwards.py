"""The client side: from a service address to an open stream.

Theory of operation. Named direct mode: the owner is found in the local registry (name
claim -> key, with the claim-and-pin rule of core/names.py), its node record gives its
addresses (IPv6 first) and link key, and the node dials them in order with Noise IK,
requiring the peer to prove that identity. Direct mode (`--via`): no lookup at all; the
link is dialled with XX and the key learnt in the handshake is checked against the pin
for the name, or pinned if there is none (like ssh's known_hosts). One link per owner is
reused by every stream; concurrent first connections share one dial.

Every failure becomes a StreamFailed with a distinct code and message: unknown name,
owner unreachable, key mismatch here; unknown service, not allowed, target refused from
the owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Protocol

from vx6.core.names import ServiceAddress, parse_service_address
from vx6.crypto.keys import fingerprint
from vx6.errors import CloseCode, LinkError, StreamError, StreamFailed, UsageError
from vx6.net.addresses import format_endpoint, parse_endpoint
from vx6.net.carrier import StreamCarrier
from vx6.net.circuit import ClientPath
from vx6.net.forward import Forward
from vx6.net.link import LinkProtocol
from vx6.net.pipe import StreamPipe
from vx6.net.ports import Clock, Spawn
from vx6.node.links import Links
from vx6.node.resolver import Resolver
from vx6.store.config import MAX_RELAYS, ForwardConfig
from vx6.store.registry import Registry
from vx6.wire.frames import OPEN_FLAG_PROBE

log = logging.getLogger("vx6.client")

PROBE_TIMEOUT = 10.0


class CircuitSource(Protocol):
    """Ready circuits to an owner (the circuit pool)."""

    async def get(self, owner: bytes, hops: int) -> ClientPath: ...

    def describe_circuits(self, key: tuple[bytes, int]) -> list[dict[str, object]]: ...


class ClientSide:
    def __init__(
        self,
        resolver: Resolver,
        links: Links,
        pool: CircuitSource,
        registry: Registry,
        spawn: Spawn,
        clock: Clock,
    ) -> None:
        self.resolver = resolver
        self.links = links
        self.pool = pool
        self.registry = registry
        self.spawn = spawn
        self.clock = clock
        self.forwards: dict[str, Forward] = {}
        self._pinned: set[str] = set()  # names known to have a pin (named by local users)
        self._retired: list[Forward] = []  # removed on reload, live connections kept

    # ------------------------------------------------------------------ links
    async def link_for(self, addr: ServiceAddress, via: tuple[str, int] | None) -> LinkProtocol:
        """An open link to `addr`'s owner (found, or dialled), its name pinned."""
        if via is not None:
            link = await self._link_via(addr, via)
        else:
            link = await self.links.link_to((await self.resolver.resolve(addr)).key)
        self._pin(addr, link)
        return link

    async def _link_via(self, addr: ServiceAddress, via: tuple[str, int]) -> LinkProtocol:
        reg = self.registry
        expected = addr.owner_key or (reg.get_pin(addr.owner_name) if addr.owner_name else None)
        if expected is not None:
            link = self.links.open_link(expected)
            if link is not None:
                return link
        try:
            link = await self.links.dial_endpoint(*via, expected)
        except LinkError as exc:
            if exc.code == CloseCode.IDENTITY_MISMATCH:
                raise StreamFailed(
                    StreamError.KEY_MISMATCH,
                    f"{format_endpoint(*via)} is not {fingerprint(expected or b'')}, the key "
                    f"pinned for {addr.owner_name or 'this address'}",
                ) from exc
            raise StreamFailed(
                StreamError.OWNER_UNREACHABLE, f"{format_endpoint(*via)}: {exc}"
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise StreamFailed(
                StreamError.OWNER_UNREACHABLE, f"{format_endpoint(*via)}: {exc or 'timeout'}"
            ) from exc
        return link

    def _pin(self, addr: ServiceAddress, carrier: StreamCarrier) -> None:
        """Pin the name to the key that `carrier` proved, if nothing is pinned yet: on
        the first success, whatever carries it (a new link, a link we already had such
        as a sync link, a circuit). Called from link_for and carrier_for only."""
        name, key = addr.owner_name, carrier.peer_identity
        if not name or addr.fingerprint is not None or key is None or name in self._pinned:
            return
        if self.registry.get_pin(name) is None:
            self.registry.set_pin(name, key, self.clock.wall())
            log.info("pinned %s to %s", name, fingerprint(key))
        self._pinned.add(name)  # pins are replaced, never removed: no need to ask again

    # ------------------------------------------------------------------ streams
    async def carrier_for(
        self, addr: ServiceAddress, via: tuple[str, int] | None, hops: int
    ) -> StreamCarrier:
        """What a stream to `addr` runs over: a link to the owner, or with `hops` a ready
        circuit through that many relays (DESIGN: one stream abstraction, many paths)."""
        if not hops:
            return await self.link_for(addr, via)
        path = await self.pool.get((await self.resolver.resolve(addr)).key, hops)
        self._pin(addr, path)
        return path

    async def open(
        self, addr: ServiceAddress, via: tuple[str, int] | None, pipe: StreamPipe, hops: int = 0
    ) -> StreamCarrier:
        carrier = await self.carrier_for(addr, via, hops)
        sid = carrier.open_stream(addr.service, 0, pipe)
        pipe.bind(carrier, sid)
        return carrier

    async def nc(self, target: str, hops: int, pipe: StreamPipe) -> None:
        if not 0 <= hops <= MAX_RELAYS:
            raise UsageError(f"hops must be 0..{MAX_RELAYS}")
        addr, via = _split_via(target)
        await self.open(addr, via, pipe, hops)
        await pipe.wait_opened()

    async def probe(
        self, addr: ServiceAddress, via: tuple[str, int] | None, hops: int = 0
    ) -> dict[str, object]:
        started = time.perf_counter()
        carrier = await self.carrier_for(addr, via, hops)
        pipe = StreamPipe()
        sid = carrier.open_stream(addr.service, OPEN_FLAG_PROBE, pipe)
        pipe.bind(carrier, sid)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await pipe.wait_opened()
        except TimeoutError as exc:
            raise StreamFailed(StreamError.OWNER_UNREACHABLE, "owner did not answer") from exc
        finally:
            carrier.reset(sid)
        assert carrier.peer_identity is not None
        return {
            "owner": fingerprint(carrier.peer_identity),
            "setup_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    # ------------------------------------------------------------------ forwards
    async def connect(self, cfg: ForwardConfig, check: bool = True) -> Forward:
        if cfg.name in self.forwards:
            raise UsageError(f"a forward named {cfg.name!r} exists; disconnect it first")
        addr = parse_service_address(cfg.service)
        fallback = cfg.relay_fallback
        result: dict[str, object] = {}
        if check:
            try:
                result = await self.probe(addr, cfg.via, cfg.hops)
            except StreamFailed as exc:
                if not (fallback and exc.code is StreamError.OWNER_UNREACHABLE):
                    raise
                log.warning("%s: %s; using the relay fallback (%d hops)", cfg.name, exc, fallback)
                result = await self.probe(addr, None, fallback)

        async def opener(pipe: StreamPipe) -> None:
            if not fallback:
                await self.open(addr, cfg.via, pipe, cfg.hops)
                return
            try:
                await self.open(addr, None, pipe)
                fwd.path = "direct"
            except StreamFailed as exc:
                if exc.code is not StreamError.OWNER_UNREACHABLE:
                    raise
                if fwd.path == "direct":
                    log.warning(
                        "forward %s: direct dial failed (%s); falling back to %d relays",
                        cfg.name,
                        exc,
                        fallback,
                    )
                fwd.path = f"relay-fallback ({fallback} hops)"
                fwd.fallbacks += 1
                await self.open(addr, None, pipe, fallback)

        fwd = Forward(
            cfg.name,
            str(addr),
            cfg.local_host,
            cfg.local_port,
            opener,
            self.spawn,
            via=cfg.via,
            dual_loopback=cfg.dual_loopback,
        )
        if cfg.via:
            fwd.path = "direct-ip"
        elif cfg.hops:
            fwd.path = f"relay ({cfg.hops} hops)"
            fwd.hops = cfg.hops
        fwd.circuits = lambda: self._circuits(addr, fwd.hops or fallback)
        try:
            await fwd.start()
        except OSError as exc:
            raise UsageError(f"cannot listen on {cfg.local_host}:{cfg.local_port}: {exc}") from exc
        self.forwards[cfg.name] = fwd
        fwd.setup = result
        return fwd

    def _circuits(self, addr: ServiceAddress, hops: int) -> list[dict[str, object]]:
        if not hops:
            return []
        try:
            key = self.resolver.owner_key(addr, follow_pin=False).key
        except StreamFailed:
            return []
        return self.pool.describe_circuits((key, hops))

    async def disconnect(self, name: str) -> bool:
        fwd = self.forwards.pop(name, None)
        if fwd is None:
            for key, f in list(self.forwards.items()):
                if str(f.local_port) == name or f.local == name:
                    fwd = self.forwards.pop(key)
                    break
        if fwd is None:
            return False
        await fwd.stop()
        return True

    async def retire(self, name: str) -> bool:
        """A forward config.toml no longer declares (or changed), on reload: its listener
        closes; like sshd's sessions on reload, its live connections go on until they
        end (closed by `stop_all` at shutdown at the latest)."""
        fwd = self.forwards.pop(name, None)
        if fwd is None:
            return False
        fwd.stop_listening()
        # Only forwards with live connections are kept, so this holds no more entries
        # than there are connections (each one a file descriptor, bounded as such).
        self._retired = [f for f in self._retired if f.active]
        if fwd.active:
            self._retired.append(fwd)
        log.info(
            "forward %s: stopped listening on %s (%d live connections kept)",
            name,
            fwd.local,
            len(fwd.active),
        )
        return True

    async def start_config_forwards(self, forwards: Iterable[ForwardConfig]) -> None:
        for cfg in forwards:
            try:
                await self.connect(cfg, check=False)
            except (UsageError, StreamFailed) as exc:
                log.error("forward %s from config not started: %s", cfg.name, exc)

    async def stop_all(self) -> None:
        for name in list(self.forwards):
            await self.disconnect(name)
        retired, self._retired = self._retired, []
        for fwd in retired:
            await fwd.stop()


def _split_via(target: str) -> tuple[ServiceAddress, tuple[str, int] | None]:
    """`nc` accepts 'alice.ssh' or 'alice.ssh@[::1]:4243' (direct mode)."""
    text, _, via_text = target.partition("@")
    via = None
    if via_text:
        try:
            via = parse_endpoint(via_text)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    return parse_service_address(text), via
