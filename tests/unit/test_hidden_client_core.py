"""The hidden-service client core (core/hidden/client.py): one connection attempt from a
decrypted descriptor to a joined rendezvous, on a fake clock (plain floats).

What is proven: the happy path's actions and their order; a failed or silent
rendezvous candidate is dropped for the next with a fresh cookie, three failed is
RENDEZVOUS_FAILED; a refusing intro is followed by the next, all failed is
INTROS_UNREACHABLE; every client-side relay is in CLIENT_HALF for the cookie used and
the paths keep the rules (distinct, diverse, the RP only last and never an intro);
too few relays is NO_ROUTE; random inputs never raise and always end by the deadline.
"""

from __future__ import annotations

import random as stdlib_random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from vx6.core.hidden.client import AttemptState, RendezvousAttempt
from vx6.core.hidden.client_actions import (
    INTRODUCE_RATE_LIMITED,
    INTRODUCE_SENT_ON,
    INTRODUCE_UNKNOWN_INTRO,
    AttemptLimits,
    BuildIntroCircuit,
    BuildRendezvousCircuit,
    CandidateFailed,
    ClientAction,
    CloseCircuit,
    Failed,
    IntroFailed,
    IntroTarget,
    Joined,
    SendEstablishRendezvous,
    SendIntroduce,
)
from vx6.core.hidden.client_legs import Leg
from vx6.core.hidden.paths import CLIENT_HALF, SERVICE_HALF, relay_half
from vx6.core.hidden.profiles import PathProfile
from vx6.core.routes import RelayCandidate
from vx6.errors import StreamError, StreamFailed
from vx6.wire.cells import Endpoint

T0 = 1000.0


def relay(i: int, network: bytes | None = b"") -> RelayCandidate:
    net = f"net{i}".encode() if network == b"" else network
    return RelayCandidate(
        i.to_bytes(2, "big") * 16, bytes(32), (Endpoint(f"2001:db8::{i:x}", 4242),), net, 3600.0
    )


def intro_targets(relays: Sequence[RelayCandidate]) -> list[IntroTarget]:
    return [IntroTarget(r, bytes([k + 1]) * 32, bytes([k + 11]) * 32) for k, r in enumerate(relays)]


def randomness(seed: int = 1) -> Callable[[int], bytes]:
    return stdlib_random.Random(seed).randbytes


def make(
    profile: PathProfile = PathProfile.FAST,
    n_relays: int = 20,
    n_intros: int = 3,
    seed: int = 1,
    limits: AttemptLimits | None = None,
) -> RendezvousAttempt:
    relays = [relay(i) for i in range(1, n_relays + 1)]
    return RendezvousAttempt(
        profile, intro_targets(relays[:n_intros]), relays, randomness(seed), limits
    )


def one(actions: list[ClientAction], kind: type) -> object:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def started(attempt: RendezvousAttempt) -> tuple[BuildRendezvousCircuit, BuildIntroCircuit]:
    actions = attempt.start(T0)
    assert [type(a) for a in actions] == [BuildRendezvousCircuit, BuildIntroCircuit]
    build_rv, build_intro = actions
    assert isinstance(build_rv, BuildRendezvousCircuit)
    assert isinstance(build_intro, BuildIntroCircuit)
    return build_rv, build_intro


def established(attempt: RendezvousAttempt, rv: int, now: float) -> None:
    assert attempt.rendezvous_circuit_ready(rv, now) == [
        SendEstablishRendezvous(rv, attempt.cookie)
    ]
    attempt.rendezvous_established(rv, now)


