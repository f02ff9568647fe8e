"""The composition root: one VX6 node, everything under one TaskGroup.

Theory of operation. `Node.run()` opens the registry, loads the keys, listens for links
(dual-stack, IPv6 first), publishes its signed records, keeps links to its configured
peers, serves the control socket, and waits for a stop request (SIGTERM/SIGINT or the
`stop` control op). Links are the only way bytes enter from the network; each is owned
by a `LinkProtocol`, and the node only reacts to what the link reports:

* connection accepted / link established -> the admission table (`vx6.core.admission`)
  admits, refuses or evicts by source address, then by key and trust; an admitted link
  is remembered by the peer's identity key; if we dialled it as a sync peer, we push our
  records (the seed of peer sync);
* records received -> `vx6.node.records` checks them by the record rules, stores what is
  newer and passes it on to the other sync neighbours (and the DHT feeds it too);
* stream requested -> the owner side (`vx6.node.owner`) decides: known service? allowed key?
  target reachable? and then joins the stream to a connection to the target.

The client side (resolve a name, find or dial a link, open a stream) is `vx6.node.forwards`;
the node's own records are `vx6.node.publisher`; the DHT socket is `vx6.net.dht`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from vx6.core.dht.contacts import prefix_of
from vx6.crypto.keys import fingerprint
from vx6.errors import CloseCode, LinkError, StreamError, StreamFailed, VX6Error
from vx6.net import ratelog
from vx6.net.accept import listen_socket, serve_links
from vx6.net.addresses import dialable, format_endpoint, is_loopback, network_of
from vx6.net.control import serve_control
from vx6.net.dht import DhtService
from vx6.net.link import LinkOwner, LinkProtocol, dial
from vx6.net.router import CircuitRouter
from vx6.node.control import ControlOps
from vx6.node.forwards import ClientSide
from vx6.node.link_table import LinkTable, TrustedKeys
from vx6.node.owner import OwnerSide
from vx6.node.pool import CircuitPool
from vx6.node.publisher import Publisher
from vx6.node.records import RecordHub
from vx6.store.config import NodeConfig, load_config
from vx6.store.home import Home
from vx6.store.registry import Registry, RegistryError, RegistryWriteError
from vx6.wire.cells import Endpoint

log = logging.getLogger("vx6.node")

PEER_RETRY_MIN = 1.0
PEER_RETRY_MAX = 30.0
REMEMBER_EVERY = 60.0
RATELOG_FLUSH_EVERY = 10.0


class Node(LinkOwner):
    def __init__(self, home: Home, cli: NodeConfig | None = None) -> None:
        self.home = home
        home.ensure()
        file_cfg = load_config(home.config_path)
        self.config = file_cfg.with_flags(cli or NodeConfig())
        self.identity = home.identity()
        self.link_key = home.link_key()
        self.onion_keys = home.onion_keys(time.time())
        self.onion_key = self.onion_keys[0]
        self.registry = Registry(home.registry_path, self.config.registry_limits)
        if self.config.name:
            # A full disk degrades the node (the registry logs it); it does not stop it.
            with contextlib.suppress(RegistryWriteError):
                self.registry.set_meta("name", self.config.name)
        self.name = self.config.name or self.registry.get_meta("name")
        self.started = time.time()
        self.links: dict[bytes, LinkProtocol] = {}
        self.all_links: set[LinkProtocol] = set()
        self.listen_addresses: list[tuple[str, int]] = []
        self.counters: dict[str, int] = {}
        self.publisher = Publisher(self)
        self.owner = OwnerSide(self)
        self.client = ClientSide(self)
        self.ops = ControlOps(self)
        self.records = RecordHub(self)
        self.dht = DhtService(self.identity, self.records.on_dht_event)
        self.circuits = CircuitRouter(self)
        self.pool = CircuitPool(self)
        self._servers: list[asyncio.AbstractServer] = []
        self._listeners: list[socket.socket] = []
        self.trusted = TrustedKeys(self.registry, self._allow_lists)
        self.trusted.remember_peers(self.config.peers)
        self.link_table = LinkTable(
            self.config.link_limits, self.count, self.trusted, self.circuits.carries_circuits
        )
        self._stop = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None

    # ------------------------------------------------------------------ lifecycle
    async def run(self, ready: asyncio.Event | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                await self._listen()
                host, port = self.listen_addresses[0]
                await self.dht.start(host, port)
                cfg = self.config
                remembered = [] if (cfg.peers or cfg.bootstrap) else self._remembered_peers()
                self.dht.bootstrap(cfg.bootstrap + cfg.peers + remembered)
                self.owner.load_services()
                self.publisher.publish_all()
                for host, port in cfg.peers or remembered:
                    tg.create_task(self._keep_peer(host, port))
                # Before the control socket: a node that answers `status` has its configured
                # forwards listening (uvloop resolves the listen address on a thread, which
                # left a window where `forwards` missed the later ones).
                await self.client.start_config_forwards()
                self._servers.append(
                    await serve_control(self.home.control_path, self.ops.handle, self.client.nc)
                )
                tg.create_task(self.publisher.republish_loop())
                tg.create_task(self.records.reconcile_loop())
                tg.create_task(self.remember_loop())
                tg.create_task(self.pool.maintain_loop())
                tg.create_task(self._ratelog_loop())
                log.info(
                    "node %s (%s) listening on %s; open-file limit %d",
                    self.name or "-",
                    self.fingerprint,
                    ", ".join(
                        f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.listen_addresses
                    ),
                    resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                )
                if ready is not None:
                    ready.set()
                await self._stop.wait()
                raise _Stopping()
        except* _Stopping:
            pass
        finally:
            await self._shutdown()

    def stop(self) -> None:
        log.info("stopping")
        self._stop.set()

    async def _shutdown(self) -> None:
        await self.client.stop_all()
        self.pool.close()
        with contextlib.suppress(Exception):  # best effort: the registry may be the problem
            self.remember_contacts()
        self.dht.close()
        for server in self._servers:
            server.close()
        for sock in self._listeners:
            sock.close()
        for link in list(self.all_links):
            link.close(CloseCode.SHUTDOWN, "node shutting down")
        with contextlib.suppress(FileNotFoundError):
            self.home.control_path.unlink()
        self.registry.close()
        log.info("stopped")

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a task under the node's TaskGroup. A failing task is logged and dropped:
        one broken stream or peer must never take the node down with it."""
        assert self._tasks is not None

        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("background task failed")

        self._tasks.create_task(guarded())

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity.public)

    # ------------------------------------------------------------------ links
    async def _listen(self) -> None:
        assert self._tasks is not None
        endpoints = self.config.listen or [("::", 4242)]
        for host, port in endpoints:
            sock = listen_socket(host, port)
            self._listeners.append(sock)
            bound = sock.getsockname()
            self.listen_addresses.append((host, bound[1]))
            where = format_endpoint(host, bound[1])
            self._tasks.create_task(serve_links(sock, self._admit, self.count, where=where))

    def _admit(self, sock: socket.socket, source: tuple[str, int]) -> LinkProtocol | None:
        link = self.link_table.admit(
            source,
            lambda: LinkProtocol(
                self, initiator=False, identity=self.identity, link_key=self.link_key
            ),
        )
        if link is not None:
            self.all_links.add(link)
        return link

    def _allow_lists(self) -> list[frozenset[bytes]]:
        services = list(self.owner.services.values())
        return [self.owner.allowed_keys(svc) for svc in services if not svc.public]

    async def dial(
        self,
        host: str,
        port: int,
        *,
        remote_link_key: bytes | None = None,
        expected_identity: bytes | None = None,
        sync: bool = False,
    ) -> LinkProtocol:
        link = await dial(
            self,
            host,
            port,
            identity=self.identity,
            link_key=self.link_key,
            remote_link_key=remote_link_key,
            expected_identity=expected_identity,
        )
        if link.closed_future.done():  # refused by our own table, or gone already
            raise LinkError(CloseCode.RESOURCE_LIMIT, link.close_reason or "link closed")
        link.dialled = (host, port)
        if link.peer_identity is not None:
            with contextlib.suppress(RegistryError):  # background write: dropped if degraded
                self.registry.upsert_peer(host, port, time.time(), key=link.peer_identity)
        if sync and link.is_open:
            self.records.start_sync(link)
        return link

    def _remembered_peers(self, count: int = 3) -> list[tuple[str, int]]:
        """With no peer given, rejoin through nodes we reached before: the most recently
        seen, at most one per network (/48 for IPv6, /24 for IPv4) for diversity."""
        chosen: list[tuple[str, int]] = []
        networks: set[str] = set()
        for peer in self.registry.peers(limit=200):
            if peer.key == self.identity.public:
                continue
            # Loopback and the test prefixes count per host, like the DHT's caps.
            net = network_of(peer.host) if prefix_of(peer.host) is not None else peer.host
            if net in networks:
                continue
            networks.add(net)
            chosen.append((peer.host, peer.port))
            if len(chosen) == count:
                break
        if chosen:
            log.info("rejoining through remembered peers: %s", chosen)
        return chosen

    def remember_contacts(self, count: int = 8) -> None:
        """Keep a few DHT contacts that are in our table now (they answered recently),
        so a restart without any bootstrap can rejoin through them."""
        now = time.time()
        with contextlib.suppress(RegistryError):  # background write: dropped if degraded
            for contact in self.dht.node.table.contacts()[:count]:
                host, port = contact.address
                self.registry.upsert_peer(host, port, now)

    async def remember_loop(self) -> None:
        while True:
            await asyncio.sleep(REMEMBER_EVERY)  # periodic timer, not synchronisation
            self.remember_contacts()

    async def _ratelog_loop(self) -> None:
        # A flood that has stopped still gets its one summary line written.
        while True:
            await asyncio.sleep(RATELOG_FLUSH_EVERY)  # periodic timer, not synchronisation
            ratelog.flush_all()

    def own_addresses_changed(self, hosts: set[str]) -> None:
        """Our address changed: links bound to an address we no longer have are dead
        (nothing will ever arrive on them), so close them now; the peer keepers redial
        at once from a current address and push the fresh node record."""
        for link in list(self.all_links):
            local = link.local_address
            if local and not is_loopback(local[0]) and local[0] not in hosts:
                link.close(CloseCode.NORMAL, "our address changed")

    async def _keep_peer(self, host: str, port: int) -> None:
        """Keep one sync link to a configured peer, redialling with backoff."""
        delay = PEER_RETRY_MIN
        while not self._stop.is_set():
            try:
                link = await self.dial(host, port, sync=True)
                if link.peer_identity is not None:
                    self.trusted.peer_keys.add(link.peer_identity)
                delay = PEER_RETRY_MIN
                await link.closed_future
            except (OSError, VX6Error, TimeoutError) as exc:
                log.info("peer %s:%d unreachable: %s", host, port, exc)
            await asyncio.sleep(delay)  # backoff between redials, not synchronisation
            delay = min(delay * 2, PEER_RETRY_MAX)

    def link_established(self, link: LinkProtocol) -> None:
        assert link.peer_identity is not None
        if not self.link_table.established(link):
            return  # refused: closed already
        self.all_links.add(link)
        self.links[link.peer_identity] = link
        self.count("links_established")

    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        self.link_table.closed(link)
        self.circuits.link_closed(link)
        self.all_links.discard(link)
        self.records.neighbours.pop(link, None)
        if link.peer_identity is not None and self.links.get(link.peer_identity) is link:
            del self.links[link.peer_identity]
        if code not in (CloseCode.NORMAL, CloseCode.SHUTDOWN):
            self.count("links_failed")
        if code == CloseCode.IDLE_TIMEOUT and link.peer_identity is not None:
            self.client.suspect(link.peer_identity)

    # A link refused on establishment is closed inside its own event dispatch; events
    # that came in the same read are dropped here, so no role keeps state for it.
    def stream_requested(self, link: LinkProtocol, sid: int, service: str, flags: int) -> None:
        if link.closed_future.done():
            return
        self.link_table.touch(link)
        self.owner.stream_requested(link, sid, service, flags)

    def cells_received(self, link: LinkProtocol, chunks: tuple[bytes | memoryview, ...]) -> None:
        if link.closed_future.done():
            return
        self.link_table.touch(link)
        self.circuits.cells_received(link, chunks)

    def link_paused(self, link: LinkProtocol, paused: bool) -> None:
        self.circuits.link_paused(link, paused)
        if not paused:
            self.records.continue_dump(link)

    async def link_to(self, identity: bytes, endpoints: Sequence[Endpoint] = ()) -> LinkProtocol:
        """An open link to the node with this identity: the one we have, or a dial to
        the given endpoints and then the addresses in its node record, each checked in
        the handshake to really be that node. Concurrent callers share one dial."""
        link = self.links.get(identity)
        if link is not None and link.is_open:
            return link
        return await self.client.shared_dial(
            ("node", identity), lambda: self._dial_node(identity, endpoints)
        )

    async def _dial_node(self, identity: bytes, endpoints: Sequence[Endpoint]) -> LinkProtocol:
        body = self.client.node_record(identity)
        candidates = [(e.host, e.port) for e in endpoints]
        candidates += [(a.host, a.port) for a in (body.addresses if body else ())]
        tried: set[tuple[str, int]] = set()
        errors: list[str] = []
        for where in candidates:
            if where in tried:
                continue
            tried.add(where)
            if not dialable(where[0], self.listen_addresses):
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
        raise StreamFailed(
            StreamError.OWNER_UNREACHABLE,
            f"{fingerprint(identity)}: " + ("; ".join(errors) or "no address known"),
        )

    # ------------------------------------------------------------------ records
    def records_received(self, link: LinkProtocol, records: tuple[bytes, ...]) -> None:
        if link.closed_future.done():
            return
        self.records.received(link, records)


class _Stopping(VX6Error):
    pass
