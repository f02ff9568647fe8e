"""The hidden service's core (core/hidden/service.py) on a fake clock: 3 active + 2
standby intros, failures replaced and republished within the deadline, rotation by
lifetime and by introductions, grace then close, guards, the refusals of introductions
(each counted), rendezvous paths, reachability, and invariants under random inputs."""

from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from vx6.core.hidden.guards import GUARD_RETRY_AFTER, GuardsChanged, GuardState
from vx6.core.hidden.intros import IntroState
from vx6.core.hidden.paths import CLIENT_HALF, SERVICE_HALF, relay_half
from vx6.core.hidden.service import HiddenServiceCore
from vx6.core.hidden.service_events import (
    DescriptorPublishRequested,
    IntroBuildRequested,
    IntroCloseRequested,
    Profile,
    Refusal,
    RendezvousBuildRequested,
    ServiceEvent,
    ServiceLimits,
)
from vx6.core.routes import RelayCandidate
from vx6.wire.cells import Endpoint

EP = (Endpoint("2001:db8::1", 4242),)
WALL = 1_700_000_000.0
T0 = 1000.0


def relay(i: int) -> RelayCandidate:
    return RelayCandidate(i.to_bytes(2, "big") * 16, bytes(32), EP, i.to_bytes(2, "big"), 7200.0)


RELAYS = [relay(i) for i in range(1, 41)]
RP = relay(500)


def core(
    profile: Profile = Profile.FAST,
    limits: ServiceLimits | None = None,
    seed: int = 7,
    **kw: object,
) -> HiddenServiceCore:
    return HiddenServiceCore(
        profile,
        limits or ServiceLimits(),
        GuardState(),
        random.Random(seed).randbytes,
        **kw,  # type: ignore[arg-type]
    )


def builds(events: list[ServiceEvent]) -> list[IntroBuildRequested]:
    return [e for e in events if isinstance(e, IntroBuildRequested)]


def publishes(events: list[ServiceEvent]) -> list[DescriptorPublishRequested]:
    return [e for e in events if isinstance(e, DescriptorPublishRequested)]


def establish(
    c: HiddenServiceCore, reqs: list[IntroBuildRequested], now: float
) -> list[ServiceEvent]:
    out: list[ServiceEvent] = []
    for r in reqs:
        out += c.intro_established(r.intro_id, now)
    return out


def running(
    profile: Profile = Profile.FAST, **kw: object
) -> tuple[HiddenServiceCore, list[ServiceEvent]]:
    c = core(profile, **kw)  # type: ignore[arg-type]
    started = c.start(T0, RELAYS, wall=WALL)
    return c, started + establish(c, builds(started), T0 + 1)


def ids(c: HiddenServiceCore, state: IntroState) -> set[int]:
    return {i.intro_id for i in c.intros.values() if i.state is state}


@pytest.mark.parametrize("profile", [Profile.FAST, Profile.BALANCED])
def test_happy_path(profile: Profile) -> None:
    c = core(profile)
    started = c.start(T0, RELAYS, wall=WALL)
    assert isinstance(started[0], GuardsChanged) and len(started[0].state.guards) == 2
    reqs = builds(started)
    assert len(reqs) == 5 and not publishes(started)
    guards = c.guards.identities
    relays_used = [r.path[-1].identity for r in reqs]
    assert len(set(relays_used)) == 5 and not set(relays_used) & guards
    for r in reqs:
        assert len(r.path) == profile.side_relays  # guard + 1 + intro / guard + 3 + intro
        assert r.path[0].identity in guards
        assert len({h.identity for h in r.path}) == len(r.path)
        assert not {h.identity for h in r.path[1:]} & guards
        assert len(r.auth_seed) == 32 and len(r.enc_seed) == 32 and r.auth_seed != r.enc_seed
    events = establish(c, reqs, T0 + 1)
    (pub,) = publishes(events)  # one descriptor listing all three, not three revisions
    assert len(pub.intros) == 3 and set(pub.intros) == ids(c, IntroState.ACTIVE)
    assert len(ids(c, IntroState.STANDBY)) == 2
    assert pub.revision == int((WALL + 1) * 1000)
    assert not c.reachable
    c.descriptor_published(pub.revision, 8, T0 + 2)
    assert not c.reachable
    c.descriptor_fetched_back(pub.revision, T0 + 3)
    assert c.reachable
    d = c.describe()
    assert d["revision"] == pub.revision and d["reachable"] is True
    assert sorted(i["state"] for i in d["intros"]) == ["active"] * 3 + ["standby"] * 2
    assert [g["up"] for g in d["guards"]] == [True, True]
    assert d["counters"]["descriptor_publishes"] == 1