def test_happy_path_emits_the_actions_in_order() -> None:
    attempt = make()
    rv, intro = started(attempt)
    assert rv.step != intro.step and intro.intro == 0
    assert rv.cookie == attempt.cookie and len(rv.cookie) == 32
    assert attempt.rendezvous_circuit_ready(rv.step, T0 + 1) == [
        SendEstablishRendezvous(rv.step, rv.cookie)
    ]
    assert attempt.intro_circuit_ready(intro.step, T0 + 1.5) == []  # the RP is not ready yet
    sent = attempt.rendezvous_established(rv.step, T0 + 2)
    assert sent == [SendIntroduce(intro.step, 0, rv.path[-1], rv.cookie)]
    assert attempt.introduce_ack(intro.step, INTRODUCE_SENT_ON, T0 + 3) == [
        CloseCircuit(intro.step, "introduced")
    ]
    assert attempt.next_deadline() == T0 + 3 + 10.0  # RENDEZVOUS2 within join_timeout
    assert attempt.rendezvous2(rv.step, T0 + 4) == [Joined(rv.step, 0)]
    assert attempt.state is AttemptState.JOINED
    assert attempt.next_deadline() is None
    info = attempt.describe(lookup=0.25)
    assert info["state"] == "joined" and info["candidate"] == 1
    assert info["client_side_relays"] == 3
    assert info["service_side"] == "unknown (profile says 3)"
    assert info["timings"] == {
        "lookup": 0.25,
        "rendezvous_build": 1.0,
        "establish": 1.0,
        "rendezvous": 1.0,
        "intro_build": 1.5,
        "introduction": 1.0,
        "total": 4.0,
    }


def test_intro_ready_after_the_rendezvous_sends_the_introduction_then() -> None:
    attempt = make()
    rv, intro = started(attempt)
    established(attempt, rv.step, T0 + 1)
    assert attempt.intro_circuit_ready(intro.step, T0 + 2) == [
        SendIntroduce(intro.step, 0, rv.path[-1], rv.cookie)
    ]


def test_a_failed_rendezvous_circuit_moves_to_the_next_candidate_with_a_new_cookie() -> None:
    attempt = make()
    rv, intro = started(attempt)
    actions = attempt.circuit_failed(rv.step, T0 + 2)
    assert [type(a) for a in actions] == [
        CloseCircuit,
        CandidateFailed,
        BuildRendezvousCircuit,
        BuildIntroCircuit,
    ]
    assert actions[0] == CloseCircuit(intro.step, actions[0].reason)  # type: ignore[union-attr]
    assert actions[1] == CandidateFailed(0, "circuit destroyed while BUILDING")
    second = actions[2]
    assert isinstance(second, BuildRendezvousCircuit)
    assert second.cookie != rv.cookie and second.path[-1] != rv.path[-1]
    assert attempt.describe()["candidate"] == 2
    assert attempt.counts["candidate_failures"] == 1


def test_no_rendezvous2_within_the_join_timeout_fails_the_candidate() -> None:
    attempt = make()
    rv, intro = started(attempt)
    established(attempt, rv.step, T0 + 1)
    attempt.intro_circuit_ready(intro.step, T0 + 1)
    attempt.introduce_ack(intro.step, INTRODUCE_SENT_ON, T0 + 2)
    assert attempt.timer(T0 + 11.9) == []
    actions = attempt.timer(T0 + 12)
    assert actions[0] == CloseCircuit(rv.step, "timed out while AWAITING_JOIN")
    assert actions[1] == CandidateFailed(0, "timed out while AWAITING_JOIN")
    second = one(actions, BuildRendezvousCircuit)
    assert isinstance(second, BuildRendezvousCircuit) and second.cookie != rv.cookie
    # the intro that accepted is used again for the next candidate
    assert one(actions, BuildIntroCircuit).intro == 0  # type: ignore[attr-defined]


def test_three_failed_candidates_are_rendezvous_failed() -> None:
    attempt = make()
    rv, _ = started(attempt)
    step = rv.step
    for _ in range(2):
        step = one(attempt.circuit_failed(step, T0 + 1), BuildRendezvousCircuit).step  # type: ignore[attr-defined]
    actions = attempt.circuit_failed(step, T0 + 2)
    failed = actions[-1]
    assert isinstance(failed, Failed) and failed.code is StreamError.RENDEZVOUS_FAILED
    assert isinstance(failed.error(), StreamFailed)
    assert sum(isinstance(a, CandidateFailed) for a in actions) == 1
    assert attempt.state is AttemptState.FAILED
    assert attempt.counts["candidate_failures"] == 3
    assert attempt.rendezvous2(step, T0 + 3) == []  # late: ignored, counted
    assert attempt.counts["ignored_after_end"] == 1


