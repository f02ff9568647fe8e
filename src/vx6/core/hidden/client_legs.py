"""The state tables of a hidden-service connection attempt (client.py).

Theory of operation. The attempt as a whole is NEW -> RUNNING -> JOINED or FAILED.
Each rendezvous candidate runs two legs, each a circuit with its own table of
(state, input) -> state: the rendezvous leg (BUILDING -> ESTABLISHING -> ESTABLISHED
-> INTRODUCING -> AWAITING_JOIN -> DONE) and the intro leg (BUILDING -> READY ->
INTRODUCING -> DONE). An input a leg's state does not allow is refused here (`advance`
says False, counted as a protocol error) and the caller drops the leg.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import auto
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from vx6.core.hidden.client_actions import ClientAction
from vx6.core.routes import RelayCandidate
from vx6.core.states import TableEnum


class AttemptState(TableEnum):
    NEW = auto()
    RUNNING = auto()
    JOINED = auto()
    FAILED = auto()


class AttemptInput(TableEnum):
    START = auto()
    NO_ROUTE = auto()
    CANDIDATE_JOINED = auto()
    CANDIDATES_EXHAUSTED = auto()
    INTROS_EXHAUSTED = auto()
    DEADLINE = auto()


class Leg(TableEnum):
    BUILDING = auto()
    ESTABLISHING = auto()  # rendezvous: ESTABLISH_RENDEZVOUS sent
    ESTABLISHED = auto()  # rendezvous: registered, waiting for an intro
    READY = auto()  # intro: built, waiting for the rendezvous
    INTRODUCING = auto()  # INTRODUCE1 sent, waiting for INTRODUCE_ACK
    AWAITING_JOIN = auto()  # rendezvous: introduced, waiting for RENDEZVOUS2
    DONE = auto()  # rendezvous: joined; intro: introduced (circuit closed)
    DROPPED = auto()


class LegInput(TableEnum):
    BUILT = auto()
    ESTABLISHED = auto()
    INTRODUCE_SENT = auto()
    ACCEPTED = auto()
    INTRO_LOST = auto()  # rendezvous: the introduction in flight failed
    REFUSED = auto()
    RENDEZVOUS2 = auto()
    LOST = auto()  # destroyed, timed out or a protocol error


_A, _AI = AttemptState, AttemptInput
ATTEMPT: dict[tuple[AttemptState, AttemptInput], AttemptState] = {
    (_A.NEW, _AI.START): _A.RUNNING,
    (_A.NEW, _AI.NO_ROUTE): _A.FAILED,
    (_A.RUNNING, _AI.NO_ROUTE): _A.FAILED,
    (_A.RUNNING, _AI.CANDIDATE_JOINED): _A.JOINED,
    (_A.RUNNING, _AI.CANDIDATES_EXHAUSTED): _A.FAILED,
    (_A.RUNNING, _AI.INTROS_EXHAUSTED): _A.FAILED,
    (_A.RUNNING, _AI.DEADLINE): _A.FAILED,
}

_L, _LI = Leg, LegInput
LIVE = (_L.BUILDING, _L.ESTABLISHING, _L.ESTABLISHED, _L.READY, _L.INTRODUCING, _L.AWAITING_JOIN)
RENDEZVOUS_LEG: dict[tuple[Leg, LegInput], Leg] = {
    (_L.BUILDING, _LI.BUILT): _L.ESTABLISHING,
    (_L.ESTABLISHING, _LI.ESTABLISHED): _L.ESTABLISHED,
    (_L.ESTABLISHED, _LI.INTRODUCE_SENT): _L.INTRODUCING,
    (_L.INTRODUCING, _LI.ACCEPTED): _L.AWAITING_JOIN,
    (_L.INTRODUCING, _LI.INTRO_LOST): _L.ESTABLISHED,
    (_L.AWAITING_JOIN, _LI.RENDEZVOUS2): _L.DONE,
    **{(s, _LI.LOST): _L.DROPPED for s in LIVE},
}
INTRO_LEG: dict[tuple[Leg, LegInput], Leg] = {
    (_L.BUILDING, _LI.BUILT): _L.READY,
    (_L.READY, _LI.INTRODUCE_SENT): _L.INTRODUCING,
    (_L.INTRODUCING, _LI.ACCEPTED): _L.DONE,
    (_L.INTRODUCING, _LI.REFUSED): _L.DROPPED,
    **{(s, _LI.LOST): _L.DROPPED for s in LIVE},
}


@dataclass(slots=True)
class LegCircuit:
    """One leg: a circuit this attempt ordered, and when each of its steps happened."""

    step: int
    path: tuple[RelayCandidate, ...]
    state: Leg
    deadline: float
    marks: dict[str, float] = field(default_factory=dict)


def next_attempt_state(state: AttemptState, event: AttemptInput) -> AttemptState:
    new = ATTEMPT.get((state, event))
    if new is None:  # the methods above only ask for what the table holds
        raise AssertionError(f"{event.name} while {state.name}")
    return new


def advance(
    table: dict[tuple[Leg, LegInput], Leg],
    leg: LegCircuit,
    event: LegInput,
    now: float,
    counts: Counter[str],
) -> bool:
    """One step of a leg's table; False (counted) if its state does not allow it."""
    new = table.get((leg.state, event))
    if new is None:
        counts["protocol_errors"] += 1
        return False
    leg.state = new
    leg.marks.setdefault(event.name.lower(), now)
    return True


def leg_timings(rendezvous: LegCircuit | None, intro: LegCircuit | None) -> dict[str, float]:
    """Seconds each finished step of the current legs took (for `describe`)."""
    spans = {
        "rendezvous_build": (rendezvous, "start", "built"),
        "establish": (rendezvous, "built", "established"),
        "rendezvous": (rendezvous, "accepted", "rendezvous2"),
        "intro_build": (intro, "start", "built"),
        "introduction": (intro, "introduce_sent", "accepted"),
    }
    return {
        name: leg.marks[b] - leg.marks[a]
        for name, (leg, a, b) in spans.items()
        if leg is not None and a in leg.marks and b in leg.marks
    }


class Timed(Protocol):
    def next_deadline(self) -> float | None: ...

    def timer(self, now: float) -> list[ClientAction]: ...


_T = TypeVar("_T", bound=Timed)
_P = ParamSpec("_P")


def timers_first(
    method: Callable[Concatenate[_T, _P], list[ClientAction]],
) -> Callable[Concatenate[_T, _P], list[ClientAction]]:
    """An input (its last argument is `now`) fires the timers that are due first, however
    late the adapter's own timer is: nothing joins after its timeout."""

    @functools.wraps(method)
    def run(machine: _T, /, *args: _P.args, **kwargs: _P.kwargs) -> list[ClientAction]:
        now = kwargs.get("now", args[-1] if args else None)
        assert isinstance(now, int | float)  # every input says when it happened
        deadline = machine.next_deadline()
        due = machine.timer(now) if deadline is not None and now >= deadline else []
        return due + method(machine, *args, **kwargs)

    return run
