"""The introduction point, sans-IO: any relay, for any hidden service (docs/hidden.md
sections 4 and 7).

Theory of operation. A service builds a circuit to this relay and sends ESTABLISH_INTRO:
an intro auth key, the rate and burst of introductions it accepts, and the auth key's
signature over the circuit binding (so the message is good on this circuit only). The
core keeps `auth key -> registration` (the service's circuit, its source, a token
bucket) and answers INTRO_ESTABLISHED. A client's INTRODUCE1 names an auth key: an
unknown key is answered INTRODUCE_ACK(UNKNOWN_INTRO), one over its bucket
INTRODUCE_ACK(RATE_LIMITED) (neither is forwarded), and otherwise the data goes to the
service unchanged as INTRODUCE2 and the client gets INTRODUCE_ACK(SENT_ON).

Each circuit has a role, decided by its first message and kept in `_ROLES`, a table of
(role, input) -> role: a NEW circuit becomes SERVICE by a good ESTABLISH_INTRO (one
registration per circuit, never a second) or CLIENT by an INTRODUCE1 (any number of
them). An input missing from the table is a protocol error and destroys the circuit, as
do a malformed message and a bad signature.

Bounds. At most `max_registrations` in all and `max_per_source` per source (the
adapter's key for where the circuit came from): over either, DESTROY(RESOURCE_LIMIT). A
second ESTABLISH_INTRO for a registered auth key (only its holder can sign one) replaces
the first: that registration is dropped and its circuit destroyed, so one key never
holds two slots. The service's rate and burst are clamped to `max_rate`/`max_burst`.
CLIENT circuits are remembered (to refuse ESTABLISH_INTRO on them) up to
`max_client_circuits`, the oldest forgotten first. `circuit_closed` drops what a circuit
held. Every outcome and refusal has a counter in `counts`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import auto

from vx6.core.budget import RateBudget
from vx6.core.hidden.relay_actions import DestroyCircuit, SendOnCircuit
from vx6.core.states import TableEnum
from vx6.crypto.keys import verify as ed25519_verify
from vx6.errors import DecodeError, DestroyReason, UsageError
from vx6.wire.cells import RelayCommand
from vx6.wire.hidden import (
    BINDING_LEN,
    IntroduceAck,
    IntroduceStatus,
    decode_establish_intro,
    decode_introduce1,
    encode_introduce_ack,
    establish_intro_signed_bytes,
)

IntroAction = SendOnCircuit | DestroyCircuit


@dataclass(frozen=True, slots=True)
class IntroLimits:
    max_registrations: int = 1024
    max_per_source: int = 64
    max_rate: float = 100.0  # introductions per second, per registration
    max_burst: float = 500.0
    # Circuits that sent INTRODUCE1, remembered so they cannot turn into a service's
    # circuit; the relay holds at most 8192 circuits (RelayLimits.max_circuits).
    max_client_circuits: int = 8192


class _Role(TableEnum):
    NEW = auto()
    SERVICE = auto()  # holds one registration
    CLIENT = auto()  # has sent INTRODUCE1


class _Input(TableEnum):
    ESTABLISH = auto()
    INTRODUCE = auto()


_ROLES: dict[tuple[_Role, _Input], _Role] = {
    (_Role.NEW, _Input.ESTABLISH): _Role.SERVICE,
    (_Role.NEW, _Input.INTRODUCE): _Role.CLIENT,
    (_Role.CLIENT, _Input.INTRODUCE): _Role.CLIENT,
}
# The counter of each (role, input) the table refuses.
_OUT_OF_ROLE = {
    (_Role.SERVICE, _Input.ESTABLISH): "intro_second_on_circuit",
    (_Role.CLIENT, _Input.ESTABLISH): "intro_on_client_circuit",
    (_Role.SERVICE, _Input.INTRODUCE): "introduce_on_service_circuit",
}


@dataclass(slots=True)
class _Registration:
    circuit: Hashable
    source: Hashable
    budget: RateBudget


class IntroPointCore:
    def __init__(
        self,
        limits: IntroLimits | None = None,
        verify: Callable[[bytes, bytes, bytes], bool] = ed25519_verify,
    ) -> None:
        self.limits = limits or IntroLimits()
        self._verify = verify
        self._by_key: dict[bytes, _Registration] = {}
        self._key_of_circuit: dict[Hashable, bytes] = {}  # SERVICE circuits
        self._per_source: dict[Hashable, int] = {}
        self._clients: dict[Hashable, None] = {}  # CLIENT circuits, oldest first
        self.counts: Counter[str] = Counter()

    def __len__(self) -> int:
        """Registrations held."""
        return len(self._by_key)

    @property
    def client_circuits(self) -> int:
        return len(self._clients)

    def registered(self, auth_key: bytes) -> Hashable | None:
        """The circuit registered for `auth_key`, if any."""
        registration = self._by_key.get(auth_key)
        return None if registration is None else registration.circuit

    # -- inputs ---------------------------------------------------------------------

    def establish(
        self, circuit: Hashable, source: Hashable, binding: bytes, data: bytes, now: float
    ) -> list[IntroAction]:
        """ESTABLISH_INTRO's data on `circuit`, whose binding (shared with the service)
        the adapter passes; UsageError if that binding is not 32 bytes."""
        if not isinstance(binding, bytes) or len(binding) != BINDING_LEN:
            raise UsageError(f"a circuit binding is {BINDING_LEN} bytes")
        refused = self._out_of_role(circuit, _Input.ESTABLISH)
        if refused is not None:
            return refused
        try:
            message = decode_establish_intro(data)
        except DecodeError as exc:
            return self._protocol_error(circuit, "intro_malformed", str(exc))
        old = self._by_key.get(message.auth_key)
        full = self._refusal(source, old)
        if full is not None:
            self.counts[full] += 1
            return [DestroyCircuit(circuit, DestroyReason.RESOURCE_LIMIT, full)]
        signed = establish_intro_signed_bytes(
            binding, message.auth_key, message.rate, message.burst
        )
        if not self._verify(message.auth_key, signed, message.signature):
            return self._protocol_error(circuit, "intro_bad_signature", "bad signature")
        actions: list[IntroAction] = []
        if old is not None:
            self._drop(old.circuit)
            self.counts["intro_replaced"] += 1
            actions.append(DestroyCircuit(old.circuit, DestroyReason.NONE, "intro replaced"))
        rate = min(float(message.rate), self.limits.max_rate)
        burst = min(float(message.burst), self.limits.max_burst)
        if rate < message.rate or burst < message.burst:
            self.counts["intro_rate_clamped"] += 1
        self._by_key[message.auth_key] = _Registration(
            circuit, source, RateBudget.full(rate, burst, now)
        )
        self._key_of_circuit[circuit] = message.auth_key
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self.counts["intro_registered"] += 1
        actions.append(SendOnCircuit(circuit, RelayCommand.INTRO_ESTABLISHED, b""))
        return actions

    def introduce(self, circuit: Hashable, data: bytes, now: float) -> list[IntroAction]:
        """INTRODUCE1's data on a client's `circuit`."""
        refused = self._out_of_role(circuit, _Input.INTRODUCE)
        if refused is not None:
            return refused
        try:
            message = decode_introduce1(data)
        except DecodeError as exc:
            self._clients.pop(circuit, None)
            return self._protocol_error(circuit, "introduce_malformed", str(exc))
        self._remember_client(circuit)
        registration = self._by_key.get(message.auth_key)
        if registration is None:
            self.counts["introduce_unknown"] += 1
            return [self._ack(circuit, IntroduceStatus.UNKNOWN_INTRO)]
        if not registration.budget.take(1, now):
            self.counts["introduce_rate_limited"] += 1
            return [self._ack(circuit, IntroduceStatus.RATE_LIMITED)]
        self.counts["introduce_forwarded"] += 1
        return [
            SendOnCircuit(registration.circuit, RelayCommand.INTRODUCE2, bytes(data)),
            self._ack(circuit, IntroduceStatus.SENT_ON),
        ]

    def circuit_closed(self, circuit: Hashable) -> list[IntroAction]:
        """`circuit` is gone (destroyed either way, or its link lost): drop what it held.
        Nothing to send: the intro point joins no circuits."""
        if circuit in self._key_of_circuit:
            self._drop(circuit)
            self.counts["intro_closed"] += 1
        self._clients.pop(circuit, None)
        return []

    # -- helpers --------------------------------------------------------------------

    def _role(self, circuit: Hashable) -> _Role:
        if circuit in self._key_of_circuit:
            return _Role.SERVICE
        if circuit in self._clients:
            return _Role.CLIENT
        return _Role.NEW

    def _out_of_role(self, circuit: Hashable, event: _Input) -> list[IntroAction] | None:
        role = self._role(circuit)
        if (role, event) in _ROLES:
            return None
        self._drop(circuit)
        self._clients.pop(circuit, None)
        counter = _OUT_OF_ROLE[(role, event)]
        return self._protocol_error(circuit, counter, counter.replace("_", " "))

    def _refusal(self, source: Hashable, replaced: _Registration | None) -> str | None:
        """The counter of a registration the limits refuse, or None. A replacement frees
        the slot it takes over, so the key's holder can always move its intro."""
        total = len(self._by_key) - (replaced is not None)
        if total >= self.limits.max_registrations:
            return "intro_refused_full"
        from_source = self._per_source.get(source, 0)
        if replaced is not None and replaced.source == source:
            from_source -= 1
        if from_source >= self.limits.max_per_source:
            return "intro_refused_source"
        return None

    def _drop(self, circuit: Hashable) -> None:
        auth_key = self._key_of_circuit.pop(circuit, None)
        if auth_key is None:
            return
        registration = self._by_key.pop(auth_key)
        held = self._per_source[registration.source] - 1
        if held:
            self._per_source[registration.source] = held
        else:
            del self._per_source[registration.source]

    def _remember_client(self, circuit: Hashable) -> None:
        if circuit in self._clients:
            return
        if len(self._clients) >= max(1, self.limits.max_client_circuits):
            del self._clients[next(iter(self._clients))]
            self.counts["client_circuits_forgotten"] += 1
        self._clients[circuit] = None

    def _protocol_error(self, circuit: Hashable, counter: str, detail: str) -> list[IntroAction]:
        self.counts[counter] += 1
        return [DestroyCircuit(circuit, DestroyReason.PROTOCOL_ERROR, detail)]

    @staticmethod
    def _ack(circuit: Hashable, status: IntroduceStatus) -> SendOnCircuit:
        data = encode_introduce_ack(IntroduceAck(status))
        return SendOnCircuit(circuit, RelayCommand.INTRODUCE_ACK, data)