def test_an_unknown_intro_answer_moves_to_the_next_intro_with_the_same_rendezvous() -> None:
    attempt = make()
    rv, intro = started(attempt)
    established(attempt, rv.step, T0 + 1)
    attempt.intro_circuit_ready(intro.step, T0 + 1)
    actions = attempt.introduce_ack(intro.step, INTRODUCE_UNKNOWN_INTRO, T0 + 2)
    assert [type(a) for a in actions] == [CloseCircuit, IntroFailed, BuildIntroCircuit]
    second = actions[2]
    assert isinstance(second, BuildIntroCircuit) and second.intro == 1
    assert attempt.intro_circuit_ready(second.step, T0 + 3) == [
        SendIntroduce(second.step, 1, rv.path[-1], rv.cookie)  # same RP, same cookie
    ]
    assert attempt.counts["intro_refused_status_1"] == 1


def test_every_intro_failing_is_intros_unreachable() -> None:
    attempt = make()
    rv, intro = started(attempt)
    established(attempt, rv.step, T0 + 1)
    attempt.intro_circuit_ready(intro.step, T0 + 1)
    attempt.introduce_ack(intro.step, INTRODUCE_RATE_LIMITED, T0 + 2)  # intro 1 refuses
    step = attempt._intro.step  # type: ignore[union-attr]
    second = attempt.circuit_failed(step, T0 + 3)  # intro 2 fails to build
    third = one(second, BuildIntroCircuit)
    actions = attempt.timer(T0 + 3 + 15)  # intro 3 never finishes building
    assert actions[:2] == [
        CloseCircuit(third.step, "timed out while BUILDING"),  # type: ignore[attr-defined]
        IntroFailed(2, "timed out while BUILDING"),
    ]
    assert actions[2] == CloseCircuit(rv.step, "intros_unreachable")
    failed = actions[-1]
    assert isinstance(failed, Failed) and failed.code is StreamError.INTROS_UNREACHABLE
    assert "status 2" in failed.detail
    assert attempt.counts["intro_refused_status_2"] == 1


@pytest.mark.parametrize(
    ("profile", "side", "intro_relays"), [(PathProfile.FAST, 3, 2), (PathProfile.BALANCED, 5, 4)]
)
def test_path_lengths_follow_the_profile(
    profile: PathProfile, side: int, intro_relays: int
) -> None:
    attempt = make(profile)
    rv, intro = started(attempt)
    assert len(rv.path) == side + 1  # the client side, then the RP
    assert len(intro.path) == intro_relays + 1  # relays, then the intro
    assert intro.path[-1] == attempt.intros[0].relay


def test_too_few_relays_is_no_route() -> None:
    attempt = make(PathProfile.FAST, n_relays=4, n_intros=1)  # 3 non-intro relays, 4 needed
    *candidates, failed = attempt.start(T0)
    assert all(isinstance(c, CandidateFailed) for c in candidates)  # each RP tried, no route
    assert isinstance(failed, Failed) and failed.code is StreamError.NO_ROUTE
    assert "3 more relays" in str(failed.error())
    assert attempt.state is AttemptState.FAILED


def test_the_grind_fallback_is_counted() -> None:
    """With a random source that always gives the same bytes and every relay in the
    service's half for that cookie, the grind gives up and says so."""
    zero = bytes(32)
    relays = [r for r in (relay(i) for i in range(1, 200)) if relay_half(zero, r.identity)]
    relays = relays[:12]
    assert all(relay_half(zero, r.identity) == SERVICE_HALF for r in relays)
    attempt = RendezvousAttempt(
        PathProfile.FAST, intro_targets(relays[:1]), relays, lambda n: bytes(n)
    )
    rv, _ = started(attempt)
    assert rv.cookie == zero
    assert attempt.counts["cookie_grind_fallbacks"] == 1