def test_short_active_set_published_within_the_deadline() -> None:
    c = core()
    reqs = builds(c.start(T0, RELAYS, wall=WALL))
    assert not publishes(c.intro_established(reqs[0].intro_id, T0 + 1))
    assert c.next_deadline() == T0 + 1 + 10.0
    (pub,) = publishes(c.timer(T0 + 11))
    assert pub.intros == (reqs[0].intro_id,)


def test_active_failure_promotes_a_standby_and_republishes_at_once() -> None:
    c, events = running()
    (first,) = publishes(events)
    failed = first.intros[0]
    standby = ids(c, IntroState.STANDBY)
    after = c.intro_failed(failed, T0 + 50, first_hop_failed=False)
    (pub,) = publishes(after)
    assert pub.revision > first.revision and failed not in pub.intros
    assert len(pub.intros) == 3 and len(set(pub.intros) & standby) == 1
    assert len(builds(after)) == 1
    assert c.counts["intro_failed_active"] == 1 and c.counts["intro_promoted"] == 4


def test_standby_failure_rebuilt_without_republish() -> None:
    c, _ = running()
    victim = min(ids(c, IntroState.STANDBY))
    after = c.intro_failed(victim, T0 + 50, first_hop_failed=False)
    assert len(builds(after)) == 1 and not publishes(after)


def test_rotation_by_lifetime_grace_then_close() -> None:
    limits = ServiceLimits(intro_lifetime_min=100.0, intro_lifetime_max=200.0)
    c, events = running(limits=limits)
    (first,) = publishes(events)
    due_at = min(i.due_at() or 0.0 for i in c.intros.values())
    old = next(i.intro_id for i in c.intros.values() if i.due_at() == due_at)
    assert c.next_deadline() == due_at
    events = c.timer(due_at)
    (replacement,) = builds(events)
    events += c.intro_established(replacement.intro_id, due_at + 1)
    assert c.intros[old].state is IntroState.RETIRED
    assert old not in c.published and len(c.published) == 3
    assert len(ids(c, IntroState.STANDBY)) == 2
    if old in first.intros:
        assert publishes(events) and publishes(events)[-1].revision > first.revision
    retired_at = c.intros[old].retired_at
    assert retired_at is not None
    assert not [e for e in c.timer(retired_at + 599) if isinstance(e, IntroCloseRequested)]
    closes = [e for e in c.timer(retired_at + 600) if isinstance(e, IntroCloseRequested)]
    assert IntroCloseRequested(old) in closes and old not in c.intros


def test_rotation_by_introductions_cap() -> None:
    limits = ServiceLimits(intro_introductions_min=8, intro_introductions_max=8)
    c, events = running(limits=limits)
    target = publishes(events)[0].intros[0]
    more: list[ServiceEvent] = []
    for n in range(8):
        v = c.introduction(target, bytes([n]) * 32, bytes([n]) * 32, None, False, RP, T0 + 5)
        assert v.refusal is Refusal.NOT_ALLOWED  # private and no proof: still counted
        more += v.events
    assert c.counts["intro_cap_reached"] == 1
    assert len(builds(more)) == 1  # the replacement
    assert c.intros[target].state is IntroState.RETIRED  # swapped for a fresh standby
    assert target not in publishes(more)[-1].intros
    v = c.introduction(target, b"\x99" * 32, b"\x99" * 32, None, False, RP, T0 + 6)
    assert v.refusal is Refusal.NOT_ALLOWED  # capacity 8 + 8 // 8 = 9: one more fits
    v = c.introduction(target, b"\x98" * 32, b"\x98" * 32, None, False, RP, T0 + 6)
    assert v.refusal is Refusal.INTRO_EXHAUSTED


