"""Which relays a hidden-service client uses, sans-IO (docs/hidden.md section 6).

Theory of operation. One connection attempt needs, per rendezvous candidate, a
rendezvous point (RP), the client side of the rendezvous circuit (relays before the RP)
and, per introduction, an intro circuit (relays before the intro point).

* The RPs are drawn up front, `count` distinct relays that are no intro point, each one
  draw of `plan_route` (weighted by uptime and RTT), so fewer relays give fewer
  candidates instead of none.
* The client side is planned first and the cookie ground for it afterwards: the side's
  relays are `plan_route` over the relays that are neither the RP, an intro point, nor in
  the RP's network, with the RP as the "owner" the last relay must reach; then cookies
  are drawn until every chosen relay is in CLIENT_HALF (expected 2**hops draws: 8 for
  fast, 32 for balanced). The other order (draw a cookie, keep the relays in
  CLIENT_HALF) needs about twice as many relays to succeed; grinding needs exactly the
  side's relays. After `max_tries` draws the last cookie is used anyway and the result
  says so (the caller counts it): with real randomness that is odds of (1 - 2**-5)**4096.
* An intro circuit avoids the RP, the intro's own network, and prefers relays that are
  not on the rendezvous side nor another candidate's RP; only if that leaves too few are
  those allowed. The client side likewise prefers relays that are no other candidate's
  RP, so with enough relays an RP is on no path of the attempt but its own, last.

Randomness comes in as `random(n) -> n bytes`; `uniform` turns it into the floats in
[0, 1) that `plan_route` draws with. `AttemptPaths` binds the functions to one attempt's
relays, intros, exclusions and randomness.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from vx6.core.hidden.paths import CLIENT_HALF, relay_half
from vx6.core.hidden.profiles import PathProfile
from vx6.core.routes import RelayCandidate, plan_route
from vx6.errors import StreamError, StreamFailed
from vx6.wire.cells import Endpoint

COOKIE_LEN = 32


def uniform(random: Callable[[int], bytes]) -> Callable[[], float]:
    """Uniform floats in [0, 1) from random bytes: 53 bits, exact in a float."""

    def draw() -> float:
        return (int.from_bytes(random(7), "big") >> 3) / float(1 << 53)

    return draw


def _in_network(relays: Sequence[RelayCandidate], of: RelayCandidate) -> set[bytes]:
    """The relays sharing `of`'s diversity key (none if `of` is exempt)."""
    if of.network is None:
        return set()
    return {r.identity for r in relays if r.network == of.network}


def choose_rendezvous_points(
    relays: Sequence[RelayCandidate],
    count: int,
    *,
    exclude: Collection[bytes],
    rng: Callable[[], float],
) -> list[RelayCandidate]:
    """Up to `count` distinct relays outside `exclude` (this node and the intro points);
    an empty list if there is none."""
    chosen: list[RelayCandidate] = []
    taken = set(exclude)
    while len(chosen) < count:
        try:
            (pick,) = plan_route(relays, 1, exclude=taken, rng=rng)
        except StreamFailed:
            break
        chosen.append(pick)
        taken.add(pick.identity)
    return chosen


@dataclass(frozen=True, slots=True)
class RendezvousSide:
    """The client side of one rendezvous circuit and the cookie ground for it."""

    relays: tuple[RelayCandidate, ...]  # path order, the RP not included
    cookie: bytes
    ground: bool  # every relay is in CLIENT_HALF for the cookie (False: the fallback)
    draws: int  # cookies drawn


def plan_rendezvous_side(
    relays: Sequence[RelayCandidate],
    hops: int,
    rendezvous: RelayCandidate,
    *,
    exclude: Collection[bytes],
    prefer_not: Collection[bytes],
    rng: Callable[[], float],
    random: Callable[[int], bytes],
    max_tries: int,
    own_endpoints: Sequence[Endpoint] = (),
) -> RendezvousSide:
    """`hops` relays for the client side and a cookie that puts them all in CLIENT_HALF.
    `exclude`: this node and the intro points; `prefer_not` (the other candidates' RPs)
    only if nothing else is left. StreamFailed(NO_ROUTE) if too few."""
    avoid = set(exclude) | {rendezvous.identity} | _in_network(relays, rendezvous)
    chosen = _plan_preferring(
        relays, hops, avoid, prefer_not, rng, rendezvous.endpoints, own_endpoints
    )
    # The service draws its side (a guard and hops - 1 middles) from the other half of
    # the relays it knows, which are about the ones we know: a cookie that leaves it
    # fewer than `hops` of them would make its build fail, so such a cookie is drawn
    # again too (with few relays this matters: 14 relays, balanced).
    chosen_ids = {r.identity for r in chosen}
    others = [
        r.identity
        for r in relays
        if r.identity not in chosen_ids and r.identity != rendezvous.identity
    ]
    cookie = b""
    fallback = b""
    for draw in range(1, max(max_tries, 1) + 1):
        cookie = random(COOKIE_LEN)
        if all(relay_half(cookie, r.identity) == CLIENT_HALF for r in chosen):
            left = sum(1 for i in others if relay_half(cookie, i) != CLIENT_HALF)
            if left >= hops:
                return RendezvousSide(tuple(chosen), cookie, True, draw)
            fallback = fallback or cookie  # our side holds; the service's may be short
    if fallback:
        return RendezvousSide(tuple(chosen), fallback, True, max(max_tries, 1))
    return RendezvousSide(tuple(chosen), cookie, False, max(max_tries, 1))


