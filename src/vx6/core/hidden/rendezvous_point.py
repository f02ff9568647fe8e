"""The rendezvous point, sans-IO: any relay, for any client (docs/hidden.md sections 5
and 7).

Theory of operation. A client builds a circuit to this relay and registers a fresh
32-byte cookie with ESTABLISH_RENDEZVOUS; the core keeps `cookie -> pending` (the
client's circuit, its source, when it expires) and answers RENDEZVOUS_ESTABLISHED. The
service, told the cookie inside the encrypted introduction, builds its own circuit here
and sends RENDEZVOUS1 (cookie | handshake reply). On a match the core sends the reply to
the client as RENDEZVOUS2 and asks the adapter to join the two circuits (`JoinCircuits`,
RelayCore's join); the cookie is used up. From then on cells pass between the two
circuits and the rendezvous point reads nothing but the end-to-end layer's ciphertext.

Each circuit has a role kept in `_ROLES`, a table of (role, input) -> role: a NEW
circuit becomes PENDING by a good ESTABLISH_RENDEZVOUS or JOINED by a matching
RENDEZVOUS1. An input missing from the table (a pending or joined circuit that
establishes again or offers itself as a service) is a protocol error: the circuit is
destroyed, and a joined one's partner with it. A malformed message, a cookie already
pending (the newcomer is destroyed) or a RENDEZVOUS1 for an unknown cookie destroy the
circuit that sent it.

Bounds. At most `max_pending` cookies in all and `max_pending_per_source` per source
(the adapter's key for where the circuit came from), over either DESTROY(RESOURCE_LIMIT);
at most `max_joined_pairs` joined pairs (a RENDEZVOUS1 over it is refused with
RESOURCE_LIMIT and the cookie stays pending). A pending cookie expires
`pending_lifetime` after it was registered: it is forgotten and counted, its circuit is
not destroyed (the client gives up on its own and may register another). Expiry runs at
every input and at `timer(now)`; `next_deadline()` says when the next one is due.
Cookies expire in the order they were registered: a registration's time is never taken
earlier than the previous one's, so a clock that steps back delays expiry, never
advances it. `circuit_closed(circuit, reason)` drops what the circuit held; closing one
of a joined pair destroys the other with the same reason (as a DESTROY passes hop by hop
unchanged). Counters in `counts`: `rendezvous_registered`, `rendezvous_expired`,
`rendezvous_joined`, `establish_malformed`, `establish_cookie_taken`,
`establish_refused_full`, `establish_refused_source`, `establish_on_pending_circuit`,
`establish_on_joined_circuit`, `rendezvous1_malformed`, `rendezvous1_unknown_cookie`,
`rendezvous1_refused_full`, `rendezvous1_on_pending_circuit`,
`rendezvous1_on_joined_circuit`, `pending_closed`, `joined_closed`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from enum import auto

from vx6.core.hidden.relay_actions import DestroyCircuit, JoinCircuits, RelayAction, SendOnCircuit
from vx6.core.states import TableEnum
from vx6.errors import DecodeError, DestroyReason
from vx6.wire.cells import RelayCommand
from vx6.wire.hidden import (
    Rendezvous2,
    decode_establish_rendezvous,
    decode_rendezvous1,
    encode_rendezvous2,
)


@dataclass(frozen=True, slots=True)
class RendezvousLimits:
    max_pending: int = 4096
    max_pending_per_source: int = 256
    pending_lifetime: float = 30.0  # seconds from ESTABLISH_RENDEZVOUS to expiry
    # Each pair is two of the relay's circuits (RelayLimits.max_circuits is 8192).
    max_joined_pairs: int = 4096


class _Role(TableEnum):
    NEW = auto()
    PENDING = auto()  # a client circuit waiting with its cookie
    JOINED = auto()  # one of a joined pair


class _Input(TableEnum):
    ESTABLISH = auto()
    RENDEZVOUS1 = auto()


_ROLES: dict[tuple[_Role, _Input], _Role] = {
    (_Role.NEW, _Input.ESTABLISH): _Role.PENDING,
    (_Role.NEW, _Input.RENDEZVOUS1): _Role.JOINED,
}
# The counter of each (role, input) the table refuses.
_OUT_OF_ROLE = {
    (_Role.PENDING, _Input.ESTABLISH): "establish_on_pending_circuit",
    (_Role.JOINED, _Input.ESTABLISH): "establish_on_joined_circuit",
    (_Role.PENDING, _Input.RENDEZVOUS1): "rendezvous1_on_pending_circuit",
    (_Role.JOINED, _Input.RENDEZVOUS1): "rendezvous1_on_joined_circuit",
}


@dataclass(frozen=True, slots=True)
class _Pending:
    circuit: Hashable
    source: Hashable
    expires: float


class RendezvousCore:
    def __init__(self, limits: RendezvousLimits | None = None) -> None:
        self.limits = limits or RendezvousLimits()
        self._pending: dict[bytes, _Pending] = {}  # insertion order = expiry order
        self._cookie_of: dict[Hashable, bytes] = {}  # PENDING circuits
        self._per_source: dict[Hashable, int] = {}
        self._partner: dict[Hashable, Hashable] = {}  # JOINED circuits, both ways
        self._latest = float("-inf")  # the latest registration time taken
        self.counts: Counter[str] = Counter()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def joined_pairs(self) -> int:
        return len(self._partner) // 2

    def partner(self, circuit: Hashable) -> Hashable | None:
        return self._partner.get(circuit)

    # -- inputs ---------------------------------------------------------------------

    def establish(
        self, circuit: Hashable, source: Hashable, data: bytes, now: float
    ) -> list[RelayAction]:
        """ESTABLISH_RENDEZVOUS's data on a client's `circuit`."""
        self._expire(now)
        refused = self._out_of_role(circuit, _Input.ESTABLISH)
        if refused is not None:
            return refused
        try:
            cookie = decode_establish_rendezvous(data).cookie
        except DecodeError as exc:
            return self._destroy(circuit, "establish_malformed", str(exc))
        if cookie in self._pending:
            return self._destroy(circuit, "establish_cookie_taken", "cookie already pending")
        if len(self._pending) >= self.limits.max_pending:
            return self._destroy(circuit, "establish_refused_full", "too many cookies", True)
        if self._per_source.get(source, 0) >= self.limits.max_pending_per_source:
            return self._destroy(
                circuit, "establish_refused_source", "too many cookies from one source", True
            )
        self._latest = max(self._latest, now)
        expires = self._latest + self.limits.pending_lifetime
        self._pending[cookie] = _Pending(circuit, source, expires)
        self._cookie_of[circuit] = cookie
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self.counts["rendezvous_registered"] += 1
        return [SendOnCircuit(circuit, RelayCommand.RENDEZVOUS_ESTABLISHED, b"")]

    def rendezvous1(self, circuit: Hashable, data: bytes, now: float) -> list[RelayAction]:
        """RENDEZVOUS1's data on a service's `circuit`."""
        self._expire(now)
        refused = self._out_of_role(circuit, _Input.RENDEZVOUS1)
        if refused is not None:
            return refused
        try:
            message = decode_rendezvous1(data)
        except DecodeError as exc:
            return self._destroy(circuit, "rendezvous1_malformed", str(exc))
        pending = self._pending.get(message.cookie)
        if pending is None:
            return self._destroy(circuit, "rendezvous1_unknown_cookie", "unknown cookie")
        if self.joined_pairs >= self.limits.max_joined_pairs:
            return self._destroy(circuit, "rendezvous1_refused_full", "too many joined", True)
        self._forget(message.cookie)
        client = pending.circuit
        self._partner[client] = circuit
        self._partner[circuit] = client
        self.counts["rendezvous_joined"] += 1
        reply = encode_rendezvous2(Rendezvous2(message.reply))
        return [
            SendOnCircuit(client, RelayCommand.RENDEZVOUS2, reply),
            JoinCircuits(client, circuit),
        ]

    def circuit_closed(self, circuit: Hashable, reason: DestroyReason) -> list[RelayAction]:
        """`circuit` is gone (a DESTROY with `reason` either way, or its link lost): drop
        what it held; the partner of a joined circuit is destroyed with the same reason."""
        cookie = self._cookie_of.get(circuit)
        if cookie is not None:
            self._forget(cookie)
            self.counts["pending_closed"] += 1
            return []
        partner = self._partner.pop(circuit, None)
        if partner is None:
            return []
        del self._partner[partner]
        self.counts["joined_closed"] += 1
        return [DestroyCircuit(partner, reason, "its joined circuit closed")]

    def timer(self, now: float) -> list[RelayAction]:
        """Expire the cookies due by `now`; their circuits stay (nothing to send)."""
        self._expire(now)
        return []

    def next_deadline(self) -> float | None:
        """When the next pending cookie expires, or None with none pending."""
        for pending in self._pending.values():
            return pending.expires
        return None

    # -- helpers --------------------------------------------------------------------

    def _role(self, circuit: Hashable) -> _Role:
        if circuit in self._cookie_of:
            return _Role.PENDING
        if circuit in self._partner:
            return _Role.JOINED
        return _Role.NEW

    def _out_of_role(self, circuit: Hashable, event: _Input) -> list[RelayAction] | None:
        role = self._role(circuit)
        if (role, event) in _ROLES:
            return None
        counter = _OUT_OF_ROLE[(role, event)]
        detail = counter.replace("_", " ")
        actions = self._destroy(circuit, counter, detail)
        cookie = self._cookie_of.get(circuit)
        if cookie is not None:
            self._forget(cookie)
        partner = self._partner.pop(circuit, None)
        if partner is not None:
            del self._partner[partner]
            actions.append(
                DestroyCircuit(partner, DestroyReason.PROTOCOL_ERROR, "its joined circuit broke")
            )
        return actions

    def _expire(self, now: float) -> None:
        while self._pending:
            cookie, pending = next(iter(self._pending.items()))
            if pending.expires > now:
                return
            self._forget(cookie)
            self.counts["rendezvous_expired"] += 1

    def _forget(self, cookie: bytes) -> None:
        pending = self._pending.pop(cookie)
        del self._cookie_of[pending.circuit]
        held = self._per_source[pending.source] - 1
        if held:
            self._per_source[pending.source] = held
        else:
            del self._per_source[pending.source]

    def _destroy(
        self, circuit: Hashable, counter: str, detail: str, resource: bool = False
    ) -> list[RelayAction]:
        self.counts[counter] += 1
        reason = DestroyReason.RESOURCE_LIMIT if resource else DestroyReason.PROTOCOL_ERROR
        return [DestroyCircuit(circuit, reason, detail)]
