"""Hidden services at the node: the roles, built and handed their collaborators here.

Theory of operation. This module composes the four hidden-service roles for one node
(node/wiring.py builds it once):

* the descriptor directory (node/hidden_dht.py) over the node's DHT, which only the
  relay role uses, as a directory proxy for others;
* on a relay, the intro-point, rendezvous-point and directory-proxy role
  (node/hidden_relay.py), registered with the router;
* the client's and each service's `CircuitDirectory` (node/hidden_dir_circuit.py):
  descriptors fetched and published through a proxy, never by this node's DHT node;
* the client (node/hidden_client.py), which `connect`, `nc` and forwards use for an
  alias or a petname (`target`);
* one `HiddenServiceHost` per `[hidden.NAME]` of config.toml (node/hidden_service.py),
  started with the node and added, changed or removed on reload (`configure`,
  `unconfigure`); each keeps its alias key and state in the home.

A forward to an alias is an ordinary Forward whose opener asks the client for a joined
path and opens a stream on it, so port forwarding and `vx6 forwards` work unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from vx6.core.hidden.profiles import PathProfile
from vx6.core.hidden.target import AliasTarget, parse_target
from vx6.core.routes import RelayCandidate, plan_route
from vx6.crypto.keys import Identity
from vx6.errors import UsageError
from vx6.net.circuit import ClientPath
from vx6.net.forward import Forward
from vx6.net.pipe import StreamPipe
from vx6.net.ports import Clock, Count, Random, Spawn
from vx6.node.hidden_client import HiddenClient
from vx6.node.hidden_dht import DescriptorDht, DescriptorDirectory
from vx6.node.hidden_dir_circuit import CircuitDirectory
from vx6.node.hidden_hosts import AllowLists, ServiceHome, make_host
from vx6.node.hidden_ports import Builder, Relays
from vx6.node.hidden_relay import CircuitActions, HiddenRelayRole
from vx6.node.hidden_service import HiddenServiceHost
from vx6.node.owner_streams import OwnerStreams
from vx6.store.config import ForwardConfig
from vx6.store.hidden_config import HiddenServiceConfig

log = logging.getLogger("vx6.hidden")

CLIENT_DIRECTORY_HOPS = 3  # two relays, then the directory proxy
HIDDEN_SERVICE_NAME = "hidden"  # what BEGIN names on a joined path: it has one target


class PetnameRegistry(Protocol):
    def get_petname(self, name: str) -> bytes | None: ...


class RelayRouter(CircuitActions, Protocol):
    def use_hidden_relay(self, role: HiddenRelayRole) -> None: ...


HostFactory = Callable[[HiddenServiceConfig], HiddenServiceHost]


class HiddenRole:
    def __init__(
        self,
        client: HiddenClient,
        directory: DescriptorDirectory,
        *,
        make_host: HostFactory,
        registry: PetnameRegistry,
        spawn: Spawn,
        relay_role: HiddenRelayRole | None = None,
        client_directory: CircuitDirectory | None = None,
    ) -> None:
        self.client = client
        self.client_directory = client_directory
        self.directory = directory
        self.relay_role = relay_role
        self._make_host = make_host
        self._registry = registry
        self._spawn = spawn
        self.hosts: dict[str, HiddenServiceHost] = {}

    # ------------------------------------------------------------------ services
    def load(self, configured: Mapping[str, HiddenServiceConfig]) -> None:
        for cfg in configured.values():
            self.configure(cfg)

    def configure(self, cfg: HiddenServiceConfig) -> None:
        """A `[hidden.NAME]` added or changed: (re)start its host. The alias key is in
        the home, so a changed service keeps its alias."""
        self.unconfigure(cfg.name)
        host = self.hosts[cfg.name] = self._make_host(cfg)
        host.start()
        log.info("hidden service %s: %s, %s profile", cfg.name, host.alias, cfg.profile)

    def unconfigure(self, name: str) -> None:
        host = self.hosts.pop(name, None)
        if host is not None:
            host.close()

    def describe(self) -> list[dict[str, object]]:
        return [host.describe() for host in self.hosts.values()]

    # ------------------------------------------------------------------ client
    def target(self, text: str) -> AliasTarget | None:
        """The hidden service `text` names (an alias or a petname), else None."""
        if "." in text:
            return None
        found = parse_target(text, self._registry.get_petname)
        return found if isinstance(found, AliasTarget) else None

    def close_paths(self, text: str) -> int:
        """Close the client's joined paths to the alias or petname `text`."""
        target = self.target(text)
        if target is None:
            raise UsageError(f"{text!r} names no hidden service")
        return self.client.close_paths(target.key)

    async def path(self, target: AliasTarget, profile: str) -> ClientPath:
        return await self.client.path_for(target.key, PathProfile(profile or "fast"))

    async def open(self, target: AliasTarget, profile: str, pipe: StreamPipe) -> ClientPath:
        path = await self.path(target, profile)
        sid = path.open_stream(HIDDEN_SERVICE_NAME, 0, pipe)
        pipe.bind(path, sid)
        return path

    async def nc(self, target: AliasTarget, profile: str, pipe: StreamPipe) -> None:
        await self.open(target, profile, pipe)
        await pipe.wait_opened()

    async def forward(self, cfg: ForwardConfig, target: AliasTarget) -> Forward:
        """A local port forwarded to a hidden service; its first path is made now, so
        an error (no descriptor, not authorized, ...) is the answer to `connect`."""

        async def opener(pipe: StreamPipe) -> None:
            await self.open(target, cfg.profile, pipe)

        fwd = Forward(
            cfg.name,
            str(target),
            cfg.local_host,
            cfg.local_port,
            opener,
            self._spawn,
            dual_loopback=cfg.dual_loopback,
        )
        fwd.path = f"hidden ({cfg.profile or 'fast'})"
        # The client's own circuit: its side's relays and the rendezvous point (the
        # service's side is the service's business and unknown here).
        fwd.hops = PathProfile(cfg.profile or "fast").side_relays + 1
        fwd.circuits = lambda: self.client.describe_paths(target.key)
        # Listen first: a port in use is the user's mistake and answered at once, as a
        # UsageError like any forward's (it was an internal error with a traceback).
        try:
            await fwd.start()
        except OSError as exc:
            raise UsageError(f"cannot listen on {cfg.local_host}:{cfg.local_port}: {exc}") from exc
        started = time.perf_counter()
        try:
            await self.path(target, cfg.profile)
        except BaseException:
            await fwd.stop()
            raise
        fwd.setup = {"setup_ms": round((time.perf_counter() - started) * 1e3, 1)}
        return fwd

    def close(self) -> None:
        for name in list(self.hosts):
            self.unconfigure(name)
        self.client.close()
        if self.client_directory is not None:
            self.client_directory.close()
        if self.relay_role is not None:
            self.relay_role.close()