def test_guard_failure_next_build_uses_the_other_then_retried_after_ten_minutes() -> None:
    c, _ = running()
    a, b = (g.identity for g in c.guards.state.guards)
    on_a = [i for i in c.intros.values() if i.guard == a and i.state is IntroState.STANDBY]
    victim = on_a[0] if on_a else next(i for i in c.intros.values() if i.guard == a)
    after = c.intro_failed(victim.intro_id, T0 + 5, first_hop_failed=True)
    changed = [e for e in after if isinstance(e, GuardsChanged)]
    assert changed and changed[0].state.guards[0].down_at == T0 + 5
    assert all(r.path[0].identity == b for r in builds(after))
    standby = min(ids(c, IntroState.STANDBY))
    later = c.intro_failed(standby, T0 + 5 + GUARD_RETRY_AFTER, first_hop_failed=False)
    assert [r.path[0].identity for r in builds(later)] == [a]
    assert c.describe()["guards"][0]["up"] is False  # until a circuit through it works


def test_both_guards_down_new_ones() -> None:
    c, _ = running()
    old = c.guards.identities
    a, b = (g.identity for g in c.guards.state.guards)
    victim = next(i for i in c.intros.values() if i.guard == a)
    (rebuild,) = builds(c.intro_failed(victim.intro_id, T0 + 5, first_hop_failed=True))
    assert rebuild.path[0].identity == b  # the other guard carries it
    events = c.intro_failed(rebuild.intro_id, T0 + 6, first_hop_failed=True)
    new = c.guards.identities
    assert len(new) == 2 and not new & old
    assert not builds(events)  # two failed builds in a row: a backoff first
    deadline = c.next_deadline()
    assert deadline is not None and T0 + 6 < deadline <= T0 + 6 + 2.4
    (again,) = builds(c.timer(deadline))
    assert again.path[0].identity in new
    assert c.counts["guard_down"] == 2 and c.counts["guards_chosen"] == 2


def intro_on(c: HiddenServiceCore) -> int:
    return min(ids(c, IntroState.ACTIVE))


def test_replay_and_cookie_reuse_refused() -> None:
    c, _ = running(public=True)
    x, cookie = b"\x01" * 32, b"\x02" * 32
    first = intro_on(c)
    assert c.introduction(first, x, cookie, None, False, RP, T0 + 5).accepted
    assert c.introduction(first, x, b"\x03" * 32, None, False, RP, T0 + 5).refusal is Refusal.REPLAY
    other = max(ids(c, IntroState.ACTIVE))
    v = c.introduction(other, b"\x04" * 32, cookie, None, False, RP, T0 + 6)
    assert v.refusal is Refusal.COOKIE_REUSED
    v = c.introduction(other, b"\x05" * 32, cookie, None, False, RP, T0 + 5 + 120)
    assert v.accepted  # forgotten after cookie_memory
    assert c.counts["refused_replay"] == 1 and c.counts["refused_cookie_reused"] == 1


def test_unknown_intro_refused() -> None:
    c, _ = running(public=True)
    v = c.introduction(9999, b"\x01" * 32, b"\x02" * 32, None, False, RP, T0 + 5)
    assert v.refusal is Refusal.UNKNOWN_INTRO and c.counts["refused_unknown_intro"] == 1


def test_allow_list() -> None:
    alice, mallory = b"\xaa" * 32, b"\xbb" * 32
    c, _ = running(allowed=frozenset({alice}))
    i = intro_on(c)
    v = c.introduction(i, b"\x01" * 32, b"\x01" * 32, None, False, RP, T0 + 5)
    assert v.refusal is Refusal.NOT_ALLOWED
    v = c.introduction(i, b"\x02" * 32, b"\x02" * 32, mallory, True, RP, T0 + 5)
    assert v.refusal is Refusal.NOT_ALLOWED
    v = c.introduction(i, b"\x03" * 32, b"\x03" * 32, alice, False, RP, T0 + 5)
    assert v.refusal is Refusal.BAD_PROOF
    assert c.introduction(i, b"\x04" * 32, b"\x04" * 32, alice, True, RP, T0 + 5).accepted
    assert c.counts["refused_not_allowed"] == 2 and c.counts["refused_bad_proof"] == 1
    d, _ = running(allowed=lambda k: k == mallory)
    j = intro_on(d)
    assert d.introduction(j, b"\x05" * 32, b"\x05" * 32, mallory, True, RP, T0 + 5).accepted
    e, _ = running()  # private by default: nobody
    k = intro_on(e)
    v = e.introduction(k, b"\x06" * 32, b"\x06" * 32, alice, True, RP, T0 + 5)
    assert v.refusal is Refusal.NOT_ALLOWED


