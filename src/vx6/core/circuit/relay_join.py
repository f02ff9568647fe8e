"""Joining two circuits at the rendezvous point, sans-IO (docs/hidden.md section 5).

`RelayCore` (core/circuit/relay.py) inherits these operations. Theory of operation:

* `join(key_a, key_b)`: two circuits that both end at this node (OPEN, each named by
  its prev key) become JOINED, each the other's `partner`. The rendezvous role calls it
  when a RENDEZVOUS1 matches a registered cookie, after it sent RENDEZVOUS2 on the
  client's circuit. Anything else is refused with UsageError and changes nothing: an
  unknown key, a key that is not the circuit's prev, the same circuit twice, a circuit
  already joined, one that does not end here. A peer can move its own circuit out of
  OPEN (an EXTEND after ESTABLISH_RENDEZVOUS), so the role checks
  `state_of(...) is RelayState.OPEN` for both before it joins (else it destroys the
  service's circuit, as for an unknown cookie).
* The data path (relay_path.py `_pass_joined`): a forward cell on either circuit whose
  layer says "pass on" goes on as a backward cell of the partner, to the partner's prev
  link, decrypted and re-sealed in place; this node sees only the end-to-end layer's
  ciphertext. A layer that says "for you" (a message for the rendezvous point) after
  the join destroys the pair (PROTOCOL_ERROR); so does any failure of either circuit.
  A joined circuit has no next, so no cell can come "from next".
* The pair ends together: whatever removes one circuit (a DESTROY from its prev, a lost
  link, a bad cell, idle expiry, the memory budget, a local destroy) removes the
  partner too, with DESTROY and the same reason towards the partner's prev
  (`_remove_partner`, called by `RelayCore._remove`).
* Accounting is unchanged: each circuit of the pair is charged its overhead plus the
  bytes the adapter reports queued for its own key (`buffered`). The cells queued on
  the partner's prev link carry the partner's circuit id, so the router reports them
  for the partner's key and they are charged to the partner, whose cells they are;
  either circuit over `max_circuit_buffer` ends the pair. Every cell through the pair
  advances one layer counter of each circuit (the sender's forward, the partner's
  backward), so idle expiry sees both as active.
"""

from __future__ import annotations

from vx6.core.circuit.events import CircuitEvent
from vx6.core.circuit.relay_circuit import CircuitKey, RelayedCircuit, RelayInput, RelayState
from vx6.errors import DestroyReason, UsageError


class RelayJoin:
    """Mixin: the rendezvous join of `RelayCore`. The attributes below are set by
    `RelayCore`."""

    _by_key: dict[CircuitKey, RelayedCircuit]

    def _remove(
        self,
        circuit: RelayedCircuit,
        reason: DestroyReason,
        detail: str,
        *,
        notify_prev: bool = True,
        notify_next: bool = True,
        local: bool = True,
        lost_link: int | None = None,
    ) -> list[CircuitEvent]:
        raise NotImplementedError

    def join(self, key_a: CircuitKey, key_b: CircuitKey) -> list[CircuitEvent]:
        """Join two circuits that end here (each named by its prev (link, circuit id)).
        UsageError, and nothing changes, unless both are distinct, OPEN and end here."""
        if key_a == key_b:
            raise UsageError(f"circuit {key_a} cannot join itself")
        pair = []
        for key in (key_a, key_b):
            circuit = self._by_key.get(key)
            if circuit is None:
                raise UsageError(f"no circuit {key} to join")
            if circuit.state is RelayState.JOINED:
                raise UsageError(f"circuit {key} is already joined")
            if circuit.state is not RelayState.OPEN or circuit.prev != key:
                raise UsageError(f"circuit {key} does not end here ({circuit.state.name})")
            pair.append(circuit)
        a, b = pair
        a.step(RelayInput.JOIN)
        b.step(RelayInput.JOIN)
        a.partner, b.partner = b, a
        return []

    def partner_of(self, link: int, circuit_id: int) -> CircuitKey | None:
        """The prev key of the circuit joined to this one, if it is joined."""
        circuit = self._by_key.get((link, circuit_id))
        if circuit is None or circuit.partner is None:
            return None
        return circuit.partner.prev

    def _remove_partner(
        self, circuit: RelayedCircuit, reason: DestroyReason, detail: str, lost_link: int | None
    ) -> list[CircuitEvent]:
        """`circuit` was just removed: remove its partner too (DESTROY with the same
        reason towards the partner's prev, unless that is the link that was lost)."""
        partner = circuit.partner
        if partner is None:
            return []
        circuit.partner = partner.partner = None
        return self._remove(
            partner,
            reason,
            f"its joined circuit ended: {detail}",
            notify_prev=partner.prev[0] != lost_link,
            lost_link=lost_link,
        )