def check_paths(
    attempt: RendezvousAttempt, actions: list[ClientAction], rp: bytes | None = None
) -> bytes | None:
    """The path rules for every build in `actions`; `rp`: the RP of the candidate in
    flight before them. Returns the RP in flight after them."""
    intro_ids = {t.relay.identity for t in attempt.intros}
    for action in actions:
        if not isinstance(action, BuildRendezvousCircuit | BuildIntroCircuit):
            continue
        ids = [r.identity for r in action.path]
        assert len(ids) == len(set(ids))
        nets = [r.network for r in action.path if r.network is not None]
        assert len(nets) == len(set(nets))
        if isinstance(action, BuildRendezvousCircuit):
            assert ids[-1] not in intro_ids
            assert all(relay_half(action.cookie, i) == CLIENT_HALF for i in ids[:-1])
            assert len(ids) == attempt.profile.side_relays + 1
            rp = ids[-1]
        else:
            assert ids[-1] == attempt.intros[action.intro].relay.identity
            assert len(ids) == attempt.profile.intro_relays + 1
            assert rp is not None and rp not in ids  # the RP only on its own path, last
    return rp


@settings(max_examples=150, deadline=None)
@given(
    st.integers(8, 40),
    st.sampled_from(PathProfile),
    st.integers(1, 3),
    st.integers(0, 2**32),
    st.integers(0, 6),
)
def test_client_side_relays_are_in_the_client_half_and_paths_keep_the_rules(
    n_relays: int, profile: PathProfile, n_intros: int, seed: int, shared_networks: int
) -> None:
    rng = stdlib_random.Random(seed)
    relays = [
        relay(
            i,
            None
            if rng.random() < 0.2
            else f"n{rng.randrange(n_relays + shared_networks)}".encode(),
        )
        for i in range(1, n_relays + 1)
    ]
    attempt = RendezvousAttempt(
        profile, intro_targets(rng.sample(relays, n_intros)), relays, randomness(seed)
    )
    actions = attempt.start(T0)
    if isinstance(actions[-1], Failed):
        assert actions[-1].code in (StreamError.NO_ROUTE, StreamError.INTROS_UNREACHABLE)
        return
    assert attempt.counts["cookie_grind_fallbacks"] == 0
    rp = check_paths(attempt, actions)
    rps = {a.path[-1].identity for a in actions if isinstance(a, BuildRendezvousCircuit)}
    while attempt.state is AttemptState.RUNNING:  # every candidate fails: all keep the rules
        rv = attempt._rendezvous
        assert rv is not None
        actions = attempt.circuit_failed(rv.step, T0 + 1)
        rp = check_paths(attempt, actions, rp)
        rps |= {a.path[-1].identity for a in actions if isinstance(a, BuildRendezvousCircuit)}
    assert len(rps) == len(attempt._rendezvous_points)  # distinct RPs


