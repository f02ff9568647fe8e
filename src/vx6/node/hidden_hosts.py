"""Making a hidden service's host from its `[hidden.NAME]` table and its files.

Theory of operation. `make_host` reads the alias key and state of one service from the
home (node/hidden_service.py holds no file), builds the service core with the guards
the state remembers and an allow-list that resolves names as an exposed service's do,
and hands the host a `save` that writes the state back whenever the core changes its
guards, issues a revision or publishes. The state is written atomically by the home;
a failed write is logged (rate-limited) and the service goes on.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

from vx6.core.hidden.guards import Guard, GuardsChanged
from vx6.core.hidden.guards import GuardState as CoreGuardState
from vx6.core.hidden.service import HiddenServiceCore
from vx6.core.hidden.service_events import Profile, ServiceLimits
from vx6.net.ports import Clock, Count, Random, Spawn
from vx6.net.ratelog import RATELOG
from vx6.node.hidden_dir_circuit import CircuitDirectory, DescriptorChecker
from vx6.node.hidden_ports import Builder, Relays
from vx6.node.hidden_service import HiddenServiceHost
from vx6.node.owner_streams import OwnerStreams
from vx6.store.config import ServiceConfig
from vx6.store.hidden_config import HiddenServiceConfig
from vx6.store.hidden_state import GuardState as StoredGuard
from vx6.store.hidden_state import HiddenState

log = logging.getLogger("vx6.hidden")


class ServiceHome(Protocol):
    def hidden_alias_seed(self, name: str) -> bytes: ...

    def hidden_state(self, name: str) -> HiddenState: ...

    def save_hidden_state(self, name: str, state: HiddenState) -> None: ...


class AllowLists(Protocol):
    def allowed_keys(self, svc: ServiceConfig) -> frozenset[bytes]: ...


def make_host(
    cfg: HiddenServiceConfig,
    checker: DescriptorChecker,
    *,
    home: ServiceHome,
    allow_lists: AllowLists,
    own_identity: bytes,
    builder: Builder,
    relays: Relays,
    streams: OwnerStreams,
    clock: Clock,
    random: Random,
    spawn: Spawn,
    count: Count,
) -> HiddenServiceHost:
    """One hidden service's host, its key and state from the home (made on first use)."""
    seed = home.hidden_alias_seed(cfg.name)
    state = home.hidden_state(cfg.name)
    guards = CoreGuardState(tuple(Guard(g.identity) for g in state.guards))
    # Names in the allow-list resolve like an exposed service's (node/owner.py).
    allow_svc = ServiceConfig(cfg.name, cfg.target_host, cfg.target_port, allow=cfg.allow)

    def allowed() -> frozenset[bytes]:
        return allow_lists.allowed_keys(allow_svc)

    core = HiddenServiceCore(
        Profile.BALANCED if cfg.profile == "balanced" else Profile.FAST,
        ServiceLimits(),
        guards,
        random,
        allowed=lambda key: key is not None and key in allowed(),
        public=cfg.public,
        self_identity=own_identity,
    )

    # Published and fetched back through a directory proxy, guard first (section 3).
    descriptors = CircuitDirectory(
        builder,
        lambda: core.directory_path(clock.monotonic()),
        checker,
        clock=clock,
        count=count,
    )

    def save(changed: GuardsChanged | None, revision: int | None, published: float | None) -> None:
        nonlocal state
        if changed is not None:
            wall = clock.wall()
            chosen = {g.identity: g.chosen_at for g in state.guards}
            state = dataclasses.replace(
                state,
                guards=tuple(
                    StoredGuard(g.identity, chosen.get(g.identity, wall))
                    for g in changed.state.guards
                ),
            )
        if revision is not None:
            state = dataclasses.replace(state, last_revision=max(revision, state.last_revision))
        if published is not None:
            state = dataclasses.replace(state, last_published=published)
        try:
            home.save_hidden_state(cfg.name, state)
        except OSError as exc:  # a full disk degrades the service; it does not end it
            RATELOG.warning(log, "hidden-state", "%s: state not saved: %s", cfg.name, exc)

    return HiddenServiceHost(
        cfg,
        core,
        seed,
        allowed,
        last_revision=state.last_revision,
        builder=builder,
        relays=relays,
        descriptors=descriptors,
        streams=streams,
        save_state=save,
        clock=clock,
        random=random,
        spawn=spawn,
        count=count,
    )
