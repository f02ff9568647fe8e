"""Route planning for relay circuits, sans-IO: which relays, in which order.

Theory of operation. The caller (the client side) turns its registry into candidates:
every node whose signed node record advertises the relay capability, with what it has
measured of it (how long it has been seen up, its link RTT) and its diversity key (the
/48 or /24 it lives in, or None for loopback and test-bed hosts, which are exempt).
`plan_route` draws `hops` distinct relays, never the client or the owner, no two sharing
a diversity key, each draw weighted by uptime and RTT so that long-lived, close relays
are preferred without making the choice predictable. Randomness comes in as `rng`
(uniform floats in [0, 1)), so tests are deterministic.

Each hop must be able to dial the next, and this node the first: a relay with only
IPv4 addresses cannot extend to one with only IPv6 ones. So the first draw prefers
relays that share an address family with this node, each later draw relays that share
one with the hop before, and the last draw relays that also share one with the owner;
only when no candidate does is the preference dropped (the build may then fail at that
hop, and the pool retries on another route).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from vx6.errors import StreamError, StreamFailed
from vx6.wire.cells import Endpoint

UPTIME_FULL = 24 * 3600.0  # a relay seen up this long gets the full uptime weight
RTT_SCALE = 0.050  # an RTT of 50 ms halves the weight


@dataclass(frozen=True, slots=True)
class RelayCandidate:
    identity: bytes
    onion_key: bytes
    endpoints: tuple[Endpoint, ...]
    network: bytes | None  # diversity key (the /48 or /24); None: exempt (loopback, test bed)
    uptime: float = 0.0  # seconds this node has been seen up
    rtt: float | None = None  # seconds, if measured


def weight(candidate: RelayCandidate) -> float:
    """Uptime and RTT, each in (0, 1]; an unknown RTT counts as middling."""
    up = 0.1 + 0.9 * min(max(candidate.uptime, 0.0), UPTIME_FULL) / UPTIME_FULL
    rtt = 0.5 if candidate.rtt is None else 1.0 / (1.0 + max(candidate.rtt, 0.0) / RTT_SCALE)
    return up * rtt


def families(endpoints: Sequence[Endpoint]) -> frozenset[int]:
    """The address families (4, 6) a node's endpoints are in."""
    return frozenset(6 if ":" in e.host else 4 for e in endpoints)


def no_route(known: int, usable: int, distinct: int, hops: int) -> StreamFailed:
    """The NO_ROUTE error, counting what route planning had: `known` relays (node records
    with the relay capability), `usable` of them (not this node, the owner or a relay
    avoided after a failure, and with an address), `distinct` of those in distinct
    networks, `hops` wanted; and what to do about it."""
    parts = [f"found {known} relay{'' if known == 1 else 's'}"]
    if usable < known:
        parts.append(f"{usable} usable (not this node, the owner or avoided)")
    if distinct < usable:
        parts.append(f"{distinct} in distinct networks")
    advice = "start more relays" + (f" or use --hops {distinct}" if distinct else "")
    return StreamFailed(StreamError.NO_ROUTE, f"{', '.join(parts)}, {hops} wanted; {advice}")


def plan_route(
    candidates: Sequence[RelayCandidate],
    hops: int,
    *,
    exclude: Collection[bytes],
    rng: Callable[[], float],
    owner_endpoints: Sequence[Endpoint] = (),
    own_endpoints: Sequence[Endpoint] = (),
) -> list[RelayCandidate]:
    """`hops` relays for one circuit, in path order; StreamFailed(NO_ROUTE) if the
    candidates cannot give that many diverse relays (`no_route` says how many they do)."""
    known: dict[bytes, RelayCandidate] = {}
    for c in candidates:
        known.setdefault(c.identity, c)
    unique = [c for c in known.values() if c.identity not in exclude and c.endpoints]
    distinct = sum(1 for c in unique if c.network is None) + len(
        {c.network for c in unique if c.network is not None}
    )
    if distinct < hops:
        raise no_route(len(known), len(unique), distinct, hops)
    chosen: list[RelayCandidate] = []
    networks: set[bytes] = set()
    while len(chosen) < hops:
        usable = [c for c in unique if c.network is None or c.network not in networks]
        assert usable  # each draw uses up one network or one exempt relay: `distinct` holds
        usable = _reachable(
            usable, chosen, hops, families(owner_endpoints), families(own_endpoints)
        )
        weights = [weight(c) for c in usable]
        point = rng() * sum(weights)
        pick = usable[-1]
        for c, w in zip(usable, weights, strict=True):
            point -= w
            if point < 0:
                pick = c
                break
        chosen.append(pick)
        unique.remove(pick)
        if pick.network is not None:
            networks.add(pick.network)
    return chosen


def _reachable(
    usable: list[RelayCandidate],
    chosen: list[RelayCandidate],
    hops: int,
    owner: frozenset[int],
    own: frozenset[int],
) -> list[RelayCandidate]:
    """The candidates the previous hop (for the first, this node) can dial, and for the
    last hop that can dial the owner, if there are any; else all of them."""
    wanted = [families(chosen[-1].endpoints)] if chosen else [own] if own else []
    if len(chosen) == hops - 1 and owner:
        wanted.append(owner)
    narrowed = usable
    for fam in wanted:
        narrowed = [c for c in narrowed if families(c.endpoints) & fam] or narrowed
    return narrowed
