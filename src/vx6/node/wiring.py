"""The composition root: builds one node's roles, wires them together, runs them.

Theory of operation. This file only wires. `Node.__init__` reads the home (keys, config,
registry) and builds each role with the narrow collaborators it uses, in dependency
order; where two roles need each other (the owner side trusts keys the link table asks
about, the router tells the table which links carry circuits), the later one is
registered with the earlier (`use_*`, `on_*`). Link events reach the roles through
`Links`, the hub that owns every link:

* inbound connection / handshake done -> the admission table admits, refuses or evicts;
* records received -> `RecordHub` (record rules, registry, passed on to sync neighbours);
* stream requested -> `OwnerSide` (known service? allowed key? target reachable?);
* cells -> `CircuitRouter` (relaying, client circuits, exits ending at the owner side);
* paused / closed -> the router and the records hub.

`Node.run()` listens (dual-stack, IPv6 first), joins the DHT, publishes, keeps links to
the configured peers, serves the control socket and waits for a stop request
(SIGTERM/SIGINT or the `stop` control op); everything runs under one TaskGroup. SIGHUP
(or the `reload` control op) has the `Reloader` apply config.toml's changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
from collections.abc import Coroutine
from typing import Any

from vx6.core.circuit.limits import RelayLimits
from vx6.core.dht import events as dht_events
from vx6.crypto.keys import StaticKey, fingerprint
from vx6.errors import CloseCode, VX6Error
from vx6.net import ratelog
from vx6.net.accept import serve_links
from vx6.net.addresses import format_endpoint
from vx6.net.control import ControlServer, serve_control
from vx6.net.dht import DhtService
from vx6.net.listen import open_listeners
from vx6.net.ports import SYSTEM_CLOCK, SYSTEM_RANDOM, Clock, Random
from vx6.net.router import CircuitRouter
from vx6.node.control import ControlOps, NodeInfo
from vx6.node.forwards import ClientSide
from vx6.node.hidden import build_hidden_role
from vx6.node.link_table import LinkTable, TrustedKeys
from vx6.node.links import Links
from vx6.node.onion_rotation import onion_key_loop
from vx6.node.owner import OwnerSide
from vx6.node.peers import BootstrapKeeper, PeerKeeper
from vx6.node.pool import CircuitPool
from vx6.node.publisher import NodeKeys, Publisher
from vx6.node.records import RecordHub
from vx6.node.relay_directory import RelayDirectory
from vx6.node.reload import Reloader
from vx6.node.remembered import every, remember_contacts, remembered_peers
from vx6.node.resolver import Resolver
from vx6.store.config import NodeConfig, ServiceConfig, load_config
from vx6.store.home import Home
from vx6.store.registry import Registry, RegistryWriteError
from vx6.wire.records import Kind, decode_record

log = logging.getLogger("vx6.node")

REMEMBER_EVERY = 60.0


class Node:
    def __init__(
        self,
        home: Home,
        cli: NodeConfig | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        random: Random = SYSTEM_RANDOM,
    ) -> None:
        self.home = home
        home.ensure()
        flags = cli or NodeConfig()
        self.config = cfg = load_config(home.config_path).with_flags(flags)
        self.clock = clock
        self.random = random
        identity = self.identity = home.identity()
        link_key = home.link_key()
        self.onion_keys = onion_keys = home.onion_keys(clock.wall(), cfg.onion_key_lifetime)
        self.registry = registry = Registry(home.registry_path, cfg.registry_limits)
        if cfg.name:
            # A full disk degrades the node (the registry logs it); it does not stop it.
            with contextlib.suppress(RegistryWriteError):
                registry.set_meta("name", cfg.name)
        self.name = cfg.name or registry.get_meta("name")
        self.keys = NodeKeys(identity, link_key, onion_keys[0])
        self.counters: dict[str, int] = {}
        self.listen_addresses: list[tuple[str, int]] = []
        services: dict[str, ServiceConfig] = {}
        count = self.count

        self.trusted = trusted = TrustedKeys(registry, clock)
        trusted.remember_peers(cfg.peers)
        table = LinkTable(cfg.link_limits, count, trusted, clock)
        self.dht = dht = DhtService(identity, self._dht_event, clock, random)
        self.records = records = RecordHub(registry, dht, trusted=trusted, count=count, clock=clock)
        self.resolver = resolver = Resolver(registry, records.lookup, clock)
        self.links = links = Links(
            identity,
            link_key,
            table,
            node_records=resolver,
            peers=registry,
            count=count,
            clock=clock,
            listen_addresses=self.listen_addresses,
        )
        self.publisher = publisher = Publisher(
            self.keys,
            self.name,
            cfg,
            services=services,
            listen_addresses=self.listen_addresses,
            registry=registry,
            records=records,
            dht=dht,
            addresses_changed=links.own_addresses_changed,
            clock=clock,
        )
        self.owner = owner = OwnerSide(
            services,
            cfg.owner_limits,
            registry=registry,
            resolver=resolver,
            publisher=publisher,
            count=count,
            clock=clock,
            spawn=self.spawn,
        )
        self.router = router = CircuitRouter(
            identity,
            onion_keys,
            RelayLimits(idle_timeout=cfg.circuit_idle_timeout),
            relay=bool(cfg.relay),
            links=links,
            on_stream=owner.stream_requested,
            spawn=self.spawn,
            count=count,
            clock=clock,
            random=random,
        )
        self.pool = pool = CircuitPool(
            identity.public,
            cfg.circuit_lifetime,
            builder=router,
            resolver=resolver,
            links=links,
            registry=registry,
            spawn=self.spawn,
            clock=clock,
            rng=self.uniform,
            own_endpoints=publisher.advertised,
        )
        self.relay_directory = relay_directory = RelayDirectory(
            lookup=records.lookup, known=pool.known_relays, clock=clock
        )
        self.client = client = ClientSide(
            resolver, links, pool, registry, self.spawn, clock, proofs=records
        )
        self.hidden = hidden = build_hidden_role(
            identity=identity, relay=bool(cfg.relay), router=router, relays=pool, dht=dht,
            registry=registry, home=home, allow_lists=owner, streams=owner.streams,
            clock=clock, random=random, spawn=self.spawn, count=count,
        )  # fmt: skip
        # SIGHUP and `vx6 reload`: config.toml's services and forwards, flags still winning.
        self.reloader = reloader = Reloader(
            home.config_path, flags, cfg, services=owner, forwards=client, hidden=hidden
        )
        self.ops = ControlOps(
            NodeInfo(self.name, identity.public, home.path, clock.wall(), self.listen_addresses),
            links=links,
            owner=owner,
            client=client,
            pool=pool,
            router=router,
            records=records,
            resolver=resolver,
            publisher=publisher,
            registry=registry,
            dht=dht,
            counters=self.counters,
            stop=self.stop,
            peering=self.peering,
            clock=clock,
            reload=reloader.report,
            hidden=hidden,
        )

        # The back references, and the link events to the roles that take them.
        trusted.use_allow_lists(owner.allow_lists)
        table.use_circuit_check(router.carries_circuits)
        records.on_node_record(links.peer_moved)
        pool.use_relay_source(relay_directory)
        client.use_hidden(hidden)
        links.on_stream(owner.stream_requested)
        links.on_cells(router.cells_received)
        links.on_records(records.received)
        links.on_identify(publisher.identity_records)
        links.on_closed(lambda link, *_: router.link_closed(link))
        links.on_closed(records.link_closed)
        links.on_paused(router.link_paused)
        links.on_paused(records.link_paused)

        self.peer_keepers: list[PeerKeeper] = []
        self.bootstrap_keeper: BootstrapKeeper | None = None
        self._control: ControlServer | None = None
        self._listeners: list[socket.socket] = []
        self._stop = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._running = False  # started and not stopping: a SIGHUP reloads now
        self._hangup_pending = False

    def _rotated(self, onion_keys: list[StaticKey]) -> None:
        """New onion keys (node/onion_rotation.py): CREATEs use them, the record says so."""
        self.onion_keys = onion_keys
        self.keys.onion_key = onion_keys[0]
        self.router.rotate_onion_keys(onion_keys)
        self.publisher.publish_node()
        self.count("onion_key_rotations")

    def _dht_event(self, event: dht_events.Event) -> None:
        if isinstance(event, dht_events.RepublishDue):
            # A descriptor's service signs its next revision on its own timer.
            if decode_record(event.record).kind != Kind.HIDDEN_DESCRIPTOR:
                self.publisher.publish_all()
        else:
            self.records.on_dht_event(event)

    # ------------------------------------------------------------------ lifecycle
    async def run(self, ready: asyncio.Event | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self._hangup)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                await self._listen()
                host, port = self.listen_addresses[0]
                await self.dht.start(host, port)
                cfg = self.config
                remembered = [] if (cfg.peers or cfg.bootstrap) else self._remembered_peers()
                self.bootstrap_keeper = BootstrapKeeper(
                    cfg.bootstrap + cfg.peers + remembered,
                    ping=self.dht.bootstrap,
                    contacts=self.dht.contact_addresses,
                    now=self.clock.monotonic,
                    rand=self.uniform,
                    sleep=self.clock.sleep,
                    schedule=cfg.peer_retry,
                )
                tg.create_task(self.bootstrap_keeper.run())
                self.owner.load_services(cfg.services)
                self.publisher.publish_all()
                self.hidden.load(cfg.hidden)
                for host, port in cfg.peers or remembered:
                    keeper = PeerKeeper(
                        host,
                        port,
                        connect=self._sync_link,
                        now=self.clock.monotonic,
                        rand=self.uniform,
                        sleep=self.clock.sleep,
                        schedule=cfg.peer_retry,
                    )
                    self.peer_keepers.append(keeper)
                    tg.create_task(keeper.run())
                # Before the control socket: a node that answers `status` has its configured
                # forwards listening (uvloop resolves the listen address on a thread, which
                # left a window where `forwards` missed the later ones).
                await self.client.start_config_forwards(cfg.forwards.values())
                self._control = await serve_control(
                    self.home.control_path, self.ops.handle, self.client.nc
                )
                tg.create_task(self.publisher.republish_loop())
                tg.create_task(self.records.reconcile_loop())
                tg.create_task(every(REMEMBER_EVERY, self.remember_contacts, self.clock.sleep))
                tg.create_task(self.pool.maintain_loop())
                tg.create_task(self.relay_directory.run())
                tg.create_task(ratelog.flush_loop(self.clock.sleep))
                tg.create_task(
                    onion_key_loop(
                        self.home,
                        cfg.onion_key_lifetime,
                        self.onion_keys,
                        self._rotated,
                        self.clock,
                    )
                )
                log.info(
                    "node %s (%s) listening on %s; open-file limit %d",
                    self.name or "-",
                    fingerprint(self.identity.public),
                    ", ".join(format_endpoint(h, p) for h, p in self.listen_addresses),
                    resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                )
                self._running = True
                if self._hangup_pending:
                    self._hangup()
                if ready is not None:
                    ready.set()
                await self._stop.wait()
                raise _Stopping()
        except* _Stopping:
            pass
        finally:
            self._running = False  # a SIGHUP from here on has nothing to reload
            await self._shutdown()

    def stop(self) -> None:
        log.info("stopping")
        self._stop.set()

    def _hangup(self) -> None:
        """SIGHUP: reload config.toml (node/reload.py); during startup, once started."""
        self._hangup_pending = not self._running
        if self._running:
            self.spawn(self.reloader.hangup())

    async def _shutdown(self) -> None:
        await self.client.stop_all()
        self.hidden.close()
        self.pool.close()
        with contextlib.suppress(Exception):  # best effort: the registry may be the problem
            self.remember_contacts()
        self.dht.close()
        for sock in self._listeners:
            sock.close()
        self.links.close_all(CloseCode.SHUTDOWN, "node shutting down")
        if self._control is not None:
            self._control.close()  # removes the socket file only if it is the one we bound
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

    # ------------------------------------------------------------------ links
    async def _listen(self) -> None:
        assert self._tasks is not None
        endpoints = self.config.listen or [("::", 4242)]
        for sock, host in open_listeners(endpoints):  # names resolved; ListenError if not
            self._listeners.append(sock)
            bound = sock.getsockname()
            self.listen_addresses.append((host, bound[1]))
            where = format_endpoint(host, bound[1])
            self._tasks.create_task(serve_links(sock, self.links.admit, self.count, where=where))

    def _remembered_peers(self) -> list[tuple[str, int]]:
        return remembered_peers(self.registry, self.identity.public)

    def remember_contacts(self) -> None:
        remember_contacts(self.registry, self.dht.node.table.contacts(), self.clock.wall())

    async def _sync_link(self, host: str, port: int) -> asyncio.Future[None]:
        """Dial a configured peer as a sync link (its `PeerKeeper` redials with backoff)."""
        link = await self.links.dial(host, port)
        if link.peer_identity is not None:
            self.trusted.peer_keys.add(link.peer_identity)
        if link.is_open:
            self.records.start_sync(link)
        return link.closed_future

    def uniform(self) -> float:
        """A float in [0, 1) from the node's randomness (backoff jitter)."""
        return int.from_bytes(self.random(7), "big") / (1 << 56)

    def peering(self) -> dict[str, object]:
        """For `vx6 status`: each configured peer's keeper (state, attempts, next retry)."""
        keeper = self.bootstrap_keeper
        return {
            "bootstrap": keeper.describe() if keeper else [],
            "sync_peers": [k.describe() for k in self.peer_keepers],
        }


class _Stopping(VX6Error):
    pass
