"""The service's guards (core/hidden/guards.py): chosen once, preferring relays up an
hour, in distinct networks, never this node; saved as identities only; a down guard
hands the circuits to the other, is retried after 10 minutes, and new guards come only
when both are down."""

from __future__ import annotations

import random

import pytest

from vx6.core.hidden.guards import (
    GUARD_MIN_UPTIME,
    GUARD_RETRY_AFTER,
    Guard,
    GuardsChanged,
    GuardSet,
    GuardState,
    choose_guards,
)
from vx6.core.routes import RelayCandidate
from vx6.errors import UsageError
from vx6.wire.cells import Endpoint

EP = (Endpoint("2001:db8::1", 4242),)


def relay(
    i: int, uptime: float = 2 * GUARD_MIN_UPTIME, network: bytes | None = None
) -> RelayCandidate:
    return RelayCandidate(bytes([i]) * 32, bytes(32), EP, network or bytes([i]), uptime)


def known(*relays: RelayCandidate) -> dict[bytes, RelayCandidate]:
    return {r.identity: r for r in relays}


def rng(seed: int = 1) -> random.Random:
    return random.Random(seed)


def test_chosen_once_two_distinct_guards_and_saved_shape() -> None:
    relays = known(*(relay(i) for i in range(1, 11)))
    gs = GuardSet()
    changed = gs.ensure(0.0, relays, rng().random, exclude=set())
    assert isinstance(changed, GuardsChanged)
    ids = [g.identity for g in gs.state.guards]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert gs.ensure(5.0, relays, rng(2).random, exclude=set()) is None  # chosen once
    assert [g.identity for g in gs.state.guards] == ids
    saved = gs.state.to_dict()
    assert saved == {"version": 1, "guards": [i.hex() for i in ids]}
    assert GuardState.from_dict(saved) == GuardState(tuple(Guard(i) for i in ids))


def test_saved_shape_drops_down_marks() -> None:
    state = GuardState((Guard(b"\x01" * 32, down_at=5.0), Guard(b"\x02" * 32)))
    assert GuardState.from_dict(state.to_dict()).guards[0].down_at is None


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"version": 2, "guards": []},
        {"version": 1, "guards": ["zz"]},
        {"version": 1, "guards": ["00" * 31]},
        {"version": 1, "guards": ["00" * 32] * 3},
    ],
)
def test_damaged_state_is_a_usage_error(data: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        GuardState.from_dict(data)


def test_prefers_relays_up_an_hour_and_never_this_node() -> None:
    seasoned = [relay(1), relay(2)]
    young = [relay(i, uptime=60.0) for i in range(3, 20)]
    for seed in range(30):
        chosen = choose_guards(seasoned + young, 2, rng=rng(seed).random, exclude=set())
        assert {c.identity for c in chosen} == {r.identity for r in seasoned}
    me = relay(1).identity
    for seed in range(30):
        chosen = choose_guards(seasoned + young, 2, rng=rng(seed).random, exclude={me})
        assert me not in {c.identity for c in chosen} and len(chosen) == 2


def test_distinct_networks() -> None:
    relays = [relay(1, network=b"n1"), relay(2, network=b"n1"), relay(3, network=b"n2")]
    for seed in range(20):
        chosen = choose_guards(relays, 2, rng=rng(seed).random, exclude=set())
        assert len({c.network for c in chosen}) == 2


def test_down_guard_gives_way_then_retried_after_ten_minutes() -> None:
    relays = known(*(relay(i) for i in range(1, 11)))
    gs = GuardSet()
    gs.ensure(0.0, relays, rng().random, exclude=set())
    first, second = (g.identity for g in gs.state.guards)
    assert gs.pick(1.0, relays) == relays[first]
    assert gs.mark_down(first, 10.0) is not None
    assert gs.ensure(11.0, relays, rng().random, exclude=set()) is None  # one left: kept
    assert gs.pick(11.0, relays) == relays[second]
    assert gs.pick(10.0 + GUARD_RETRY_AFTER - 0.001, relays) == relays[second]
    assert gs.pick(10.0 + GUARD_RETRY_AFTER, relays) == relays[first]  # retried
    assert gs.mark_up(first) is not None and gs.state.guards[0].down_at is None


def test_both_down_new_guards_excluding_the_old() -> None:
    relays = known(*(relay(i) for i in range(1, 11)))
    gs = GuardSet()
    gs.ensure(0.0, relays, rng().random, exclude=set())
    old = gs.identities
    for g in old:
        gs.mark_down(g, 20.0)
    changed = gs.ensure(21.0, relays, rng().random, exclude=set())
    assert changed is not None and gs.chosen_count == 2
    assert len(gs.identities) == 2 and not (gs.identities & old)


def test_unlisted_guard_counts_as_down() -> None:
    relays = known(*(relay(i) for i in range(1, 11)))
    gs = GuardSet()
    gs.ensure(0.0, relays, rng().random, exclude=set())
    a, b = (g.identity for g in gs.state.guards)
    fewer = {k: v for k, v in relays.items() if k != a}
    gs.ensure(5.0, fewer, rng().random, exclude=set())
    assert gs.state.guards[0].down_at == 5.0 and gs.identities == {a, b}
    assert gs.pick(5.0, fewer) == relays[b]


def test_prefer_and_avoid() -> None:
    relays = known(*(relay(i) for i in range(1, 11)))
    gs = GuardSet()
    gs.ensure(0.0, relays, rng().random, exclude=set())
    a, b = (g.identity for g in gs.state.guards)
    assert gs.pick(1.0, relays, prefer=lambda i: i == b) == relays[b]
    assert gs.pick(1.0, relays, prefer=lambda i: False) == relays[a]
    assert gs.pick(1.0, relays, avoid={a}) == relays[b]
    assert gs.pick(1.0, relays, avoid={a, b}) is None
