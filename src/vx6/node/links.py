"""The node's links: the one dialler, and the hub that hands link events to the roles.

Theory of operation. Links are the only way bytes enter from the network. Each is owned
by a `LinkProtocol`, whose owner is this hub: it reports what happened and the hub hands
it to the handlers the roles registered with `on_*` (the router takes cells and pauses,
the records hub takes records, the owner side takes stream requests, and so on). Before
any handler sees a link it passes the admission table (`node/link_table.py`): inbound
connections by source address before a LinkProtocol exists, every link by key and trust
once its handshake completes. An admitted link is kept by the peer's identity.

Dialling is written once, here. `link_to(identity)` is what every role uses to reach a
node by its key (forwards to an owner, the pool's first hop, a relay's next hop): the open
link if there is one, else a dial to the endpoints given and the addresses of the node's
record, each checked in the handshake to really be that node; if all fail, the DHT is
asked for a fresh node record and its new addresses tried. A node whose link died without
a word (idle timeout) is looked up afresh before the next dial. Concurrent callers share
one dial. `dial_endpoint` is direct mode (`--via`): one address, the key learnt or checked
in the handshake; a via link is always a link *to that address* (a link to the same key
elsewhere is not used instead), and it is never closed because the node's record does not
list the address (the user chose it). Two open links may share a key: `by_key` holds the
newest, and when it closes another open link of that key takes its place.

A peer that opens a stream with OPEN_FLAG_IDENTIFY (a direct-mode client that holds no
claim of the name it asked for) is sent this node's own node record and name claim
first, once per link, so the answer to its OPEN comes after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from vx6.crypto.keys import Identity, StaticKey, fingerprint
from vx6.errors import CloseCode, LinkError, StreamError, StreamFailed, VX6Error
from vx6.net.addresses import dialable, format_endpoint, is_loopback
from vx6.net.dial import dial
from vx6.net.link import LinkProtocol
from vx6.net.ports import Clock, Count
from vx6.node.link_table import LinkTable
from vx6.store.registry import RegistryError
from vx6.wire.cells import Endpoint
from vx6.wire.frames import OPEN_FLAG_IDENTIFY
from vx6.wire.records import NodeBody

log = logging.getLogger("vx6.node")

DIAL_TIMEOUT = 5.0

LinkHandler = Callable[[LinkProtocol], None]
ClosedHandler = Callable[[LinkProtocol, int, str, bool], None]
StreamHandler = Callable[[LinkProtocol, int, str, int], None]
CellsHandler = Callable[[LinkProtocol, tuple[bytes | memoryview, ...]], None]
RecordsHandler = Callable[[LinkProtocol, tuple[bytes, ...]], None]
PausedHandler = Callable[[LinkProtocol, bool], None]
IdentityRecords = Callable[[], list[bytes]]


class NodeRecords(Protocol):
    """Where the dialler finds a node's addresses and link key (the resolver)."""

    def node_record(self, key: bytes) -> NodeBody | None: ...

    async def fresh_node_record(self, key: bytes) -> NodeBody | None:
        """Ask the DHT first, then read the registry."""
        ...


class PeerBook(Protocol):
    """Where dialled peers are remembered (the registry's peers table)."""

    def upsert_peer(
        self, host: str, port: int, now: float, *, key: bytes | None = None
    ) -> None: ...


