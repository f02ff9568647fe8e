"""The service's admission of introductions that passed their intro's replay cache.

Theory of operation. `RendezvousIntake` decides whether the service answers a client,
in a fixed order, each refusal counted under its `Refusal` value by the caller: a
cookie already used (CookieMemory, replay.py), a proof given that did not verify, a
client not allowed (private by default: nobody unless the service is public or the
client's proven key is allowed), `max_rendezvous_builds` builds already under way, the
cookie memory full, no path. An accepted introduction takes one build slot (keyed by a
build id, freed by `done`) and its cookie is remembered. The path starts at a guard in
SERVICE_HALF for the cookie if there is one (else the other guard, counted as
`guard_in_client_half`), never the rendezvous point itself, then middles from
SERVICE_HALF (service_paths.py), then the rendezvous point.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

from vx6.core.hidden.guards import GuardSet
from vx6.core.hidden.paths import SERVICE_HALF, relay_half
from vx6.core.hidden.replay import CookieMemory
from vx6.core.hidden.service_events import Refusal, ServiceLimits
from vx6.core.hidden.service_paths import middles, service_half
from vx6.core.routes import RelayCandidate

Allowed = Callable[[bytes | None], bool] | frozenset[bytes]


class RendezvousIntake:
    def __init__(
        self,
        limits: ServiceLimits,
        side_relays: int,
        guards: GuardSet,
        counts: Counter[str],
        rng: Callable[[], float],
        *,
        allowed: Allowed,
        public: bool,
        self_identity: bytes,
    ) -> None:
        self.limits = limits
        self._middles = side_relays - 1
        self._guards = guards
        self._counts = counts
        self._rng = rng
        self._allowed = allowed
        self.public = public
        self._self = self_identity
        self.cookies = CookieMemory(limits.cookie_memory, limits.max_cookies)
        self.builds: dict[int, bytes] = {}  # build id -> the guard its path starts at

    def judge(
        self, cookie: bytes, client_identity: bytes | None, proof_ok: bool, now: float
    ) -> Refusal | None:
        if self.cookies.used(cookie, now):
            return Refusal.COOKIE_REUSED
        if client_identity is not None and not proof_ok:
            return Refusal.BAD_PROOF
        if not self.is_allowed(client_identity):
            return Refusal.NOT_ALLOWED
        if len(self.builds) >= self.limits.max_rendezvous_builds:
            return Refusal.BUILDS_FULL
        if self.cookies.full(now):
            return Refusal.COOKIE_MEMORY_FULL
        return None

    def is_allowed(self, client_identity: bytes | None) -> bool:
        if self.public:
            return True
        if isinstance(self._allowed, frozenset):
            return client_identity is not None and client_identity in self._allowed
        return self._allowed(client_identity)

    def path(
        self,
        cookie: bytes,
        point: RelayCandidate,
        relays: Mapping[bytes, RelayCandidate],
        now: float,
    ) -> tuple[RelayCandidate, ...] | None:
        guard = self._guards.pick(
            now,
            relays,
            prefer=lambda identity: relay_half(cookie, identity) == SERVICE_HALF,
            avoid={point.identity},
        )
        if guard is None:
            return None
        pool = service_half(cookie, list(relays.values()))
        exclude = self._guards.identities | {self._self, point.identity}
        hops = middles(pool, guard, point, self._middles, exclude, self._rng)
        if hops is None:
            return None
        if relay_half(cookie, guard.identity) != SERVICE_HALF:
            self._counts["guard_in_client_half"] += 1
        return (guard, *hops, point)

    def admit(self, build_id: int, cookie: bytes, guard: bytes, now: float) -> None:
        self.cookies.remember(cookie, now)
        self.builds[build_id] = guard
        self._counts["rendezvous_builds"] += 1

    def done(self, build_id: int, ok: bool) -> bytes | None:
        """Free the build's slot; its guard, or None for an unknown build id."""
        guard = self.builds.pop(build_id, None)
        if guard is None:
            self._counts["stale_event"] += 1
            return None
        self._counts["rendezvous_ok" if ok else "rendezvous_failed"] += 1
        return guard
