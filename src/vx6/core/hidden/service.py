"""The hidden service's own side, sans-IO (docs/hidden.md sections 6 and 7).

Theory of operation. The core keeps `limits.active` intros published and
`limits.standby` more established but unpublished, all on distinct relays, each circuit
starting at one of the service's guards (guards.py). Every input (`start`,
`relays_known`, `intro_established`, `intro_failed`, `guard_failed`, `timer`, ...)
ends in `_reconcile`, which brings the intros back to that shape and returns what the
adapter must do, as events (service_events.py):

* fill the active set from the standbys at once (an active that failed is replaced by a
  standby and the new descriptor goes out in the same call, well within
  `republish_deadline`);
* swap an intro that is *due* (past its random lifetime or introductions cap) for a
  fresh standby, retire it (it stays registered `retired_grace` seconds for clients
  with the old descriptor) and close it after;
* build as many intros as are missing (fresh serving + building < active + standby),
  after a backoff when builds keep failing and `no_route_retry` after too few relays;
* publish when the active set changed, every `republish_interval` (below the
  descriptor's lifetime, so it never expires), and `republish_deadline` after a publish
  that no node stored.

Revisions are wall-clock milliseconds kept above the last one: the core runs on the
monotonic `now` and learns the wall clock as an offset from `wall` (required at
`start`, optional on any other input, which then updates it). The service is
`reachable` once it fetched a descriptor it published back from the DHT, and stops
being so when no intro is active.

Introductions (`introduction`) are judged in a fixed order, each refusal counted under
its `Refusal` value: unknown intro, replay (per-intro cache), intro exhausted, cookie
reused, bad proof, not allowed, too many rendezvous builds, cookie memory full, no
path. Randomness only comes from `random(n)`; floats for route planning are derived
from it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from vx6.core.backoff import Backoff, RetrySchedule
from vx6.core.hidden.guards import GUARD_RETRY_AFTER, GuardSet, GuardState
from vx6.core.hidden.intros import (
    ESTABLISHED_STATES,
    SERVING_STATES,
    Intro,
    IntroInput,
    close_retired,
    rotate,
)
from vx6.core.hidden.intros import IntroState as St
from vx6.core.hidden.replay import ReplayCache, replay_capacity
from vx6.core.hidden.service_events import (
    DescriptorPublishRequested,
    IntroBuildRequested,
    IntroCloseRequested,
    Profile,
    Refusal,
    RendezvousBuildRequested,
    ServiceEvent,
    ServiceLimits,
    Verdict,
)
from vx6.core.hidden.service_intake import Allowed, RendezvousIntake
from vx6.core.hidden.service_paths import intro_relay, middles
from vx6.core.routes import RelayCandidate
from vx6.errors import UsageError

_BUILD_RETRY = RetrySchedule(start=1.0, cap=60.0)


class HiddenServiceCore:
    def __init__(
        self,
        profile: Profile,
        limits: ServiceLimits,
        guards: GuardState,
        random: Callable[[int], bytes],
        *,
        allowed: Allowed = frozenset(),
        public: bool = False,
        self_identity: bytes = b"",
    ) -> None:
        """`allowed`: client identity keys (or a predicate) let in when not `public`;
        private by default (nobody). `self_identity`: this node, never a relay here."""
        self.profile = profile
        self.limits = limits
        self._random = random
        self._self = self_identity
        self.guards = GuardSet(guards)
        self.counts: Counter[str] = Counter()
        self.intake = RendezvousIntake(
            limits,
            profile.side_relays,
            self.guards,
            self.counts,
            self._float,
            allowed=allowed,
            public=public,
            self_identity=self_identity,
        )
        self.intros: dict[int, Intro] = {}
        self._relays: dict[bytes, RelayCandidate] = {}
        self._next_id = 1
        self._backoff = Backoff(_BUILD_RETRY)
        self._no_route_until: float | None = None
        self._wall_offset: float | None = None
        self._started = False
        self._now = float("-inf")  # the latest `now` seen
        self.revision = 0
        self.published: tuple[int, ...] = ()
        self.published_at: float | None = None  # monotonic time of the last publish
        self._publish_at: float | None = None  # when the next periodic publish is due
        self._changed_at: float | None = None  # the active set differs from `published` since
        self.reachable = False

    # -- inputs ---------------------------------------------------------------------

    def start(
        self, now: float, relays: Sequence[RelayCandidate], *, wall: float, last_revision: int = 0
    ) -> list[ServiceEvent]:
        if self._started:
            raise UsageError("the service core is already started")
        self._started = True
        self.revision = last_revision
        self._wall_offset = wall - now
        self._relays = {c.identity: c for c in relays}
        return self._reconcile(now)

    def relays_known(
        self, relays: Sequence[RelayCandidate], now: float, *, wall: float | None = None
    ) -> list[ServiceEvent]:
        self._relays = {c.identity: c for c in relays}
        self._no_route_until = None
        return self._input(now, wall)

    def intro_established(
        self, intro_id: int, now: float, *, wall: float | None = None
    ) -> list[ServiceEvent]:
        intro = self._live(intro_id)
        if intro is None:
            return self._input(now, wall)
        intro.step(IntroInput.ESTABLISHED)
        intro.established_at = now
        self.counts["intro_established"] += 1
        self._backoff.succeeded()
        events: list[ServiceEvent] = []
        up = self.guards.mark_up(intro.guard)
        if up is not None:
            events.append(up)
        return events + self._input(now, wall)

    def intro_failed(
        self, intro_id: int, now: float, *, first_hop_failed: bool, wall: float | None = None
    ) -> list[ServiceEvent]:
        intro = self._live(intro_id)
        if intro is None:
            return self._input(now, wall)
        self.counts[f"intro_failed_{intro.state.name.lower()}"] += 1
        if intro.state is St.BUILDING:
            self._backoff.failed(now, self._float())
        intro.step(IntroInput.FAIL)
        del self.intros[intro_id]
        events: list[ServiceEvent] = []
        if first_hop_failed:
            events += self._guard_down(intro.guard, now)
        return events + self._input(now, wall)

    def guard_failed(
        self, identity: bytes, now: float, *, wall: float | None = None
    ) -> list[ServiceEvent]:
        """The link to a guard was lost (the circuits through it go too; the adapter
        reports each with `intro_failed`)."""
        return self._guard_down(identity, now) + self._input(now, wall)

    def timer(self, now: float, *, wall: float | None = None) -> list[ServiceEvent]:
        return self._input(now, wall)

    def descriptor_published(
        self, revision: int, stored: int, now: float, *, wall: float | None = None
    ) -> list[ServiceEvent]:
        """The DHT publish of `revision` finished, stored on `stored` nodes."""
        if revision == self.revision and stored == 0:
            self.counts["descriptor_store_failed"] += 1
            self._publish_at = now + self.limits.republish_deadline
        elif revision == self.revision:
            self.counts["descriptor_stored"] += 1
        return self._input(now, wall)

    def descriptor_fetched_back(self, revision: int, now: float) -> list[ServiceEvent]:
        if 0 < revision <= self.revision and self._role(St.ACTIVE):
            self.counts["descriptor_fetched_back"] += 1
            self.reachable = True
        else:
            self.counts["descriptor_fetched_back_stale"] += 1
        return []

    def introduction(
        self,
        intro_id: int,
        client_key_x: bytes,
        cookie: bytes,
        client_identity: bytes | None,
        proof_ok: bool,
        rendezvous_point: RelayCandidate,
        now: float,
    ) -> Verdict:
        """A decrypted INTRODUCE2 on `intro_id`: `client_identity` is the proven key, or
        None without a proof; `proof_ok` whether its signature verified."""
        self.counts["introductions"] += 1
        intro = self.intros.get(intro_id)
        if intro is None or intro.state not in ESTABLISHED_STATES:
            return self._refuse(Refusal.UNKNOWN_INTRO)
        if client_key_x in intro.replay:
            return self._refuse(Refusal.REPLAY)
        if intro.replay.full:
            return self._refuse(Refusal.INTRO_EXHAUSTED)
        intro.replay.add(client_key_x)
        intro.introductions += 1
        later: list[ServiceEvent] = []
        if intro.introductions == intro.cap:
            self.counts["intro_cap_reached"] += 1
            later = self._reconcile(now)
        refusal = self.intake.judge(cookie, client_identity, proof_ok, now)
        if refusal is not None:
            return self._refuse(refusal, later)
        path = self.intake.path(cookie, rendezvous_point, self._relays, now)
        if path is None:
            return self._refuse(Refusal.NO_ROUTE, later)
        build_id = self._take_id()
        self.intake.admit(build_id, cookie, path[0].identity, now)
        build = RendezvousBuildRequested(build_id, path, intro_id, client_key_x, cookie)
        return Verdict(None, (build, *later))

    def rendezvous_done(
        self, build_id: int, ok: bool, now: float, *, first_hop_failed: bool = False
    ) -> list[ServiceEvent]:
        guard = self.intake.done(build_id, ok)
        if guard is None or not first_hop_failed:
            return []
        return self._guard_down(guard, now)

    def next_deadline(self) -> float | None:
        """When `timer` should next be called (None: only on the next input)."""
        times: list[float] = []
        for intro in self.intros.values():
            if intro.state is St.RETIRED and intro.retired_at is not None:
                times.append(intro.retired_at + self.limits.retired_grace)
            due = intro.due_at()
            if due is not None:
                times.append(due)
        if self._publish_at is not None:
            times.append(self._publish_at)
        if self._changed_at is not None:
            times.append(self._changed_at + self.limits.republish_deadline)
        if self._missing(self._now) > 0:
            if self._backoff.next_at is not None:
                times.append(self._backoff.next_at)
            if self._no_route_until is not None:
                times.append(self._no_route_until)
            downs = [g.down_at for g in self.guards.state.guards if g.down_at is not None]
            times += [t + GUARD_RETRY_AFTER for t in downs]
        # A time already past waits for an input instead (a due intro waits for its
        # replacement), so the adapter's timer never spins.
        future = [t for t in times if t > self._now]
        return min(future) if future else None

    def describe(self) -> dict[str, Any]:
        """For `vx6 hidden list`."""
        return {
            "intros": [
                {
                    "id": i.intro_id,
                    "state": i.state.name.lower(),
                    "relay": i.relay.hex(),
                    "guard": i.guard.hex(),
                    "introductions": i.introductions,
                }
                for i in self.intros.values()
            ],
            "guards": [
                {"identity": g.identity.hex(), "up": g.down_at is None}
                for g in self.guards.state.guards
            ],
            "revision": self.revision,
            "published": list(self.published),
            "last_published": self.published_at,
            "reachable": self.reachable,
            "rendezvous_builds": len(self.intake.builds),
            "cookies_remembered": len(self.intake.cookies),
            "counters": dict(self.counts),
        }

    # -- the reconciliation -----------------------------------------------------------

    def _input(self, now: float, wall: float | None) -> list[ServiceEvent]:
        if not self._started:
            raise UsageError("start the service core first")
        if wall is not None:
            self._wall_offset = wall - now
        return self._reconcile(now)

    def _reconcile(self, now: float) -> list[ServiceEvent]:
        self._now = max(self._now, now)
        events: list[ServiceEvent] = []
        changed = self.guards.ensure(now, self._relays, self._float, self._not_guards())
        if changed is not None:
            self.counts["guards_chosen"] = self.guards.chosen_count
            events.append(changed)
        limits = self.limits
        closed = close_retired(
            self.intros, limits.retired_grace, limits.max_retired, now, self.counts
        )
        events += [IntroCloseRequested(i) for i in closed]
        rotate(self.intros.values(), limits.active, limits.standby, now, self.counts)
        events += self._build_missing(now)
        events += self._maybe_publish(now)
        if not self._role(St.ACTIVE):
            self.reachable = False
        return events

    def _missing(self, now: float) -> int:
        """Intros to build: the serving ones that are not due, and those being built,
        fall short of active + standby by this many."""
        fresh = sum(1 for i in self.intros.values() if i.state in SERVING_STATES and not i.due(now))
        building = len(self._role(St.BUILDING))
        return self.limits.active + self.limits.standby - fresh - building

    def _build_missing(self, now: float) -> list[ServiceEvent]:
        events: list[ServiceEvent] = []
        if not self._backoff.due(now):
            return events
        if self._no_route_until is not None and now < self._no_route_until:
            return events
        self._no_route_until = None
        for _ in range(self._missing(now)):
            build = self._new_intro(now)
            if build is None:
                self.counts["no_route"] += 1
                self._no_route_until = now + self.limits.no_route_retry
                break
            events.append(build)
        return events

    def directory_path(self, now: float) -> tuple[RelayCandidate, ...] | None:
        """A path to a directory proxy (docs/hidden.md section 3): a guard, one middle,
        then the relay that stores or fetches descriptors for the service (planned like
        an intro relay, so never a guard or this node); None if there is none."""
        guard = self.guards.pick(now, self._relays)
        if guard is None:
            return None
        relays = list(self._relays.values())
        exclude = self.guards.identities | {self._self}
        last = intro_relay(relays, guard, exclude, self._float)
        if last is None:
            return None
        hops = middles(relays, guard, last, 1, exclude, self._float)
        return None if hops is None else (guard, *hops, last)

    def _new_intro(self, now: float) -> IntroBuildRequested | None:
        guard = self.guards.pick(now, self._relays)
        if guard is None:
            return None
        relays = list(self._relays.values())
        in_use = {i.relay for i in self.intros.values()}
        exclude = in_use | self.guards.identities | {self._self}
        last = intro_relay(relays, guard, exclude, self._float)
        if last is None:
            return None
        hops = middles(relays, guard, last, self.profile.side_relays - 2, exclude, self._float)
        if hops is None:
            return None
        lo, hi = self.limits.intro_lifetime_min, self.limits.intro_lifetime_max
        cap_lo, cap_hi = self.limits.intro_introductions_min, self.limits.intro_introductions_max
        cap = min(cap_hi, cap_lo + int(self._float() * (cap_hi - cap_lo + 1)))
        intro = Intro(
            intro_id=self._take_id(),
            path=(guard, *hops, last),
            lifetime=lo + self._float() * (hi - lo),
            cap=cap,
            replay=ReplayCache(replay_capacity(cap)),
            built_at=now,
        )
        self.intros[intro.intro_id] = intro
        self.counts["intro_builds"] += 1
        return IntroBuildRequested(intro.intro_id, intro.path, self._random(32), self._random(32))

    def _maybe_publish(self, now: float) -> list[ServiceEvent]:
        active = tuple(sorted(i.intro_id for i in self._role(St.ACTIVE)))
        if not active:
            self._changed_at = None
            return []
        if active != self.published:
            # A short active set waits (at most the deadline) for intros still being
            # built, so the first descriptor lists them all instead of three revisions.
            if self._changed_at is None:
                self._changed_at = now
            # An intro gone from the published set is never waited for.
            lost = any(i not in self.intros for i in self.published)
            short = len(active) < self.limits.active and self._role(St.BUILDING)
            if short and not lost and now < self._changed_at + self.limits.republish_deadline:
                return []
        elif self._publish_at is None or now < self._publish_at:
            return []
        self._changed_at = None
        assert self._wall_offset is not None  # set by start
        wall_ms = int((now + self._wall_offset) * 1000)
        self.revision = max(wall_ms, self.revision + 1)
        self.published = active
        self.published_at = now
        self._publish_at = now + self.limits.republish_interval
        self.counts["descriptor_publishes"] += 1
        return [DescriptorPublishRequested(self.revision, active)]

    # -- helpers ----------------------------------------------------------------------

    def _refuse(self, refusal: Refusal, events: Sequence[ServiceEvent] = ()) -> Verdict:
        self.counts[refusal.value] += 1
        return Verdict(refusal, tuple(events))

    def _guard_down(self, identity: bytes, now: float) -> list[ServiceEvent]:
        changed = self.guards.mark_down(identity, now)
        if changed is None:
            return []
        self.counts["guard_down"] += 1
        return [changed]

    def _not_guards(self) -> set[bytes]:
        return {self._self} | {i.relay for i in self.intros.values()}

    def _live(self, intro_id: int) -> Intro | None:
        intro = self.intros.get(intro_id)
        if intro is None:
            self.counts["stale_event"] += 1  # closed or failed already: a race, not misuse
        return intro

    def _role(self, state: St) -> list[Intro]:
        return [i for i in self.intros.values() if i.state is state]

    def _take_id(self) -> int:
        taken = self._next_id
        self._next_id += 1
        return taken

    def _float(self) -> float:
        """A uniform float in [0, 1) from 53 random bits."""
        return (int.from_bytes(self._random(7), "big") >> 3) / float(1 << 53)
