"""The circuit router's part in hidden services (a mixin of `CircuitRouter`).

Theory of operation. A circuit that ends at this node and carries an intro-point or
rendezvous-point command (ESTABLISH_INTRO, INTRODUCE1, ESTABLISH_RENDEZVOUS,
RENDEZVOUS1; docs/hidden.md section 4) is not an exit: its messages go, with the
circuit's binding and its source (the key its creations count against), to the hidden
relay role (node/hidden_relay.py), which holds the intro registrations and rendezvous
cookies. That role answers through `send_on`, `destroy` and `join`, and the router tells
it of every circuit that ends so that nothing it holds outlives its circuit. A node that
is no relay never offered the role, and destroys such a circuit with NOT_A_RELAY.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from vx6.core.circuit.events import CircuitEvent, StreamMessageReceived
from vx6.core.circuit.relay import RelayCore
from vx6.core.circuit.relay_circuit import RelayState
from vx6.errors import DestroyReason
from vx6.net.link import LinkProtocol
from vx6.wire.cells import RelayCommand

# The commands a relay answers as an intro, rendezvous or directory proxy point
# (docs/hidden.md 3, 4).
HIDDEN_RELAY_COMMANDS = frozenset(
    {
        RelayCommand.ESTABLISH_INTRO,
        RelayCommand.INTRODUCE1,
        RelayCommand.ESTABLISH_RENDEZVOUS,
        RelayCommand.RENDEZVOUS1,
        RelayCommand.DHT_STORE,  # the directory proxy (docs/hidden.md section 3)
        RelayCommand.DHT_FETCH,
    }
)


@dataclass(frozen=True, slots=True)
class HiddenRelayMessage:
    """A hidden-service command on a circuit that ends at this node."""

    circuit: tuple[int, int]  # (link id, circuit id)
    command: int
    data: bytes
    binding: bytes  # the circuit binding this node shares with the circuit's builder
    source: object  # whose creations the circuit counts against (rate limits)


class HiddenRelay(Protocol):
    """The intro-point and rendezvous-point role (node/hidden_relay.py)."""

    def message(self, message: HiddenRelayMessage) -> None: ...

    def circuit_closed(self, circuit: tuple[int, int], reason: DestroyReason) -> None: ...


class RouterHidden:
    """Mixin: the attributes below are set by `CircuitRouter`."""

    core: RelayCore
    _links: Mapping[int, LinkProtocol]
    _hidden: HiddenRelay | None

    def process(self, events: list[CircuitEvent]) -> None:
        raise NotImplementedError

    def _source(self, link: LinkProtocol) -> object:
        raise NotImplementedError

    def use_hidden_relay(self, role: HiddenRelay) -> None:
        """Intro-point and rendezvous-point commands go to `role` (relays only)."""
        self._hidden = role

    def _hidden_messages(self, key: tuple[int, int], batch: list[StreamMessageReceived]) -> None:
        """Intro and rendezvous commands on a circuit that ends here: to the hidden relay
        role, or refused by a node that is no relay (it never offered the role)."""
        link = self._links.get(key[0])
        binding = self.core.binding(*key)
        if self._hidden is None or not self.core.relay or link is None or binding is None:
            self.process(self.core.destroy(*key, DestroyReason.NOT_A_RELAY))
            return
        source = self._source(link)
        for event in batch:
            if self.core.state_of(*key) is None:
                return  # an earlier message of the batch ended the circuit
            self._hidden.message(
                HiddenRelayMessage(key, event.command, bytes(event.data), binding, source)
            )

    def send_on(self, circuit: tuple[int, int], command: int, data: bytes) -> None:
        """The hidden relay role answers on a circuit that ends here."""
        self.process(self.core.send(circuit[0], circuit[1], command, 0, data))

    def destroy(self, circuit: tuple[int, int], reason: DestroyReason) -> None:
        self.process(self.core.destroy(circuit[0], circuit[1], reason))

    def join(self, client: tuple[int, int], service: tuple[int, int]) -> None:
        """The rendezvous point joins a client's circuit to a service's. Either may have
        moved on since it registered (a peer can EXTEND its own circuit): then both
        are destroyed rather than joined."""
        if any(self.core.state_of(*key) is not RelayState.OPEN for key in (client, service)):
            events = self.core.destroy(*client, DestroyReason.PROTOCOL_ERROR)
            self.process(events + self.core.destroy(*service, DestroyReason.PROTOCOL_ERROR))
            return
        self.process(self.core.join(client, service))
