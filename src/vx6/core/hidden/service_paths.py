"""The service side's circuit paths (docs/hidden.md section 6), sans-IO.

Theory of operation. Every service-side path starts at a guard and ends at a relay the
path exists for (an intro relay, or the client's rendezvous point); between them are
middle relays drawn by `plan_route` (uptime/RTT weighted, distinct, no two in one
network, each able to dial the next: the guard's endpoints stand for "this node" and
the last relay's for "the owner"). Neither guard is ever a middle or the last relay, and
no middle shares a network with the guard or the last relay, so a path has no relay
twice and no two relays in one /48 or /24. An intro circuit has guard + (side - 2)
middles + the intro relay (side relays in all); a rendezvous circuit has guard +
(side - 1) middles, all in SERVICE_HALF for its cookie, + the rendezvous point.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from vx6.core.hidden.paths import SERVICE_HALF, relay_half
from vx6.core.routes import RelayCandidate, plan_route
from vx6.errors import StreamFailed


def _pool(
    relays: Sequence[RelayCandidate],
    exclude: Collection[bytes],
    ends: Sequence[RelayCandidate],
) -> list[RelayCandidate]:
    networks = {e.network for e in ends if e.network is not None}
    ends_ids = {e.identity for e in ends}
    return [
        c
        for c in relays
        if c.identity not in exclude
        and c.identity not in ends_ids
        and (c.network is None or c.network not in networks)
    ]


def intro_relay(
    relays: Sequence[RelayCandidate],
    guard: RelayCandidate,
    exclude: Collection[bytes],
    rng: Callable[[], float],
) -> RelayCandidate | None:
    """A relay for a new intro: not a guard, not an intro already in use (`exclude`),
    not in the guard's network."""
    try:
        return plan_route(_pool(relays, exclude, [guard]), 1, exclude=(), rng=rng)[0]
    except StreamFailed:
        return None


def middles(
    relays: Sequence[RelayCandidate],
    guard: RelayCandidate,
    last: RelayCandidate,
    count: int,
    exclude: Collection[bytes],
    rng: Callable[[], float],
) -> tuple[RelayCandidate, ...] | None:
    """`count` middle relays between `guard` and `last`; None if too few relays."""
    if count == 0:
        return ()
    try:
        chosen = plan_route(
            _pool(relays, exclude, [guard, last]),
            count,
            exclude=(),
            rng=rng,
            own_endpoints=guard.endpoints,
            owner_endpoints=last.endpoints,
        )
    except StreamFailed:
        return None
    return tuple(chosen)


def service_half(cookie: bytes, relays: Sequence[RelayCandidate]) -> list[RelayCandidate]:
    """The relays the service side may use as middles for the rendezvous with `cookie`."""
    return [c for c in relays if relay_half(cookie, c.identity) == SERVICE_HALF]
