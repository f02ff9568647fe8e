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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from vx6.core.dht.keys import name_key
from vx6.core.names import ServiceAddress, parse_service_address, resolve_owner
from vx6.crypto.keys import fingerprint, node_id
from vx6.errors import CloseCode, DecodeError, LinkError, StreamError, StreamFailed, UsageError
from vx6.net.addresses import format_endpoint, parse_endpoint
from vx6.net.carrier import StreamCarrier
from vx6.net.forward import Forward
from vx6.net.link import LinkProtocol
from vx6.net.pipe import StreamPipe
from vx6.store.config import MAX_RELAYS, ForwardConfig
from vx6.store.memo import RegistryMemo
from vx6.wire.frames import OPEN_FLAG_PROBE
from vx6.wire.records import Kind, NodeBody, RotationBody, decode_body, decode_record

if TYPE_CHECKING:
    from vx6.node.wiring import Node

log = logging.getLogger("vx6.client")

DIAL_TIMEOUT = 5.0


class ClientSide:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.forwards: dict[str, Forward] = {}
        self._dialing: dict[object, asyncio.Future[LinkProtocol]] = {}
        self._suspects: set[bytes] = set()
        self._pinned: set[str] = set()  # names known to have a pin (named by local users)
        # (name, fingerprint, follow_pin) -> key; see resolve.
        self._resolved: RegistryMemo[tuple[str, str | None, bool], bytes] = RegistryMemo(
            node.registry
        )

    # ------------------------------------------------------------------ resolution
    def resolve(self, addr: ServiceAddress, follow_pin: bool = True) -> bytes:
        """The owner's key by the claim-and-pin rule, from the registry alone. A pinned
        name that moved to a new key by a chain of rotation records is re-pinned."""
        reg = self.node.registry
        name = addr.owner_name
        if not name:
            return resolve_owner(addr, [], None)
        now = time.time()
        # Every new stream resolves its owner: remembered until the registry changes.
        memo_key = (name, addr.fingerprint, follow_pin)
        known = self._resolved.get(memo_key, now)
        if known is not None:
            return known
        claims = [
            (r.subject, r.signer)
            for r in reg.records(kind=int(Kind.NAME_CLAIM), subject=name, now=now)
        ]
        rotations: dict[bytes, bytes] = {}
        for r in reg.records(kind=int(Kind.ROTATION), subject=name, now=now):
            body = decode_record(r.raw).parsed_body()
            if isinstance(body, RotationBody):
                rotations[r.signer] = body.new_key
        pinned = reg.get_pin(name)
        key = resolve_owner(addr, claims, pinned, rotations)
        if follow_pin and pinned is not None and key != pinned and addr.fingerprint is None:
            reg.set_pin(name, key, now)
            log.warning(
                "%s moved from %s to %s by a rotation signed by the old key; pin updated",
                name,
                fingerprint(pinned),
                fingerprint(key),
            )
        self._resolved.put(memo_key, key)  # not kept after a re-pin: the registry moved
        return key

    def node_record(self, key: bytes) -> NodeBody | None:
        stored = self.node.registry.get_record(int(Kind.NODE), key, "")
        if stored is None or stored.expires <= time.time():
            return None
        try:
            body = decode_body(Kind.NODE, decode_record(stored.raw).body)
        except DecodeError:
            return None
        return body if isinstance(body, NodeBody) else None

    async def link_for(self, addr: ServiceAddress, via: tuple[str, int] | None) -> LinkProtocol:
        """An open link to `addr`'s owner (found, or dialled), its name pinned."""
        link = await self._find_or_dial(addr, via)
        self._pin(addr, link)
        return link

    async def _find_or_dial(
        self, addr: ServiceAddress, via: tuple[str, int] | None
    ) -> LinkProtocol:
        if via is not None:
            return await self._link_via(addr, via)
        key = await self.resolve_with_dht(addr)
        link = self.node.links.get(key)
        if link is not None and link.is_open:
            return link
        return await self.shared_dial(key, lambda: self._dial_owner(addr, key))

    async def resolve_with_dht(self, addr: ServiceAddress) -> bytes:
        """Registry first; if it does not know the name, ask the DHT and try again."""
        try:
            return self.resolve(addr)
        except StreamFailed as exc:
            if exc.code is not StreamError.UNKNOWN_NAME or addr.owner_name is None:
                raise
            if not await self.node.records.lookup(name_key(addr.owner_name)):
                raise
        return self.resolve(addr)

    async def shared_dial(
        self, key: object, make: Callable[[], Awaitable[LinkProtocol]]
    ) -> LinkProtocol:
        """Concurrent first connections to one owner share one dial."""
        pending = self._dialing.get(key)
        if pending is None:
            pending = asyncio.ensure_future(make())
            self._dialing[key] = pending
            pending.add_done_callback(lambda _f: self._dialing.pop(key, None))
        return await asyncio.shield(pending)

    def suspect(self, key: bytes) -> None:
        """The link to `key` died without a word: it may have moved. Look it up afresh
        before the next dial instead of first timing out on its old address."""
        self._suspects.add(key)

    async def _dial_owner(self, addr: ServiceAddress, key: bytes) -> LinkProtocol:
        if key in self._suspects:
            self._suspects.discard(key)
            await self.node.records.lookup(node_id(key))
        body = self.node_record(key)
        if body is None or not body.addresses:
            await self.node.records.lookup(node_id(key))
            body = self.node_record(key)
        if body is None or not body.addresses:
            raise StreamFailed(
                StreamError.OWNER_UNREACHABLE, f"no address known for {fingerprint(key)}"
            )
        try:
            return await self._dial_addresses(addr, key, body)
        except StreamFailed:
            # The owner may have moved: a fresh lookup before the failure is reported.
            if not await self.node.records.lookup(node_id(key)):
                raise
            fresh = self.node_record(key)
            if fresh is None or fresh.addresses == body.addresses:
                raise
            return await self._dial_addresses(addr, key, fresh)

    async def _dial_addresses(
        self, addr: ServiceAddress, key: bytes, body: NodeBody
    ) -> LinkProtocol:
        errors = []
        for ep in body.addresses:
            try:
                link = await self.node.dial(
                    ep.host, ep.port, remote_link_key=body.link_key, expected_identity=key
                )
            except (OSError, TimeoutError, LinkError) as exc:
                errors.append(f"{format_endpoint(ep.host, ep.port)}: {exc or 'timeout'}")
                continue
            return link
        raise StreamFailed(StreamError.OWNER_UNREACHABLE, "; ".join(errors))

    async def _link_via(self, addr: ServiceAddress, via: tuple[str, int]) -> LinkProtocol:
        reg = self.node.registry
        expected = addr.owner_key or (reg.get_pin(addr.owner_name) if addr.owner_name else None)
        if expected is not None:
            link = self.node.links.get(expected)
            if link is not None and link.is_open:
                return link
        try:
            link = await self.shared_dial(
                ("via", via, expected), lambda: self.node.dial(*via, expected_identity=expected)
            )
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
        if self.node.registry.get_pin(name) is None:
            self.node.registry.set_pin(name, key, time.time())
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
        path = await self.node.pool.get(await self.resolve_with_dht(addr), hops)
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
            async with asyncio.timeout(DIAL_TIMEOUT * 2):
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
            self.node.spawn,
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
            key = self.resolve(addr, follow_pin=False)
        except StreamFailed:
            return []
        return self.node.pool.describe_circuits((key, hops))

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

    async def start_config_forwards(self) -> None:
        for cfg in self.node.config.forwards.values():
            try:
                await self.connect(cfg, check=False)
            except (UsageError, StreamFailed) as exc:
                log.error("forward %s from config not started: %s", cfg.name, exc)

    async def stop_all(self) -> None:
        for name in list(self.forwards):
            await self.disconnect(name)


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