def test_build_cap_and_done_frees_a_slot() -> None:
    c, _ = running(public=True, limits=ServiceLimits(max_rendezvous_builds=2))
    i = intro_on(c)
    made = [
        c.introduction(i, bytes([n]) * 32, bytes([n]) * 32, None, False, RP, T0 + 5)
        for n in (1, 2, 3)
    ]
    assert [v.refusal for v in made] == [None, None, Refusal.BUILDS_FULL]
    build = made[0].events[0]
    assert isinstance(build, RendezvousBuildRequested)
    c.rendezvous_done(build.build_id, True, T0 + 6)
    assert c.introduction(i, b"\x04" * 32, b"\x04" * 32, None, False, RP, T0 + 6).accepted
    assert c.counts["refused_builds_full"] == 1 and c.counts["rendezvous_ok"] == 1


def test_cookie_memory_full_refused() -> None:
    c, _ = running(public=True, limits=ServiceLimits(max_cookies=2))
    i = intro_on(c)
    for n in (1, 2):
        v = c.introduction(i, bytes([n]) * 32, bytes([n]) * 32, None, False, RP, T0 + 5)
        assert isinstance(v.events[0], RendezvousBuildRequested)
        c.rendezvous_done(v.events[0].build_id, True, T0 + 5)
    v = c.introduction(i, b"\x03" * 32, b"\x03" * 32, None, False, RP, T0 + 5)
    assert v.refusal is Refusal.COOKIE_MEMORY_FULL
    assert c.introduction(i, b"\x04" * 32, b"\x04" * 32, None, False, RP, T0 + 200).accepted


@pytest.mark.parametrize("profile", [Profile.FAST, Profile.BALANCED])
def test_rendezvous_paths(profile: Profile) -> None:
    c, _ = running(profile, public=True)
    i = intro_on(c)
    for n in range(40):
        cookie = bytes([n, 7]) * 16
        v = c.introduction(i, bytes([n, 1]) * 16, cookie, None, False, RP, T0 + 5)
        (build,) = v.events
        assert isinstance(build, RendezvousBuildRequested)
        assert build.cookie == cookie and build.intro_id == i
        path = build.path
        assert len(path) == profile.side_relays + 1 and path[-1] == RP
        assert path[0].identity in c.guards.identities
        assert len({h.identity for h in path}) == len(path)
        assert len({h.network for h in path}) == len(path)
        assert all(relay_half(cookie, h.identity) == SERVICE_HALF for h in path[1:-1])
        assert not {h.identity for h in path[1:]} & c.guards.identities
        c.rendezvous_done(build.build_id, True, T0 + 5)


def test_guard_in_client_half_counted() -> None:
    c, _ = running(public=True)
    guards = c.guards.identities
    cookie = next(
        k
        for k in (n.to_bytes(32, "big") for n in range(10000))
        if all(relay_half(k, g) == CLIENT_HALF for g in guards)
    )
    v = c.introduction(intro_on(c), b"\x01" * 32, cookie, None, False, RP, T0 + 5)
    assert v.accepted and c.counts["guard_in_client_half"] == 1


def test_rendezvous_point_is_never_the_guard_too() -> None:
    c, _ = running(public=True)
    a = next(iter(c.guards.identities))
    point = next(r for r in RELAYS if r.identity == a)
    v = c.introduction(intro_on(c), b"\x01" * 32, b"\x01" * 32, None, False, point, T0 + 5)
    (build,) = v.events
    assert isinstance(build, RendezvousBuildRequested)
    assert build.path[0].identity != a and build.path[-1].identity == a


def test_no_route_refused_and_intro_builds_wait() -> None:
    c = core()
    events = c.start(T0, RELAYS[:2], wall=WALL)
    assert not builds(events) and c.counts["no_route"] == 1
    assert c.next_deadline() == T0 + 30.0
    assert len(builds(c.relays_known(RELAYS, T0 + 1))) == 5


def test_republish_every_interval_and_after_a_failed_store() -> None:
    c, events = running()
    (pub,) = publishes(events)
    assert c.next_deadline() == T0 + 1 + 3600
    (again,) = publishes(c.timer(T0 + 1 + 3600))
    assert again.intros == pub.intros and again.revision > pub.revision
    c.descriptor_published(again.revision, 0, T0 + 3700)
    assert c.next_deadline() == T0 + 3710
    assert publishes(c.timer(T0 + 3710))


def test_revision_kept_above_the_last() -> None:
    c = core()
    reqs = builds(c.start(T0, RELAYS, wall=WALL, last_revision=10**15))
    (pub,) = publishes(establish(c, reqs, T0 + 1))
    assert pub.revision == 10**15 + 1