class NodeRouter(Builder, RelayRouter, Protocol):
    pass


def build_hidden_role(
    *,
    identity: Identity,
    relay: bool,
    router: NodeRouter,
    relays: Relays,
    dht: DescriptorDht,
    registry: PetnameRegistry,
    home: ServiceHome,
    allow_lists: AllowLists,
    streams: OwnerStreams,
    clock: Clock,
    random: Random,
    spawn: Spawn,
    count: Count,
) -> HiddenRole:
    """The node's hidden-service roles; the relay role only on a relay."""
    directory = DescriptorDirectory(dht, clock=clock, count=count)
    relay_role = None
    if relay:
        relay_role = HiddenRelayRole(router, clock, directory=directory)
        router.use_hidden_relay(relay_role)

    def client_path() -> list[RelayCandidate]:
        """Any 3 relays but this node, the last the proxy (docs/hidden.md section 3)."""
        return plan_route(
            relays.relay_candidates(),
            CLIENT_DIRECTORY_HOPS,
            exclude=(identity.public,),
            rng=lambda: (int.from_bytes(random(7), "big") >> 3) / float(1 << 53),
        )

    client_directory = CircuitDirectory(router, client_path, directory, clock=clock, count=count)
    client = HiddenClient(
        identity,
        identity.private_bytes(),
        builder=router,
        relays=relays,
        descriptors=client_directory,
        clock=clock,
        random=random,
        spawn=spawn,
        count=count,
    )

    def host(cfg: HiddenServiceConfig) -> HiddenServiceHost:
        return make_host(
            cfg,
            directory,
            home=home,
            allow_lists=allow_lists,
            own_identity=identity.public,
            builder=router,
            relays=relays,
            streams=streams,
            clock=clock,
            random=random,
            spawn=spawn,
            count=count,
        )

    return HiddenRole(
        client,
        directory,
        make_host=host,
        registry=registry,
        spawn=spawn,
        relay_role=relay_role,
        client_directory=client_directory,
    )