class Links:
    def __init__(
        self,
        identity: Identity,
        link_key: StaticKey,
        table: LinkTable,
        *,
        node_records: NodeRecords,
        peers: PeerBook,
        count: Count,
        clock: Clock,
        listen_addresses: Sequence[tuple[str, int]],
    ) -> None:
        self.identity = identity
        self.link_key = link_key
        self.table = table
        self.node_records = node_records
        self.peers = peers
        self.count = count
        self.clock = clock
        self.listen_addresses = listen_addresses  # filled in by the listener at start
        self.by_key: dict[bytes, LinkProtocol] = {}
        self.all: set[LinkProtocol] = set()
        # Links the table kept once their handshake completed: the only ones the roles
        # ever hear of, so the only ones whose close they are told about.
        self._admitted: set[LinkProtocol] = set()
        self._dialing: dict[object, asyncio.Future[LinkProtocol]] = {}
        self._suspects: set[bytes] = set()
        self._closed: list[ClosedHandler] = []
        self._paused: list[PausedHandler] = []
        self._stream: StreamHandler = _refuse_streams
        self._cells: CellsHandler = _drop_cells
        self._records: RecordsHandler = _drop_records
        self._identity_records: IdentityRecords = list
        self._identified: set[LinkProtocol] = set()  # sent our own records once already
        self._via: set[LinkProtocol] = set()  # dialled to an address the user gave

    # ------------------------------------------------------------------ registration
    def on_closed(self, handler: ClosedHandler) -> None:
        self._closed.append(handler)

    def on_paused(self, handler: PausedHandler) -> None:
        self._paused.append(handler)

    def on_stream(self, handler: StreamHandler) -> None:
        self._stream = handler

    def on_cells(self, handler: CellsHandler) -> None:
        self._cells = handler

    def on_records(self, handler: RecordsHandler) -> None:
        self._records = handler

    def on_identify(self, records: IdentityRecords) -> None:
        """Where our own node record and name claim come from (the publisher)."""
        self._identity_records = records

    # ------------------------------------------------------------------ inbound
    def admit(self, sock: socket.socket, source: tuple[str, int]) -> LinkProtocol | None:
        """The accept loop's question: a LinkProtocol for this connection, or None."""
        link = self.table.admit(source, lambda: self._new_link(initiator=False))
        if link is not None:
            self.all.add(link)
        return link

    def _new_link(self, *, initiator: bool) -> LinkProtocol:
        return LinkProtocol(
            self,
            initiator=initiator,
            identity=self.identity,
            link_key=self.link_key,
            clock=self.clock.monotonic,
        )

    # ------------------------------------------------------------------ dialling
    def open_link(self, identity: bytes) -> LinkProtocol | None:
        link = self.by_key.get(identity)
        return link if link is not None and link.is_open else None

    async def dial(
        self,
        host: str,
        port: int,
        *,
        remote_link_key: bytes | None = None,
        expected_identity: bytes | None = None,
    ) -> LinkProtocol:
        """A new link to host:port (not shared): OSError, TimeoutError or LinkError."""
        link = await dial(
            self,
            host,
            port,
            identity=self.identity,
            link_key=self.link_key,
            remote_link_key=remote_link_key,
            expected_identity=expected_identity,
            timeout=DIAL_TIMEOUT,
            clock=self.clock.monotonic,
        )
        if link.closed_future.done():  # refused by our own table, or gone already
            raise LinkError(CloseCode.RESOURCE_LIMIT, link.close_reason or "link closed")
        link.dialled = (host, port)
        if link.peer_identity is not None:
            with contextlib.suppress(RegistryError):  # background write: dropped if degraded
                self.peers.upsert_peer(host, port, self.clock.wall(), key=link.peer_identity)
        return link

    async def link_to(
        self, identity: bytes, endpoints: Sequence[Endpoint] = (), *, for_peer: bool = False
    ) -> LinkProtocol:
        """An open link to the node with this identity (see the theory above).
        `for_peer`: a relay dialling for a circuit, which may not reach our loopback."""
        link = self.open_link(identity)
        if link is not None:
            return link
        return await self.shared_dial(
            ("node", identity), lambda: self._dial_node(identity, endpoints, for_peer)
        )

    def open_link_at(self, host: str, port: int, identity: bytes | None) -> LinkProtocol | None:
        """An open link we dialled to exactly host:port (to `identity`, if given)."""
        for link in self.all:
            wanted = identity is None or link.peer_identity == identity
            if link.dialled == (host, port) and link.is_open and wanted:
                return link
        return None

    async def dial_endpoint(
        self, host: str, port: int, expected_identity: bytes | None
    ) -> LinkProtocol:
        """Direct mode: a link to this one address (the open one, or a new dial shared
        by concurrent callers), never a link to the same key elsewhere."""
        link = self.open_link_at(host, port, expected_identity)
        if link is not None:
            return link

        async def dial_via() -> LinkProtocol:
            link = await self.dial(host, port, expected_identity=expected_identity)
            self._via.add(link)
            return link

        return await self.shared_dial(("via", host, port, expected_identity), dial_via)

    async def shared_dial(
        self, key: object, make: Callable[[], Awaitable[LinkProtocol]]
    ) -> LinkProtocol:
        pending = self._dialing.get(key)
        if pending is None:
            pending = asyncio.ensure_future(make())
            self._dialing[key] = pending
            pending.add_done_callback(lambda _f: self._dialing.pop(key, None))
        return await asyncio.shield(pending)

    async def _dial_node(
        self, identity: bytes, endpoints: Sequence[Endpoint], for_peer: bool
    ) -> LinkProtocol:
        if identity in self._suspects:
            self._suspects.discard(identity)
            body = await self.node_records.fresh_node_record(identity)
        else:
            body = self.node_records.node_record(identity)
            if (body is None or not body.addresses) and not endpoints:
                body = await self.node_records.fresh_node_record(identity)
        given = [(e.host, e.port) for e in endpoints]
        errors: list[str] = []
        tried: set[tuple[str, int]] = set()
        link = await self._try(identity, given, body, for_peer, tried, errors)
        if link is None:
            # The node may have moved: a fresh lookup before the failure is reported.
            fresh = await self.node_records.fresh_node_record(identity)
            if fresh is not None:
                link = await self._try(identity, [], fresh, for_peer, tried, errors)
        if link is None:
            raise StreamFailed(
                StreamError.OWNER_UNREACHABLE,
                f"{fingerprint(identity)}: " + ("; ".join(errors) or "no address known"),
            )
        return link

    async def _try(
        self,
        identity: bytes,
        given: list[tuple[str, int]],
        body: NodeBody | None,
        for_peer: bool,
        tried: set[tuple[str, int]],
        errors: list[str],
    ) -> LinkProtocol | None:
        candidates = given + [(a.host, a.port) for a in (body.addresses if body else ())]
        for where in candidates:
            if where in tried:
                continue
            tried.add(where)
            if for_peer and not dialable(where[0], list(self.listen_addresses)):
                errors.append(f"{format_endpoint(*where)}: not dialled (address not allowed)")
                continue
            try:
                return await self.dial(
                    *where,
                    remote_link_key=body.link_key if body else None,
                    expected_identity=identity,
                )
            except (OSError, TimeoutError, VX6Error) as exc:
                errors.append(f"{format_endpoint(*where)}: {exc or 'timeout'}")
        return None

    # ------------------------------------------------------------------ moves
    def own_addresses_changed(self, hosts: set[str]) -> None:
        """Our address changed: links bound to an address we no longer have are dead
        (nothing will ever arrive on them), so close them now; the peer keepers redial
        at once from a current address and push the fresh node record."""
        for link in list(self.all):
            local = link.local_address
            if local and not is_loopback(local[0]) and local[0] not in hosts:
                link.close(CloseCode.NORMAL, "our address changed")

    def peer_moved(self, key: bytes, body: NodeBody) -> None:
        """A peer published new addresses: a link we dialled to an address it no longer
        has is stale (its packets go nowhere), so close it now; the next stream redials
        the new address instead of waiting for the idle timeout."""
        current = {(ep.host, ep.port) for ep in body.addresses}
        for link in list(self.all):
            if link in self._via:
                continue  # an address the user gave: it may be one the record never lists
            if link.peer_identity == key and link.dialled and link.dialled not in current:
                log.info(
                    "peer %s moved away from %s; closing that link", fingerprint(key), link.dialled
                )
                link.close(CloseCode.NORMAL, "peer moved to a new address")

    def close_all(self, code: CloseCode, reason: str) -> None:
        for link in list(self.all):
            link.close(code, reason)

    # ------------------------------------------------------------------ LinkOwner
    def link_established(self, link: LinkProtocol) -> None:
        assert link.peer_identity is not None
        if not self.table.established(link):
            return  # refused: closed already
        self._admitted.add(link)
        self.all.add(link)
        self.by_key[link.peer_identity] = link
        self.count("links_established")

    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        self.table.closed(link)
        self.all.discard(link)
        self._identified.discard(link)
        self._via.discard(link)
        if link in self._admitted:
            self._admitted.discard(link)
            for handler in self._closed:
                handler(link, code, reason, by_peer)
        key = link.peer_identity
        if key is not None and self.by_key.get(key) is link:
            del self.by_key[key]
            # Another open link to the same key (a via link and a named one) takes over.
            for other in self.all:
                if other.peer_identity == key and other.is_open:
                    self.by_key[key] = other
                    break
        if code not in (CloseCode.NORMAL, CloseCode.SHUTDOWN):
            self.count("links_failed")
        if code == CloseCode.IDLE_TIMEOUT and link.peer_identity is not None:
            self._suspects.add(link.peer_identity)  # it may have moved: see _dial_node

    # A link refused on establishment is closed inside its own event dispatch; events
    # that came in the same read are dropped here, so no role keeps state for it.
    def stream_requested(self, link: LinkProtocol, sid: int, service: str, flags: int) -> None:
        if link.closed_future.done():
            return
        self.table.touch(link)
        if flags & OPEN_FLAG_IDENTIFY and link not in self._identified:
            # Before the OPEN's answer, so the asker has them when it sees the answer.
            self._identified.add(link)
            link.send_records(self._identity_records())
        self._stream(link, sid, service, flags)

    def cells_received(self, link: LinkProtocol, chunks: tuple[bytes | memoryview, ...]) -> None:
        if link.closed_future.done():
            return
        self.table.touch(link)
        self._cells(link, chunks)

    def records_received(self, link: LinkProtocol, records: tuple[bytes, ...]) -> None:
        if link.closed_future.done():
            return
        self._records(link, records)

    def link_paused(self, link: LinkProtocol, paused: bool) -> None:
        for handler in self._paused:
            handler(link, paused)


def _refuse_streams(link: LinkProtocol, sid: int, service: str, flags: int) -> None:
    link.reject_stream(sid, StreamError.UNKNOWN_SERVICE, "this node serves no streams")


def _drop_cells(link: LinkProtocol, chunks: tuple[bytes | memoryview, ...]) -> None:
    link.close(CloseCode.PROTOCOL_ERROR, "this node takes no circuits")


def _drop_records(link: LinkProtocol, records: tuple[bytes, ...]) -> None:
    pass
