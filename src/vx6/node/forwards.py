"""The client side: from a service address to an open stream.

Theory of operation. Named direct mode: the owner is found in the local registry (name
claim -> key, with the claim-and-pin rule of core/names.py), its node record gives its
addresses (IPv6 first) and link key, and the node dials them in order with Noise IK,
requiring the peer to prove that identity. Direct mode (`--via`): no lookup; the link
goes to exactly that endpoint (an open link to the owner elsewhere is not used instead)
and the endpoint must prove the key the registry already binds the address to (the pin,
else the held claim: `Resolver.known_owner`), or the handshake is cut and the stream
fails with KEY_MISMATCH naming both keys and the endpoint. If the registry knows nothing
of a bare name, the client asks the endpoint for its own name claim (OPEN_FLAG_IDENTIFY,
answered before the OPEN, awaited at most PROOF_TIMEOUT); only a valid claim signed by
the key the endpoint proved lets the name be pinned, and without one the connection is
refused (a KEY or NAME#FINGERPRINT address still connects: the user chose the key).
One link per owner (per endpoint in direct mode) is reused by every stream; concurrent
first connections share one dial.

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

from vx6.core.hidden.target import AliasTarget
from vx6.core.names import ServiceAddress, parse_service_address
from vx6.crypto.keys import fingerprint
from vx6.errors import (
    CloseCode,
    IdentityMismatch,
    LinkError,
    StreamError,
    StreamFailed,
    UsageError,
)
from vx6.net.addresses import format_endpoint, parse_endpoint
from vx6.net.carrier import StreamCarrier
from vx6.net.circuit import ClientPath
from vx6.net.forward import Forward
from vx6.net.link import LinkProtocol
from vx6.net.pipe import StreamPipe
from vx6.net.ports import Clock, Spawn
from vx6.node.links import Links
from vx6.node.resolver import Provenance, Resolution, Resolver
from vx6.store.config import MAX_RELAYS, ForwardConfig
from vx6.store.registry import Registry
from vx6.wire.frames import OPEN_FLAG_IDENTIFY, OPEN_FLAG_PROBE

log = logging.getLogger("vx6.client")

PROBE_TIMEOUT = 10.0
PROOF_TIMEOUT = 5.0  # for a direct-mode endpoint's name claim (it comes before an answer)


class CircuitSource(Protocol):
    """Ready circuits to an owner (the circuit pool)."""

    async def get(self, owner: bytes, hops: int) -> ClientPath: ...

    def describe_circuits(self, key: tuple[bytes, int]) -> list[dict[str, object]]: ...


class IdentityProofs(Protocol):
    """Takes the records the peer of a link we dialled sends when asked who it is (the
    records hub): only that peer's own, only once, into the registry if valid."""

    def expect_identity(self, link: LinkProtocol) -> None: ...


class HiddenTargets(Protocol):
    """The hidden-service client (node/hidden.py), for an alias or a petname."""

    def target(self, text: str) -> AliasTarget | None: ...

    async def nc(self, target: AliasTarget, profile: str, pipe: StreamPipe) -> None: ...

    async def forward(self, cfg: ForwardConfig, target: AliasTarget) -> Forward: ...


