"""What the circuit cores hand back to their adapter: frozen events, named in the past
tense. A link is an opaque integer chosen by the adapter; a circuit on a link is the
pair (link, circuit id). Cells are not events: the cores write them through a
`CellOutbox` (outbox.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from vx6.errors import CircuitFailure, DestroyReason
from vx6.wire.cells import Endpoint


@dataclass(frozen=True, slots=True)
class ExtendRequested:
    """A relay needs a link to the node with this identity key. The adapter answers with
    `RelayCore.link_ready(request_id, ...)` or `RelayCore.link_failed(request_id)`."""

    request_id: int
    identity: bytes
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class HopAdded:
    """Client: the handshake with the hop at `depth` completed."""

    link: int
    circuit_id: int
    depth: int


@dataclass(frozen=True, slots=True)
class CircuitBuilt:
    """Client: every hop of the path is keyed; streams may start."""

    link: int
    circuit_id: int
    hops: int


@dataclass(frozen=True, slots=True)
class CircuitDestroyed:
    """The circuit is gone on this node. `local` says this node decided it (and sent
    DESTROY); otherwise a neighbour's DESTROY or a lost link ended it. One log line."""

    link: int
    circuit_id: int
    reason: DestroyReason
    detail: str
    local: bool


@dataclass(frozen=True, slots=True)
class StreamMessageReceived:
    """A relay message for a stream reached its end of the circuit (the client, or the
    hop the client addressed, normally the exit)."""

    link: int
    circuit_id: int
    command: int
    stream_id: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class StrayCellsExceeded:
    """A link sent more cells for circuits that never existed here than the limit allows
    (`RelayLimits.stray_limit` per `stray_interval`); the adapter closes it."""

    link: int
    count: int


CircuitEvent = (
    ExtendRequested
    | HopAdded
    | CircuitBuilt
    | CircuitDestroyed
    | StreamMessageReceived
    | StrayCellsExceeded
)


_State = TypeVar("_State", bound=Enum)
_Input = TypeVar("_Input", bound=Enum)


def next_state(
    table: Mapping[tuple[_State, _Input], _State], state: _State, event: _Input
) -> _State:
    """One step of a circuit state table; an input the state does not allow is the
    peer's protocol error and ends the circuit."""
    new = table.get((state, event))
    if new is None:
        raise CircuitFailure(DestroyReason.PROTOCOL_ERROR, f"{event.name} while {state.name}")
    return new
