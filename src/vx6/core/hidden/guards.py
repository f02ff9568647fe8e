"""A hidden service's two guard relays, sans-IO (docs/hidden.md section 6).

Theory of operation. Every service-side circuit (intro and rendezvous) starts at one of
two guards, so the relays that ever see the service's own address are few and stable.
The guards are chosen once, from the relays the adapter knows, preferring those seen up
for at least an hour (`GUARD_MIN_UPTIME`) and never this node, in two distinct networks,
and kept in a `GuardState` that the adapter saves on every `GuardsChanged` and hands
back at the next start.

A guard whose circuit fails at the first hop, or whose link is lost, is marked down at
`now`; the other carries the next circuits. A down guard may be used again
`GUARD_RETRY_AFTER` (10 minutes) later; if it fails again it is marked down again. New
guards are chosen only when both are down (a guard the relay list no longer holds counts
as down: without its onion key no circuit can start there). Down marks are times on the
core's monotonic clock, which does not survive a restart, so the saved shape
(`to_dict`) keeps only the identities: after a restart both guards are tried again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from vx6.core.routes import RelayCandidate, plan_route
from vx6.errors import StreamFailed, UsageError

GUARD_COUNT = 2
GUARD_MIN_UPTIME = 3600.0  # seconds a relay must have been seen up to be preferred
GUARD_RETRY_AFTER = 600.0  # a down guard is tried again this long after it failed
_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Guard:
    identity: bytes
    down_at: float | None = None  # monotonic time it was marked down; None: up


@dataclass(frozen=True, slots=True)
class GuardState:
    """What the adapter persists: the chosen guards, in order of preference."""

    guards: tuple[Guard, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "guards": [g.identity.hex() for g in self.guards]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuardState:
        """The saved shape back; UsageError if it is not one (a damaged state file)."""
        try:
            if data["version"] != _STATE_VERSION:
                raise UsageError(f"guard state version {data['version']!r} is not supported")
            identities = [bytes.fromhex(h) for h in data["guards"]]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"damaged guard state: {exc}") from None
        if len(identities) > GUARD_COUNT or any(len(i) != 32 for i in identities):
            raise UsageError("damaged guard state: at most 2 guards of 32-byte keys")
        return cls(tuple(Guard(i) for i in identities))


@dataclass(frozen=True, slots=True)
class GuardsChanged:
    """The guard state changed (chosen, marked down, up again): the adapter saves it."""

    state: GuardState


@dataclass(slots=True)
class GuardSet:
    state: GuardState = field(default_factory=GuardState)
    chosen_count: int = 0  # how many times guards were (re)chosen, for the counters

    @property
    def identities(self) -> frozenset[bytes]:
        return frozenset(g.identity for g in self.state.guards)

    def usable(self, guard: Guard, now: float) -> bool:
        return guard.down_at is None or now >= guard.down_at + GUARD_RETRY_AFTER

    def pick(
        self,
        now: float,
        known: Mapping[bytes, RelayCandidate],
        prefer: Callable[[bytes], bool] | None = None,
        avoid: Collection[bytes] = (),
    ) -> RelayCandidate | None:
        """The guard for the next circuit: the first usable one (in the saved order) that
        `prefer` accepts, else the first usable one; never one in `avoid`."""
        usable = [
            known[g.identity]
            for g in self.state.guards
            if self.usable(g, now) and g.identity in known and g.identity not in avoid
        ]
        if prefer is not None:
            for candidate in usable:
                if prefer(candidate.identity):
                    return candidate
        return usable[0] if usable else None

    def mark_down(self, identity: bytes, now: float) -> GuardsChanged | None:
        guards = self.state.guards
        if not any(g.identity == identity for g in guards):
            return None
        self.state = GuardState(
            tuple(replace(g, down_at=now) if g.identity == identity else g for g in guards)
        )
        return GuardsChanged(self.state)

    def mark_up(self, identity: bytes) -> GuardsChanged | None:
        """A circuit through this guard got past the first hop: it is up again."""
        guards = self.state.guards
        if not any(g.identity == identity and g.down_at is not None for g in guards):
            return None
        self.state = GuardState(
            tuple(replace(g, down_at=None) if g.identity == identity else g for g in guards)
        )
        return GuardsChanged(self.state)

    def ensure(
        self,
        now: float,
        known: Mapping[bytes, RelayCandidate],
        rng: Callable[[], float],
        exclude: Collection[bytes],
    ) -> GuardsChanged | None:
        """Choose guards if there are none yet or every one is down (or unlisted, which
        marks it down); otherwise change nothing. `exclude`: this node."""
        changed: GuardsChanged | None = None
        for g in self.state.guards:
            if g.down_at is None and g.identity not in known:
                changed = self.mark_down(g.identity, now) or changed
        guards = self.state.guards
        if len(guards) == GUARD_COUNT and any(g.down_at is None for g in guards):
            return changed
        if len(guards) == GUARD_COUNT or not guards:
            old = {g.identity for g in guards}
            keep: tuple[Guard, ...] = ()
        else:  # one guard only (few relays when chosen): keep it unless it is down
            old = {g.identity for g in guards}
            keep = tuple(g for g in guards if g.down_at is None)
        fresh = choose_guards(
            list(known.values()),
            GUARD_COUNT - len(keep),
            rng=rng,
            exclude=set(exclude) | old,
            networks={known[g.identity].network for g in keep if g.identity in known},
        )
        if not fresh:
            return changed
        self.state = GuardState(keep + tuple(Guard(c.identity) for c in fresh))
        self.chosen_count += 1
        return GuardsChanged(self.state)


def choose_guards(
    candidates: Sequence[RelayCandidate],
    count: int,
    *,
    rng: Callable[[], float],
    exclude: Collection[bytes],
    networks: Collection[bytes | None] = (),
) -> list[RelayCandidate]:
    """Up to `count` relays in distinct networks (none in `networks`), drawn from those
    seen up at least GUARD_MIN_UPTIME if enough of them are, else from all; fewer (even
    none) if the candidates do not have that many."""
    taken = {n for n in networks if n is not None}
    pool = [c for c in candidates if c.network is None or c.network not in taken]
    seasoned = [c for c in pool if c.uptime >= GUARD_MIN_UPTIME]
    for want in range(count, 0, -1):
        for source in (seasoned, pool):
            try:
                return plan_route(source, want, exclude=exclude, rng=rng)
            except StreamFailed:
                continue
    return []