class RandomInputs(RuleBasedStateMachine):
    """Any order of inputs, with known, stale and unknown step ids: nothing raises,
    nothing comes out after the end, and the attempt ends by its deadline."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.attempt: RendezvousAttempt | None = None
        self.ended = False
        self.rp: bytes | None = None

    @rule(
        profile=st.sampled_from(PathProfile),
        n_relays=st.integers(4, 24),
        seed=st.integers(0, 2**16),
    )
    @precondition(lambda self: self.attempt is None)
    def start(self, profile: PathProfile, n_relays: int, seed: int) -> None:
        self.attempt = make(profile, n_relays, 3, seed)
        self.feed(self.attempt.start(self.now))

    def feed(self, actions: list[ClientAction]) -> None:
        assert self.attempt is not None
        if self.ended:
            assert actions == []
        self.rp = check_paths(self.attempt, actions, self.rp)
        if self.now >= T0 + self.attempt.limits.deadline:  # any input past it ends it
            assert self.attempt.state is not AttemptState.RUNNING
        ends = [a for a in actions if isinstance(a, Joined | Failed)]
        assert len(ends) <= 1
        if ends:
            assert actions[-1] is ends[0]
            self.ended = True

    @rule(
        kind=st.sampled_from(
            ["rv_ready", "rv_established", "intro_ready", "ack", "rv2", "failed", "timer"]
        ),
        step=st.integers(-1, 14),
        status=st.integers(0, 3),
        dt=st.floats(0, 12),
    )
    @precondition(lambda self: self.attempt is not None)
    def event(self, kind: str, step: int, status: int, dt: float) -> None:
        a = self.attempt
        assert a is not None
        self.now += dt
        calls = {
            "rv_ready": lambda: a.rendezvous_circuit_ready(step, self.now),
            "rv_established": lambda: a.rendezvous_established(step, self.now),
            "intro_ready": lambda: a.intro_circuit_ready(step, self.now),
            "ack": lambda: a.introduce_ack(step, status, self.now),
            "rv2": lambda: a.rendezvous2(step, self.now),
            "failed": lambda: a.circuit_failed(step, self.now),
            "timer": lambda: a.timer(self.now),
        }
        self.feed(calls[kind]())

    @rule(dt=st.floats(0, 3), status=st.sampled_from([0, 0, 0, 1, 2]))
    @precondition(lambda self: self.attempt is not None)
    def progress(self, dt: float, status: int) -> None:
        """The input the current legs wait for, so that runs also reach Joined."""
        a = self.attempt
        assert a is not None
        self.now += dt
        rv, intro = a._rendezvous, a._intro
        if a.state is not AttemptState.RUNNING or rv is None:
            self.feed(a.timer(self.now))
            return
        if rv.state is Leg.BUILDING:
            self.feed(a.rendezvous_circuit_ready(rv.step, self.now))
        elif rv.state is Leg.ESTABLISHING:
            self.feed(a.rendezvous_established(rv.step, self.now))
        elif rv.state is Leg.AWAITING_JOIN:
            self.feed(a.rendezvous2(rv.step, self.now))
        elif intro is not None and intro.state is Leg.BUILDING:
            self.feed(a.intro_circuit_ready(intro.step, self.now))
        elif intro is not None and intro.state is Leg.INTRODUCING:
            self.feed(a.introduce_ack(intro.step, status, self.now))
        else:
            self.feed(a.timer(self.now))

    @invariant()
    def ends_are_terminal(self) -> None:
        if self.attempt is not None:
            terminal = self.attempt.state in (AttemptState.JOINED, AttemptState.FAILED)
            assert terminal == self.ended
            assert (self.attempt.next_deadline() is None) == terminal

    def teardown(self) -> None:
        if self.attempt is None:
            return
        deadline = self.attempt.next_deadline()
        while deadline is not None:  # the timers alone end it by the overall deadline
            assert deadline <= T0 + self.attempt.limits.deadline
            self.now = max(self.now, deadline)
            self.feed(self.attempt.timer(self.now))
            deadline = self.attempt.next_deadline()
        assert self.attempt.state in (AttemptState.JOINED, AttemptState.FAILED)


TestRandomInputs = RandomInputs.TestCase
TestRandomInputs.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


@pytest.mark.parametrize("profile", list(PathProfile))
def test_with_enough_relays_an_rp_is_on_no_other_path_of_the_attempt(
    profile: PathProfile,
) -> None:
    attempt = make(profile, n_relays=30)
    builds: list[BuildRendezvousCircuit | BuildIntroCircuit] = list(started(attempt))
    while attempt.state is AttemptState.RUNNING:
        rv = attempt._rendezvous
        assert rv is not None
        actions = attempt.circuit_failed(rv.step, T0 + 1)
        builds += [a for a in actions if isinstance(a, BuildRendezvousCircuit | BuildIntroCircuit)]
    rps = {r.identity for r in attempt._rendezvous_points}
    assert len(rps) == 3
    for build in builds:
        assert not rps & {r.identity for r in build.path[:-1]}


def test_inputs_for_unknown_or_dropped_steps_are_ignored_and_counted() -> None:
    attempt = make()
    rv, intro = started(attempt)
    assert attempt.rendezvous_circuit_ready(99, T0) == []
    assert attempt.rendezvous_circuit_ready(intro.step, T0) == []  # an intro id: not this leg
    attempt.circuit_failed(rv.step, T0 + 1)
    assert attempt.rendezvous2(rv.step, T0 + 2) == []  # the dropped candidate's circuit
    assert attempt.counts["ignored_unknown_step"] == 1
    assert attempt.counts["ignored_stale_step"] == 2


def test_an_input_past_the_overall_deadline_ends_the_attempt_without_a_timer() -> None:
    attempt = make()
    rv, intro = started(attempt)
    established(attempt, rv.step, T0 + 1)
    attempt.intro_circuit_ready(intro.step, T0 + 1)
    attempt.introduce_ack(intro.step, INTRODUCE_SENT_ON, T0 + 2)
    late = attempt.rendezvous2(rv.step, T0 + 45)  # the adapter's timer did not fire
    assert late[0] == CloseCircuit(rv.step, "rendezvous_failed")
    assert late[-1] == Failed(StreamError.RENDEZVOUS_FAILED, "no join within 45 s")
    assert attempt.rendezvous2(rv.step, T0 + 46) == []


def test_a_rendezvous2_after_the_join_timeout_is_too_late_even_before_the_timer() -> None:
    attempt = make()
    rv, intro = started(attempt)
    established(attempt, rv.step, T0 + 1)
    attempt.intro_circuit_ready(intro.step, T0 + 1)
    attempt.introduce_ack(intro.step, INTRODUCE_SENT_ON, T0 + 2)
    late = attempt.rendezvous2(rv.step, T0 + 12)
    assert CandidateFailed(0, "timed out while AWAITING_JOIN") in late
    assert not any(isinstance(a, Joined) for a in late)
    assert attempt.describe()["candidate"] == 2


def test_a_message_out_of_turn_is_the_relays_protocol_error() -> None:
    attempt = make()
    rv, intro = started(attempt)
    actions = attempt.rendezvous2(rv.step, T0 + 1)  # RENDEZVOUS2 before the circuit is built
    assert actions[:3] == [
        CloseCircuit(rv.step, "protocol error: RENDEZVOUS2 while BUILDING"),
        CloseCircuit(intro.step, "protocol error: RENDEZVOUS2 while BUILDING"),
        CandidateFailed(0, "protocol error: RENDEZVOUS2 while BUILDING"),
    ]
    assert attempt.counts["protocol_errors"] == 1


@pytest.mark.parametrize("seed", range(20))
def test_the_cookie_leaves_the_service_enough_relays_in_its_half(seed: int) -> None:
    """14 relays, balanced (the test bed's size): the cookie keeps the client's 5 relays
    in its half AND leaves the service at least 5 of the others (guard and 4 middles) in
    its half, so the service's build does not run out of relays."""
    relays = [relay(i) for i in range(1, 15)]
    attempt = RendezvousAttempt(
        PathProfile.BALANCED, intro_targets(relays[:3]), relays, randomness(seed)
    )
    build_rv, _ = started(attempt)
    path = build_rv.path
    side, rp = path[:-1], path[-1]
    assert all(relay_half(build_rv.cookie, r.identity) == CLIENT_HALF for r in side)
    used = {r.identity for r in path}
    service_half = [
        r
        for r in relays
        if r.identity not in used and relay_half(build_rv.cookie, r.identity) == SERVICE_HALF
    ]
    assert len(service_half) >= 5, (rp, service_half)
