"""One hidden-service connection attempt, sans-IO: from a decrypted descriptor to a
joined rendezvous (docs/hidden.md sections 4-8).

Theory of operation. The attempt holds up to three rendezvous candidates (RPs drawn up
front, client_paths.py) and tries them in order. A candidate is two legs at once:

* the *rendezvous leg*: a circuit along the client side (every relay in CLIENT_HALF
  for the candidate's fresh cookie) to the RP; once built, ESTABLISH_RENDEZVOUS with
  the cookie; once RENDEZVOUS_ESTABLISHED, it waits for an intro;
* the *intro leg*: a circuit to the first intro that has not failed in this attempt.
  When both legs are ready, INTRODUCE1 goes out; INTRODUCE_ACK(0) closes the intro
  circuit and starts the join timer (RENDEZVOUS2 within `join_timeout`); status 1 or 2,
  a failed build or no answer in time kills that intro and the next one is built for the
  same rendezvous.

A rendezvous leg that fails to build, is destroyed, gets no answer in time or no
RENDEZVOUS2 in time ends its candidate: its circuits are closed, CandidateFailed is
logged and the next candidate starts with a fresh cookie. The RP drops a pending cookie
`cookie_lifetime` after it was registered, so a candidate never waits beyond that.
The attempt ends with Joined, or Failed: INTROS_UNREACHABLE once every intro failed,
RENDEZVOUS_FAILED once every candidate failed or the overall deadline passed, NO_ROUTE
if the relays known cannot make the paths.

Each leg is a table of (state, input) -> state. A known circuit's input that its leg's
state does not allow is the relay's protocol error: the leg fails as if the circuit
had been destroyed. Inputs for step ids this attempt never issued, for circuits it
already dropped, or after the end are ignored and counted: they are races, not errors.
Time is `now` on every input; `timer(now)` fires what `next_deadline()` announced, and
every input fires the timers already due before it is handled (client_legs.timers_first),
so the outcome does not depend on how late the adapter's timer runs: a RENDEZVOUS2 after
the join timeout is too late, and any input past the overall deadline ends the attempt.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence

from vx6.core.hidden.client_actions import (
    INTRODUCE_SENT_ON,
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
from vx6.core.hidden.client_legs import (
    INTRO_LEG,
    LIVE,
    RENDEZVOUS_LEG,
    AttemptInput,
    AttemptState,
    Leg,
    LegCircuit,
    LegInput,
    advance,
    leg_timings,
    next_attempt_state,
    timers_first,
)
from vx6.core.hidden.client_paths import AttemptPaths
from vx6.core.hidden.profiles import PathProfile
from vx6.core.routes import RelayCandidate
from vx6.errors import StreamError, StreamFailed, UsageError
from vx6.wire.cells import Endpoint

_AI, _LI = AttemptInput, LegInput


class RendezvousAttempt:
    def __init__(
        self,
        profile: PathProfile,
        intros: Sequence[IntroTarget],
        relays: Sequence[RelayCandidate],
        random: Callable[[int], bytes],
        limits: AttemptLimits | None = None,
        *,
        exclude: Collection[bytes] = (),
        own_endpoints: Sequence[Endpoint] = (),
    ) -> None:
        """`relays`: every relay known (intro relays may be among them); `exclude`: this
        node's identity and any relay to avoid; `random(n)`: n fresh random bytes."""
        if not intros:
            raise UsageError("a descriptor names 1..3 intros, not none")
        self.profile = profile
        self.intros = tuple(intros)
        self.relays = tuple(relays)
        self.limits = limits or AttemptLimits()
        self.counts: Counter[str] = Counter()
        self._paths = AttemptPaths(
            profile,
            [t.relay for t in self.intros],
            relays,
            random,
            grind_tries=self.limits.grind_tries,
            exclude=exclude,
            own_endpoints=own_endpoints,
        )
        self._state = AttemptState.NEW
        self._rendezvous_points: list[RelayCandidate] = []
        self._candidate = -1
        self._cookie = b""
        self._rendezvous: LegCircuit | None = None
        self._intro: LegCircuit | None = None
        self._intro_index = -1
        self._dead_intros: dict[int, str] = {}  # intro index -> why
        self._issued = 0  # step ids 1..issued were handed out
        self._started = 0.0
        self._ended: float | None = None

    # -- inputs ---------------------------------------------------------------------

    def start(self, now: float) -> list[ClientAction]:
        if self._state is not AttemptState.NEW:
            raise UsageError("a rendezvous attempt starts once")
        self._started = now
        self._rendezvous_points = self._paths.rendezvous_points(self.limits.candidates)
        if not self._rendezvous_points:
            detail = self._paths.no_route().detail
            return self._fail(_AI.NO_ROUTE, StreamError.NO_ROUTE, detail, now)
        self._state = next_attempt_state(self._state, _AI.START)
        return self._next_candidate(now, first=True)

    @timers_first
    def rendezvous_circuit_ready(self, step: int, now: float) -> list[ClientAction]:
        leg = self._leg(step, self._rendezvous)
        if leg is None:
            return []
        if not self._advance_rendezvous(leg, _LI.BUILT, now):
            return self._drop_candidate(f"protocol error: built while {leg.state.name}", now)
        leg.deadline = now + self.limits.reply_timeout
        return [SendEstablishRendezvous(step, self._cookie)]

    @timers_first
    def rendezvous_established(self, step: int, now: float) -> list[ClientAction]:
        leg = self._leg(step, self._rendezvous)
        if leg is None:
            return []
        if not self._advance_rendezvous(leg, _LI.ESTABLISHED, now):
            return self._drop_candidate(f"protocol error: established while {leg.state.name}", now)
        leg.deadline = now + self.limits.cookie_lifetime
        return self._maybe_introduce(now)

    @timers_first
    def intro_circuit_ready(self, step: int, now: float) -> list[ClientAction]:
        leg = self._leg(step, self._intro)
        if leg is None:
            return []
        if not self._advance_intro(leg, _LI.BUILT, now):
            return self._drop_intro(f"protocol error: built while {leg.state.name}", now)
        leg.deadline = math.inf  # it waits for the rendezvous leg, which has its own timer
        return self._maybe_introduce(now)

    @timers_first
    def introduce_ack(self, step: int, status: int, now: float) -> list[ClientAction]:
        leg = self._leg(step, self._intro)
        if leg is None:
            return []
        rendezvous = self._rendezvous
        assert rendezvous is not None  # an intro leg lives only with its candidate
        if status != INTRODUCE_SENT_ON:
            if leg.state is not Leg.INTRODUCING:
                return self._drop_intro(f"protocol error: ack while {leg.state.name}", now)
            self.counts[f"intro_refused_status_{status}"] += 1
            self._advance_intro(leg, _LI.REFUSED, now)
            return self._drop_intro(f"refused the introduction (status {status})", now)
        if not self._advance_intro(leg, _LI.ACCEPTED, now):
            return self._drop_intro(f"protocol error: ack while {leg.state.name}", now)
        self._advance_rendezvous(rendezvous, _LI.ACCEPTED, now)
        registered = rendezvous.marks["established"]
        rendezvous.deadline = min(
            now + self.limits.join_timeout, registered + self.limits.cookie_lifetime
        )
        return [CloseCircuit(leg.step, "introduced")]

    @timers_first
    def rendezvous2(self, step: int, now: float) -> list[ClientAction]:
        leg = self._leg(step, self._rendezvous)
        if leg is None:
            return []
        if not self._advance_rendezvous(leg, _LI.RENDEZVOUS2, now):
            return self._drop_candidate(f"protocol error: RENDEZVOUS2 while {leg.state.name}", now)
        self._state = next_attempt_state(self._state, _AI.CANDIDATE_JOINED)
        self._ended = now
        return [Joined(step, self._intro_index)]

    @timers_first
    def circuit_failed(self, step: int, now: float) -> list[ClientAction]:
        rendezvous = self._rendezvous is not None and self._rendezvous.step == step
        leg = self._leg(step, self._rendezvous if rendezvous else self._intro)
        if leg is None:
            return []
        state = leg.state.name
        leg.state = Leg.DROPPED  # gone already: nothing to close
        if rendezvous:
            return self._drop_candidate(f"circuit destroyed while {state}", now)
        return self._drop_intro(f"circuit destroyed while {state}", now, close=False)

    def timer(self, now: float) -> list[ClientAction]:
        if self._state is not AttemptState.RUNNING:
            return []
        if now >= self._started + self.limits.deadline:
            detail = f"no join within {self.limits.deadline:g} s"
            return self._fail(_AI.DEADLINE, StreamError.RENDEZVOUS_FAILED, detail, now)
        out: list[ClientAction] = []
        if self._rendezvous is not None and now >= self._rendezvous.deadline:
            self.counts["rendezvous_timeouts"] += 1
            out += self._drop_candidate(f"timed out while {self._rendezvous.state.name}", now)
        if (
            self._state is AttemptState.RUNNING
            and self._intro is not None
            and self._intro.state in LIVE
            and now >= self._intro.deadline
        ):
            self.counts["intro_timeouts"] += 1
            out += self._drop_intro(f"timed out while {self._intro.state.name}", now)
        return out

    def next_deadline(self) -> float | None:
        if self._state is not AttemptState.RUNNING:
            return None
        times = [self._started + self.limits.deadline]
        times += [c.deadline for c in (self._rendezvous, self._intro) if c and c.state in LIVE]
        return min(times)

    # -- what it is doing ---------------------------------------------------------------

    @property
    def state(self) -> AttemptState:
        return self._state

    @property
    def cookie(self) -> bytes:
        """The current candidate's cookie (empty before the start)."""
        return self._cookie

    def describe(self, lookup: float | None = None) -> dict[str, object]:
        """For `vx6 forwards`: what the attempt is doing and how long each step took
        (seconds, floats). `lookup`: the adapter's descriptor lookup time, if known."""
        rendezvous, intro = self._rendezvous, self._intro
        state = self._state.name.lower()
        if self._state is AttemptState.RUNNING and rendezvous is not None:
            state += f" ({rendezvous.state.name.lower()})"
        timings = {} if lookup is None else {"lookup": lookup}
        timings |= leg_timings(rendezvous, intro)
        if self._ended is not None:
            timings["total"] = self._ended - self._started
        return {
            "state": state,
            "candidate": self._candidate + 1,  # 1-based for people; 0 before the start
            "candidates": len(self._rendezvous_points),
            "intro": self._intro_index + 1,
            "client_side_relays": self.profile.side_relays,
            "service_side": f"unknown (profile says {self.profile.side_relays})",
            "timings": timings,
        }

    # -- candidates ---------------------------------------------------------------------

    def _next_candidate(self, now: float, *, first: bool = False) -> list[ClientAction]:
        """Start the next candidate; `first`: at the start, where no candidate having a
        route means too few relays (NO_ROUTE) rather than a failed rendezvous."""
        out: list[ClientAction] = []
        while self._candidate + 1 < len(self._rendezvous_points):
            self._candidate += 1
            rp = self._rendezvous_points[self._candidate]
            other_rps = {r.identity for r in self._rendezvous_points} - {rp.identity}
            try:
                side = self._paths.side(rp, other_rps)
            except StreamFailed:
                if first and self._candidate + 1 == len(self._rendezvous_points):
                    detail = self._paths.no_route().detail
                    return out + self._fail(_AI.NO_ROUTE, StreamError.NO_ROUTE, detail, now)
                self.counts["candidate_failed_no_route"] += 1
                out.append(CandidateFailed(self._candidate, "no route to this rendezvous point"))
                continue
            if not side.ground:
                self.counts["cookie_grind_fallbacks"] += 1
            self._cookie = side.cookie
            step = self._new_step()
            path = (*side.relays, rp)
            self._rendezvous = LegCircuit(
                step, path, Leg.BUILDING, now + self.limits.build_timeout, {"start": now}
            )
            out.append(BuildRendezvousCircuit(step, path, side.cookie))
            return out + self._next_intro(now)
        detail = f"{len(self._rendezvous_points)} rendezvous candidates failed"
        return out + self._fail(
            _AI.CANDIDATES_EXHAUSTED, StreamError.RENDEZVOUS_FAILED, detail, now
        )

    def _drop_candidate(self, reason: str, now: float) -> list[ClientAction]:
        out = self._close_live(reason)
        self.counts["candidate_failures"] += 1
        out.append(CandidateFailed(self._candidate, reason))
        self._rendezvous = self._intro = None
        return out + self._next_candidate(now)

    # -- intros -------------------------------------------------------------------------

    def _next_intro(self, now: float) -> list[ClientAction]:
        """Build a circuit to the first intro that has not failed in this attempt."""
        rendezvous = self._rendezvous
        assert rendezvous is not None
        out: list[ClientAction] = []
        avoid = {r.identity for r in (*rendezvous.path, *self._rendezvous_points)}
        for index in range(len(self.intros)):
            if index in self._dead_intros:
                continue
            try:
                path = self._paths.intro_path(index, rendezvous.path[-1], avoid)
            except StreamFailed:
                self._dead_intros[index] = "no route"
                self.counts["intro_no_route"] += 1
                out.append(IntroFailed(index, "no route to this intro"))
                continue
            self._intro_index = index
            step = self._new_step()
            self._intro = LegCircuit(
                step, path, Leg.BUILDING, now + self.limits.build_timeout, {"start": now}
            )
            return [*out, BuildIntroCircuit(step, path, index)]
        self._intro = None
        if all(why == "no route" for why in self._dead_intros.values()):
            detail = f"no route to any of the {len(self.intros)} intros"
            return out + self._fail(_AI.NO_ROUTE, StreamError.NO_ROUTE, detail, now)
        detail = "; ".join(f"intro {i + 1}: {why}" for i, why in sorted(self._dead_intros.items()))
        return out + self._fail(_AI.INTROS_EXHAUSTED, StreamError.INTROS_UNREACHABLE, detail, now)

    def _drop_intro(self, reason: str, now: float, *, close: bool = True) -> list[ClientAction]:
        """The current intro failed: close its circuit (unless it is gone already), mark
        it dead for this attempt, and build a circuit to the next one."""
        intro, rendezvous = self._intro, self._rendezvous
        assert intro is not None and rendezvous is not None
        out: list[ClientAction] = []
        if close:
            out.append(CloseCircuit(intro.step, reason))
        intro.state = Leg.DROPPED
        self._dead_intros[self._intro_index] = reason
        self.counts["intro_failures"] += 1
        out.append(IntroFailed(self._intro_index, reason))
        if rendezvous.state is Leg.INTRODUCING:
            self._advance_rendezvous(rendezvous, _LI.INTRO_LOST, now)
        return out + self._next_intro(now)

    def _maybe_introduce(self, now: float) -> list[ClientAction]:
        rendezvous, intro = self._rendezvous, self._intro
        if rendezvous is None or intro is None:
            return []
        if rendezvous.state is not Leg.ESTABLISHED or intro.state is not Leg.READY:
            return []
        self._advance_rendezvous(rendezvous, _LI.INTRODUCE_SENT, now)
        self._advance_intro(intro, _LI.INTRODUCE_SENT, now)
        intro.deadline = now + self.limits.reply_timeout
        rp = rendezvous.path[-1]
        return [SendIntroduce(intro.step, self._intro_index, rp, self._cookie)]

    # -- plumbing -----------------------------------------------------------------------

    def _leg(self, step: int, leg: LegCircuit | None) -> LegCircuit | None:
        """The current leg `step` names, or None (counted) for a step that is unknown,
        of a dropped leg, or of the other kind, and for anything after the end."""
        if self._state is not AttemptState.RUNNING:
            self.counts["ignored_after_end"] += 1
            return None
        if leg is not None and leg.step == step and leg.state in LIVE:
            return leg
        known = 0 < step <= self._issued
        self.counts["ignored_stale_step" if known else "ignored_unknown_step"] += 1
        return None

    def _advance_rendezvous(self, leg: LegCircuit, event: LegInput, now: float) -> bool:
        return advance(RENDEZVOUS_LEG, leg, event, now, self.counts)

    def _advance_intro(self, leg: LegCircuit, event: LegInput, now: float) -> bool:
        return advance(INTRO_LEG, leg, event, now, self.counts)

    def _new_step(self) -> int:
        self._issued += 1
        return self._issued

    def _close_live(self, reason: str) -> list[ClientAction]:
        return [
            CloseCircuit(c.step, reason)
            for c in (self._rendezvous, self._intro)
            if c is not None and c.state in LIVE
        ]

    def _fail(
        self, event: AttemptInput, code: StreamError, detail: str, now: float
    ) -> list[ClientAction]:
        out = self._close_live(code.name.lower())
        for c in (self._rendezvous, self._intro):
            if c is not None:
                c.state = Leg.DROPPED
        self._state = next_attempt_state(self._state, event)
        self._ended = now
        return [*out, Failed(code, detail)]
