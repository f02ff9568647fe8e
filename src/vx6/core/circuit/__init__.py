"""Onion circuits, sans-IO: the client end (`client.py`), the relay and exit side
(`relay.py`, its data path `relay_path.py`, its circuit record `relay_circuit.py`),
where cells go (`outbox.py`), their events and the relay limits. See docs/circuits.md."""

from __future__ import annotations

from vx6.core.budget import SourceLimiter
from vx6.core.circuit.client import ClientCircuit, ClientState, HopSpec
from vx6.core.circuit.events import (
    CircuitBuilt,
    CircuitDestroyed,
    CircuitEvent,
    ExtendRequested,
    HopAdded,
    StreamMessageReceived,
)
from vx6.core.circuit.limits import RelayLimits
from vx6.core.circuit.relay import RelayCore
from vx6.core.circuit.relay_circuit import RelayState

__all__ = [
    "CircuitBuilt",
    "CircuitDestroyed",
    "CircuitEvent",
    "ClientCircuit",
    "ClientState",
    "ExtendRequested",
    "HopAdded",
    "HopSpec",
    "RelayCore",
    "RelayLimits",
    "RelayState",
    "SourceLimiter",
    "StreamMessageReceived",
]