def test_not_reachable_without_active_intros() -> None:
    c, events = running(limits=ServiceLimits(standby=0))
    (pub,) = publishes(events)
    c.descriptor_fetched_back(pub.revision, T0 + 2)
    assert c.reachable
    for i in pub.intros:
        c.intro_failed(i, T0 + 3, first_hop_failed=False)
    assert not c.reachable


def test_stale_events_are_counted_not_errors() -> None:
    c, _ = running()
    c.intro_failed(9999, T0 + 3, first_hop_failed=False)
    c.intro_established(9999, T0 + 3)
    c.rendezvous_done(9999, True, T0 + 3)
    assert c.counts["stale_event"] == 3


class ServiceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.limits = ServiceLimits(
            intro_lifetime_min=50.0,
            intro_lifetime_max=90.0,
            intro_introductions_min=3,
            intro_introductions_max=5,
            max_rendezvous_builds=3,
            max_cookies=6,
            retired_grace=30.0,
            max_retired=3,
        )
        self.core = HiddenServiceCore(
            Profile.FAST, self.limits, GuardState(), random.Random(3).randbytes, public=True
        )
        self.now = T0
        self.relays = RELAYS[:14]
        self.events = self.core.start(self.now, self.relays, wall=WALL)
        self.n = 0

    def _feed(self, events: list[ServiceEvent]) -> None:
        self.events = events
        for e in events:
            if isinstance(e, IntroBuildRequested | RendezvousBuildRequested):
                assert len({h.identity for h in e.path}) == len(e.path)
                assert e.path[0].identity in self.core.guards.identities
            if isinstance(e, DescriptorPublishRequested):
                assert 1 <= len(e.intros) <= 3

    def _pick(self, data: int, states: set[IntroState]) -> int | None:
        live = sorted(i.intro_id for i in self.core.intros.values() if i.state in states)
        return live[data % len(live)] if live else None

    @rule(dt=st.floats(0, 40))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._feed(self.core.timer(self.now))

    @rule(data=st.integers(0, 100))
    def establish(self, data: int) -> None:
        i = self._pick(data, {IntroState.BUILDING})
        if i is not None:
            self._feed(self.core.intro_established(i, self.now))

    @rule(data=st.integers(0, 100), first=st.booleans())
    def fail(self, data: int, first: bool) -> None:
        i = self._pick(data, set(IntroState))
        if i is not None:
            self._feed(self.core.intro_failed(i, self.now, first_hop_failed=first))

    @rule(data=st.integers(0, 100), replay=st.booleans())
    def introduce(self, data: int, replay: bool) -> None:
        i = self._pick(data, {IntroState.ACTIVE, IntroState.RETIRED, IntroState.STANDBY})
        if i is None:
            return
        self.n += 0 if replay else 1
        key = self.n.to_bytes(32, "big")
        v = self.core.introduction(i, key, key, None, False, RP, self.now)
        self._feed(list(v.events))

    @rule(data=st.integers(0, 100), ok=st.booleans())
    def done(self, data: int, ok: bool) -> None:
        live = sorted(self.core.intake.builds)
        if live:
            self._feed(self.core.rendezvous_done(live[data % len(live)], ok, self.now))

    @rule(keep=st.integers(4, 14))
    def relays_change(self, keep: int) -> None:
        self._feed(self.core.relays_known(RELAYS[:keep], self.now))

    @invariant()
    def bounded_and_consistent(self) -> None:
        c = self.core
        active = {i.intro_id for i in c.intros.values() if i.state is IntroState.ACTIVE}
        assert len(active) <= 3
        assert (
            set(c.published)
            <= active | {i.intro_id for i in c.intros.values() if i.state is IntroState.RETIRED}
            or not active
        )
        assert all(c.intros[i].established_at is not None for i in active)
        relays = [i.relay for i in c.intros.values()]
        assert len(relays) == len(set(relays))
        assert not set(relays) & c.guards.identities
        assert len(c.intros) <= 5 + 5 + self.limits.max_retired
        assert len(c.intake.builds) <= 3 and len(c.intake.cookies) <= 6
        assert all(len(i.replay) <= i.replay.capacity for i in c.intros.values())
        if not active:
            assert not c.reachable
        deadline = c.next_deadline()
        assert deadline is None or deadline > self.now


TestServiceMachine = ServiceMachine.TestCase
TestServiceMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
