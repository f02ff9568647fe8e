"""One introduction point of the service, as the service's core tracks it.

Theory of operation. An intro is a circuit the service built to a relay and registered
there with an auth key of its own. It is BUILDING until the adapter reports the
registration; then STANDBY (established, not published) until the core promotes it to
ACTIVE (published). An intro past its lifetime or its introductions cap is *due*: it
keeps its role until a replacement is ready, then it is RETIRED (still registered, for
clients holding the old descriptor) and CLOSED after the grace period (or earlier
when more than `max_retired` are waiting, so their number stays bounded). A failure (its
circuit gone) ends any live intro as FAILED. CLOSED and FAILED intros leave the table.
The transitions are the table `_TRANSITIONS`; an input missing from it is the adapter's
misuse (UsageError).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import auto

from vx6.core.hidden.replay import ReplayCache
from vx6.core.routes import RelayCandidate
from vx6.core.states import TableEnum
from vx6.errors import UsageError


class IntroState(TableEnum):
    BUILDING = auto()
    STANDBY = auto()
    ACTIVE = auto()
    RETIRED = auto()
    CLOSED = auto()
    FAILED = auto()


class IntroInput(TableEnum):
    ESTABLISHED = auto()
    PROMOTE = auto()
    RETIRE = auto()
    CLOSE = auto()
    FAIL = auto()


_S, _I = IntroState, IntroInput
_TRANSITIONS: dict[tuple[IntroState, IntroInput], IntroState] = {
    (_S.BUILDING, _I.ESTABLISHED): _S.STANDBY,
    (_S.BUILDING, _I.FAIL): _S.FAILED,
    (_S.BUILDING, _I.CLOSE): _S.CLOSED,  # no longer wanted (too many retired, shutdown)
    (_S.STANDBY, _I.PROMOTE): _S.ACTIVE,
    (_S.STANDBY, _I.RETIRE): _S.RETIRED,
    (_S.STANDBY, _I.FAIL): _S.FAILED,
    (_S.ACTIVE, _I.RETIRE): _S.RETIRED,
    (_S.ACTIVE, _I.FAIL): _S.FAILED,
    (_S.RETIRED, _I.CLOSE): _S.CLOSED,
    (_S.RETIRED, _I.FAIL): _S.FAILED,
}

ESTABLISHED_STATES = frozenset({IntroState.STANDBY, IntroState.ACTIVE, IntroState.RETIRED})
SERVING_STATES = frozenset({IntroState.STANDBY, IntroState.ACTIVE})


@dataclass(slots=True)
class Intro:
    intro_id: int
    path: tuple[RelayCandidate, ...]  # guard first, the intro relay last
    lifetime: float  # seconds from establishment
    cap: int  # introductions before rotation
    replay: ReplayCache
    state: IntroState = IntroState.BUILDING
    built_at: float = 0.0
    established_at: float | None = None
    retired_at: float | None = None
    introductions: int = 0

    @property
    def guard(self) -> bytes:
        return self.path[0].identity

    @property
    def relay(self) -> bytes:
        return self.path[-1].identity

    def step(self, event: IntroInput) -> IntroState:
        new = _TRANSITIONS.get((self.state, event))
        if new is None:
            raise UsageError(f"intro {self.intro_id}: {event.name} while {self.state.name}")
        self.state = new
        return new

    def due(self, now: float) -> bool:
        """Past its lifetime or its introductions cap: to be replaced."""
        if self.introductions >= self.cap:
            return True
        return self.established_at is not None and now >= self.established_at + self.lifetime

    def due_at(self) -> float | None:
        if self.established_at is None or self.state not in SERVING_STATES:
            return None
        return self.established_at + self.lifetime


def rotate(
    intros: Iterable[Intro], active: int, standby: int, now: float, counts: Counter[str]
) -> None:
    """Fill the active set from the standbys (fresh ones first), swap each due active
    for a fresh standby, and retire a due standby once enough fresh ones stand by."""
    pool = list(intros)
    actives = [i for i in pool if i.state is IntroState.ACTIVE]
    fresh = [i for i in pool if i.state is IntroState.STANDBY and not i.due(now)]
    stale = [i for i in pool if i.state is IntroState.STANDBY and i.due(now)]
    while len(actives) < active and (fresh or stale):
        promoted = (fresh or stale).pop(0)
        promoted.step(IntroInput.PROMOTE)
        counts["intro_promoted"] += 1
        actives.append(promoted)
    for intro in actives:
        if intro.due(now) and fresh:
            _retire(intro, now, counts)
            fresh.pop(0).step(IntroInput.PROMOTE)
            counts["intro_promoted"] += 1
    for intro in stale:
        if len(fresh) >= standby:
            _retire(intro, now, counts)


def _retire(intro: Intro, now: float, counts: Counter[str]) -> None:
    intro.step(IntroInput.RETIRE)
    intro.retired_at = now
    counts["intro_retired"] += 1


def close_retired(
    intros: dict[int, Intro], grace: float, max_retired: int, now: float, counts: Counter[str]
) -> list[int]:
    """Close (and drop from `intros`) the retired intros past their grace, and the oldest
    beyond `max_retired`; their ids."""
    retired = sorted(
        (i for i in intros.values() if i.state is IntroState.RETIRED),
        key=lambda i: i.retired_at or 0.0,
    )
    closing = [i for i in retired if now >= (i.retired_at or 0.0) + grace]
    waiting = [i for i in retired if i not in closing]
    early = waiting[: max(0, len(waiting) - max_retired)]
    counts["retired_closed_early"] += len(early)
    for intro in closing + early:
        intro.step(IntroInput.CLOSE)
        del intros[intro.intro_id]
        counts["intro_closed"] += 1
    return [i.intro_id for i in closing + early]
