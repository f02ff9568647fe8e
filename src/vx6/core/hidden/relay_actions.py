"""What the relay-side hidden-service roles (intro_point.py, rendezvous_point.py) ask
their adapter to do. The cores never touch a circuit themselves: they return these, in
order, and the adapter carries them out on the relay core.

Circuits are opaque hashable keys chosen by the adapter (it uses (link id, circuit id)).
A core forgets a circuit the moment it asks for it to be destroyed, so the adapter's
`circuit_closed` call that follows is harmless.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from vx6.errors import DestroyReason
from vx6.wire.cells import RelayCommand


@dataclass(frozen=True, slots=True)
class SendOnCircuit:
    """Send one relay message (stream 0) on `circuit`, towards its client end."""

    circuit: Hashable
    command: RelayCommand
    data: bytes


@dataclass(frozen=True, slots=True)
class DestroyCircuit:
    circuit: Hashable
    reason: DestroyReason
    detail: str


@dataclass(frozen=True, slots=True)
class JoinCircuits:
    """Join the two circuits at this rendezvous point (RelayCore's join)."""

    client_circuit: Hashable
    service_circuit: Hashable


RelayAction = SendOnCircuit | DestroyCircuit | JoinCircuits
