"""The record a relay keeps per circuit, and the table of its states and inputs.

States and inputs form the table `_TRANSITIONS`; `RelayedCircuit.step` refuses any
other step with CircuitFailure(PROTOCOL_ERROR), which destroys the circuit.

A circuit that ends here may be joined to another (relay_join.py, docs/hidden.md
section 5): JOINED, with `partner` the other circuit. A joined circuit only passes
forward cells on to its partner; a message for this hop (FOR_US) is refused.
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import auto

from vx6.core.circuit.events import next_state
from vx6.core.states import TableEnum
from vx6.crypto.onion import HopCrypto
from vx6.wire.cells import relay_header

CircuitKey = tuple[int, int]


class RelayState(TableEnum):
    OPEN = auto()  # this node is the circuit's end
    LINKING = auto()  # EXTEND accepted, waiting for the adapter's link
    CREATING = auto()  # CREATE sent to the next hop
    EXTENDED = auto()  # forwarding in both directions
    JOINED = auto()  # ends here, joined to `partner`: forward cells go on to the partner


class RelayInput(TableEnum):
    FOR_US = auto()
    EXTEND = auto()
    LINK_READY = auto()
    CREATED = auto()
    FORWARD = auto()
    BACKWARD = auto()
    JOIN = auto()


_S, _I = RelayState, RelayInput
_TRANSITIONS: dict[tuple[RelayState, RelayInput], RelayState] = {
    (_S.OPEN, _I.FOR_US): _S.OPEN,
    (_S.OPEN, _I.EXTEND): _S.LINKING,
    (_S.LINKING, _I.LINK_READY): _S.CREATING,
    (_S.CREATING, _I.CREATED): _S.EXTENDED,
    (_S.EXTENDED, _I.FOR_US): _S.EXTENDED,
    (_S.EXTENDED, _I.FORWARD): _S.EXTENDED,
    (_S.EXTENDED, _I.BACKWARD): _S.EXTENDED,
    (_S.OPEN, _I.JOIN): _S.JOINED,
    (_S.JOINED, _I.FORWARD): _S.JOINED,  # a "pass on" cell, to the partner's prev
}


class RelayedCircuit:
    """One circuit at this node: its two (link, circuit id) ends, its hop crypto and
    state, and the bytes queued for it."""

    __slots__ = (
        "active_at",
        "buffered",
        "crypto",
        "depth",
        "next",
        "next_header",
        "onionskin",
        "partner",
        "prev",
        "prev_header",
        "seen",
        "serial",
        "source",
        "state",
    )

    def __init__(
        self, serial: int, prev: CircuitKey, depth: int, crypto: HopCrypto, now: float = 0.0
    ) -> None:
        self.serial = serial
        self.prev = prev
        self.prev_header = relay_header(prev[1])  # starts every RELAY cell sent to prev
        self.next: CircuitKey | None = None
        self.next_header = b""  # set with `next`
        self.depth = depth
        self.crypto = crypto
        self.state = RelayState.OPEN
        self.onionskin = b""
        self.partner: RelayedCircuit | None = None  # set while JOINED
        self.buffered = 0
        # Activity without a clock on the data path: the cells through this hop, counted
        # by its two layer counters, as last seen (`seen`) at `active_at` (relay_idle.py).
        self.seen = 0
        self.active_at = now
        self.source: Hashable = None  # whose creation it counts against (Holdings)

    def cells_counted(self) -> int:
        return self.crypto.forward.counter + self.crypto.backward.counter

    def step(self, event: RelayInput) -> None:
        self.state = next_state(_TRANSITIONS, self.state, event)