class ClientSide:
    def __init__(
        self,
        resolver: Resolver,
        links: Links,
        pool: CircuitSource,
        registry: Registry,
        spawn: Spawn,
        clock: Clock,
        proofs: IdentityProofs,
    ) -> None:
        self.resolver = resolver
        self.links = links
        self.pool = pool
        self.registry = registry
        self.proofs = proofs
        self.spawn = spawn
        self.clock = clock
        self.forwards: dict[str, Forward] = {}
        self._pinned: set[str] = set()  # names known to have a pin (named by local users)
        self._retired: list[Forward] = []  # removed on reload, live connections kept
        self.hidden: HiddenTargets | None = None

    def use_hidden(self, hidden: HiddenTargets) -> None:
        """Aliases and petnames go to the hidden-service client."""
        self.hidden = hidden

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
        """A link to exactly `via` whose key is the one `addr` means (module docstring)."""
        known = self.resolver.known_owner(addr)
        expected = known.key if known is not None else None
        where = format_endpoint(*via)
        try:
            link = await self.links.dial_endpoint(*via, expected)
        except IdentityMismatch as exc:
            assert known is not None
            raise self._mismatch(addr, where, exc.presented, known) from exc
        except LinkError as exc:
            raise StreamFailed(StreamError.OWNER_UNREACHABLE, f"{where}: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            raise StreamFailed(
                StreamError.OWNER_UNREACHABLE, f"{where}: {exc or 'timeout'}"
            ) from exc
        key = link.peer_identity
        assert key is not None
        if addr.fingerprint is not None and fingerprint(key) != addr.fingerprint:
            _drop_unused(link)
            raise StreamFailed(
                StreamError.KEY_MISMATCH,
                f"{where} answered as {fingerprint(key)}, but {addr} asks for {addr.fingerprint}",
            )
        if known is None and addr.fingerprint is None and addr.owner_name is not None:
            await self._ask_for_claim(link, addr)
            known = self.resolver.known_owner(addr)
            if known is None:
                _drop_unused(link)
                name, fp = addr.owner_name, fingerprint(key)
                degraded = self.registry.health.degraded
                if degraded is not None:  # its claim may have come and not been kept
                    raise StreamFailed(
                        StreamError.UNKNOWN_NAME,
                        f"cannot keep {name!r}'s claim from {where}: registry {degraded}",
                    )
                raise StreamFailed(
                    StreamError.UNKNOWN_NAME,
                    f"{where} answered as {fp} but showed no claim of {name!r}, and none is "
                    f"held here; to trust that key, connect to {name}#{fp}.{addr.service}",
                )
            if known.key != key:
                _drop_unused(link)
                raise self._mismatch(addr, where, key, known)
        return link

    def _mismatch(
        self, addr: ServiceAddress, where: str, answered: bytes, known: Resolution
    ) -> StreamFailed:
        if known.provenance is Provenance.ADDRESS:
            wanted = f"{addr} is {fingerprint(known.key)}"
        elif known.provenance is Provenance.PINNED:
            wanted = f"{addr.owner_name} is pinned to {fingerprint(known.key)}"
        else:
            wanted = f"{addr.owner_name} is claimed by {fingerprint(known.key)}"
        return StreamFailed(
            StreamError.KEY_MISMATCH, f"{where} answered as {fingerprint(answered)}, but {wanted}"
        )

    async def _ask_for_claim(self, link: LinkProtocol, addr: ServiceAddress) -> None:
        """Ask the node at the end of `link` for its own node record and name claim: a
        probe OPEN of the service asked for, with OPEN_FLAG_IDENTIFY. The records come
        before the answer to the OPEN (one link, in order), so once the answer is in
        (or PROOF_TIMEOUT has passed) the registry holds whatever valid claim it showed."""
        self.proofs.expect_identity(link)
        pipe = StreamPipe()
        try:
            sid = link.open_stream(addr.service, OPEN_FLAG_PROBE | OPEN_FLAG_IDENTIFY, pipe)
        except LinkError as exc:  # it closed under us
            raise StreamFailed(StreamError.OWNER_UNREACHABLE, str(exc)) from exc
        pipe.bind(link, sid)
        try:
            async with asyncio.timeout(PROOF_TIMEOUT):
                await pipe.wait_opened()
        except (TimeoutError, StreamFailed):
            pass  # the answer itself does not matter here: what came before it does
        finally:
            link.reset(sid)

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
        self._pinned.add(name)  # until `forget_pin`: no need to ask the registry again

    def forget_pin(self, name: str) -> None:
        """The pin of `name` was removed (`vx6 unpin`): the next success pins it anew."""
        self._pinned.discard(name)

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

    async def nc(self, target: str, hops: int, pipe: StreamPipe, profile: str = "") -> None:
        hidden = self.hidden.target(target) if self.hidden else None
        if hidden is not None and self.hidden is not None:
            await self.hidden.nc(hidden, profile, pipe)
            return
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
        if via is not None:
            found = Resolution(carrier.peer_identity, Provenance.VIA)
        else:
            try:
                found = self.resolver.owner_key(addr, follow_pin=False)  # remembered: cheap
            except StreamFailed:  # the registry moved since the dial: say only who answered
                found = Resolution(carrier.peer_identity, Provenance.REGISTRY)
        return {
            **found.describe(),
            "setup_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    # ------------------------------------------------------------------ forwards
    async def connect(self, cfg: ForwardConfig, check: bool = True) -> Forward:
        if cfg.name in self.forwards:
            raise UsageError(f"a forward named {cfg.name!r} exists; disconnect it first")
        hidden = self.hidden.target(cfg.service) if self.hidden else None
        if hidden is not None and self.hidden is not None:
            fwd = self.forwards[cfg.name] = await self.hidden.forward(cfg, hidden)
            return fwd
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


def _drop_unused(link: LinkProtocol) -> None:
    """Close a direct-mode link that turned out not to be the owner, unless other
    streams use it (it may be shared with another address's forward)."""
    if not link.core.streams:
        link.close(CloseCode.NORMAL, "not the owner asked for")


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