def plan_intro_path(
    relays: Sequence[RelayCandidate],
    hops: int,
    intro: RelayCandidate,
    rendezvous: RelayCandidate,
    *,
    exclude: Collection[bytes],
    prefer_not: Collection[bytes],
    rng: Callable[[], float],
    own_endpoints: Sequence[Endpoint] = (),
) -> tuple[RelayCandidate, ...]:
    """`hops` relays and the intro relay last. Never the RP, nor a relay in the intro's
    network; `prefer_not` (the rendezvous side) only if nothing else is left.
    StreamFailed(NO_ROUTE) if too few."""
    avoid = set(exclude) | {rendezvous.identity, intro.identity} | _in_network(relays, intro)
    chosen = _plan_preferring(relays, hops, avoid, prefer_not, rng, intro.endpoints, own_endpoints)
    return (*chosen, intro)


def _plan_preferring(
    relays: Sequence[RelayCandidate],
    hops: int,
    avoid: set[bytes],
    prefer_not: Collection[bytes],
    rng: Callable[[], float],
    last_reaches: Sequence[Endpoint],
    own_endpoints: Sequence[Endpoint],
) -> list[RelayCandidate]:
    """plan_route without `avoid`, and without `prefer_not` too if that leaves enough."""
    try:
        return plan_route(
            relays,
            hops,
            exclude=avoid | set(prefer_not),
            rng=rng,
            owner_endpoints=last_reaches,
            own_endpoints=own_endpoints,
        )
    except StreamFailed:
        return plan_route(
            relays,
            hops,
            exclude=avoid,
            rng=rng,
            owner_endpoints=last_reaches,
            own_endpoints=own_endpoints,
        )


def hidden_no_route(profile_name: str, hops: int, found: int) -> StreamFailed:
    """NO_ROUTE for a hidden-service connection, saying what it needs."""
    return StreamFailed(
        StreamError.NO_ROUTE,
        f"a {profile_name} hidden-service connection needs a rendezvous point and {hops} "
        f"more relays (no intro point, none in the rendezvous point's network); "
        f"{found} relays known; start more relays"
        + (" or use the fast profile" if profile_name != "fast" else ""),
    )


class AttemptPaths:
    """The path planning of one attempt: what it needs to know, said once."""

    def __init__(
        self,
        profile: PathProfile,
        intros: Sequence[RelayCandidate],
        relays: Sequence[RelayCandidate],
        random: Callable[[int], bytes],
        *,
        grind_tries: int,
        exclude: Collection[bytes],
        own_endpoints: Sequence[Endpoint],
    ) -> None:
        self.profile = profile
        self.relays = tuple(relays)
        self._intros = tuple(intros)
        self._random = random
        self._rng = uniform(random)
        self._grind_tries = grind_tries
        self._exclude = frozenset(exclude)
        self._not_intros = self._exclude | {r.identity for r in intros}
        self._own_endpoints = tuple(own_endpoints)

    def rendezvous_points(self, count: int) -> list[RelayCandidate]:
        return choose_rendezvous_points(self.relays, count, exclude=self._not_intros, rng=self._rng)

    def side(self, rendezvous: RelayCandidate, other_rps: Collection[bytes]) -> RendezvousSide:
        return plan_rendezvous_side(
            self.relays,
            self.profile.side_relays,
            rendezvous,
            exclude=self._not_intros,
            prefer_not=other_rps,
            rng=self._rng,
            random=self._random,
            max_tries=self._grind_tries,
            own_endpoints=self._own_endpoints,
        )

    def intro_path(
        self, intro: int, rendezvous: RelayCandidate, prefer_not: Collection[bytes]
    ) -> tuple[RelayCandidate, ...]:
        return plan_intro_path(
            self.relays,
            self.profile.intro_relays,
            self._intros[intro],
            rendezvous,
            exclude=self._exclude,
            prefer_not=prefer_not,
            rng=self._rng,
            own_endpoints=self._own_endpoints,
        )

    def no_route(self) -> StreamFailed:
        return hidden_no_route(self.profile.value, self.profile.side_relays, len(self.relays))
