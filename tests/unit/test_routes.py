"""Route planning (core/routes.py): relays are distinct, never the client or the owner,
never two from one network (except exempt loopback/test-bed hosts), weighted by uptime
and RTT, and a request the registry cannot satisfy is a clear NO_ROUTE error."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vx6.core.routes import UPTIME_FULL, RelayCandidate, families, plan_route, weight
from vx6.errors import StreamError, StreamFailed
from vx6.wire.cells import Endpoint

EP = (Endpoint("2001:db8::1", 4242),)


def cand(
    i: int, network: bytes | None, uptime: float = 0.0, rtt: float | None = None
) -> RelayCandidate:
    return RelayCandidate(bytes([i]) * 32, bytes(32), EP, network, uptime, rtt)


candidates = st.lists(
    st.builds(
        cand,
        st.integers(0, 40),
        st.one_of(st.none(), st.sampled_from([b"n1", b"n2", b"n3", b"n4", b"n5", b"n6"])),
        st.floats(0, 2 * UPTIME_FULL),
        st.one_of(st.none(), st.floats(0, 1)),
    ),
    max_size=30,
    unique_by=lambda c: c.identity,  # one node record per key
)


@settings(max_examples=200, deadline=None)
@given(candidates, st.integers(1, 5), st.integers(0, 2**32))
def test_routes_are_distinct_diverse_and_exclude_the_ends(
    pool: list[RelayCandidate], hops: int, seed: int
) -> None:
    excluded = {bytes([0]) * 32, bytes([1]) * 32}
    rng = random.Random(seed)
    try:
        route = plan_route(pool, hops, exclude=excluded, rng=rng.random)
    except StreamFailed as exc:
        assert exc.code is StreamError.NO_ROUTE
        usable = {c.identity for c in pool if c.identity not in excluded}
        exempt = {c.identity for c in pool if c.identity not in excluded and c.network is None}
        networks = {c.network for c in pool if c.identity not in excluded and c.network}
        assert len(usable) < hops or len(exempt) + len(networks) < hops
        return
    assert len(route) == hops
    assert len({c.identity for c in route}) == hops
    assert not any(c.identity in excluded for c in route)
    nets = [c.network for c in route if c.network is not None]
    assert len(nets) == len(set(nets))


def test_not_enough_relays_is_a_clear_error() -> None:
    with pytest.raises(StreamFailed) as info:
        plan_route([cand(2, None), cand(3, None)], 3, exclude=set(), rng=random.random)
    assert info.value.code is StreamError.NO_ROUTE
    assert info.value.detail == "found 2 relays, 3 wanted; start more relays or use --hops 2"


def test_no_route_counts_known_usable_and_wanted() -> None:
    """Issue 11 (e): the message once said "5 wanted, 3 usable among 0 known"."""

    def detail(pool: list[RelayCandidate], hops: int, exclude: set[bytes]) -> str:
        with pytest.raises(StreamFailed) as info:
            plan_route(pool, hops, exclude=exclude, rng=random.random)
        assert info.value.code is StreamError.NO_ROUTE
        return info.value.detail

    three = [cand(i, None) for i in (2, 3, 4)]
    assert detail(three, 5, set()) == "found 3 relays, 5 wanted; start more relays or use --hops 3"
    five = [cand(i, None) for i in range(2, 7)]
    me, owner = five[0].identity, five[1].identity
    assert detail(five, 5, {me, owner}) == (
        "found 5 relays, 3 usable (not this node, the owner or avoided), 5 wanted; "
        "start more relays or use --hops 3"
    )
    no_address = RelayCandidate(bytes([9]) * 32, bytes(32), (), None)
    assert detail([*three, no_address], 4, set()) == (
        "found 4 relays, 3 usable (not this node, the owner or avoided), 4 wanted; "
        "start more relays or use --hops 3"
    )
    two_nets = [cand(2, b"n1"), cand(3, b"n1"), cand(4, b"n2"), cand(5, b"n2")]
    assert detail(two_nets, 3, set()) == (
        "found 4 relays, 2 in distinct networks, 3 wanted; start more relays or use --hops 2"
    )
    assert detail([], 3, set()) == "found 0 relays, 3 wanted; start more relays"
    assert detail([cand(2, None)], 1, {cand(2, None).identity}) == (
        "found 1 relay, 0 usable (not this node, the owner or avoided), 1 wanted; start more relays"
    )


def test_one_network_gives_one_relay() -> None:
    pool = [cand(i, b"same /48") for i in range(2, 10)]
    assert len(plan_route(pool, 1, exclude=set(), rng=random.random)) == 1
    with pytest.raises(StreamFailed):
        plan_route(pool, 2, exclude=set(), rng=random.random)


def test_uptime_and_rtt_shift_the_choice() -> None:
    steady = cand(2, None, uptime=UPTIME_FULL, rtt=0.002)
    fresh = cand(3, None, uptime=0.0, rtt=0.200)
    assert weight(steady) > 5 * weight(fresh)
    rng = random.Random(7)
    picks = [plan_route([steady, fresh], 1, exclude=set(), rng=rng.random)[0] for _ in range(2000)]
    share = sum(1 for p in picks if p is steady) / len(picks)
    assert 0.85 < share < 1.0  # preferred, yet the other is still sometimes chosen


V4 = (Endpoint("198.18.0.9", 4242),)
V6 = (Endpoint("fd76:7836::9", 4242),)


def family_cand(i: int, endpoints: tuple[Endpoint, ...]) -> RelayCandidate:
    return RelayCandidate(bytes([i]) * 32, bytes(32), endpoints, None)


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(0, 3))
def test_each_hop_can_dial_the_next_and_the_last_the_owner(seed: int, v6: int, v4: int) -> None:
    """Relays with only IPv4 or only IPv6 addresses, and dual-stack ones: every hop
    shares an address family with the hop before it, and the last with the owner,
    whenever the candidates allow it (here they always do: the dual-stack relays and a
    one-family chain suffice)."""
    pool = [family_cand(i, V6) for i in range(v6)]
    pool += [family_cand(10 + i, V4) for i in range(v4)]
    pool += [family_cand(20 + i, V4 + V6) for i in range(2)]
    rng = random.Random(seed)
    for owner in (V6, V4):
        hops = min(3, v6 + 2) if owner is V6 else min(3, v4 + 2)
        route = plan_route(pool, hops, exclude=set(), rng=rng.random, owner_endpoints=owner)
        fams = [families(r.endpoints) for r in route]
        assert all(a & b for a, b in itertools.pairwise(fams)), fams
        assert fams[-1] & families(owner), (fams, owner)


@given(st.integers(0, 2**32 - 1))
def test_the_first_hop_shares_a_family_with_this_node(seed: int) -> None:
    """An IPv6-only client never starts its circuit at an IPv4-only relay while an
    IPv6 one is there (it could not dial it: 'Network is unreachable')."""
    pool = [family_cand(1, V4), family_cand(2, V6), family_cand(3, V6), family_cand(4, V4 + V6)]
    rng = random.Random(seed)
    route = plan_route(pool, 3, exclude=set(), rng=rng.random, owner_endpoints=V6, own_endpoints=V6)
    assert families(route[0].endpoints) & families(V6)
