"""The intro-point and rendezvous-point role of a relay (docs/hidden.md section 7).

Theory of operation. Every relay can serve hidden services as an introduction point and
as a rendezvous point. The router hands this role each intro or rendezvous command that
arrives on a circuit ending here (`message`) and tells it of every circuit that ends
(`circuit_closed`). The two sans-IO cores decide (core/hidden/intro_point.py,
core/hidden/rendezvous_point.py: registrations, cookies, rates, bounds); this role only
carries their actions out on the router: answer on a circuit, destroy one, join two.
The rendezvous core's pending cookies expire on a timer armed from its next deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Sequence
from typing import Protocol, cast

from vx6.core.hidden.intro_point import IntroLimits, IntroPointCore
from vx6.core.hidden.relay_actions import DestroyCircuit, JoinCircuits, SendOnCircuit
from vx6.core.hidden.rendezvous_point import RendezvousCore, RendezvousLimits
from vx6.errors import DestroyReason
from vx6.net.ports import Clock
from vx6.net.ratelog import RATELOG
from vx6.net.router_hidden import HiddenRelayMessage
from vx6.wire.cells import RelayCommand

log = logging.getLogger("vx6.hidden")

Circuit = tuple[int, int]
RelayAction = SendOnCircuit | DestroyCircuit | JoinCircuits


def _key(circuit: Hashable) -> Circuit:
    """The cores hold circuits as opaque keys; this role hands them (link, id) pairs."""
    assert isinstance(circuit, tuple)
    return cast(Circuit, circuit)


class CircuitActions(Protocol):
    """What this role asks of the router."""

    def send_on(self, circuit: Circuit, command: int, data: bytes) -> None: ...

    def destroy(self, circuit: Circuit, reason: DestroyReason) -> None: ...

    def join(self, client: Circuit, service: Circuit) -> None: ...


class HiddenRelayRole:
    def __init__(
        self,
        router: CircuitActions,
        clock: Clock,
        *,
        intro_limits: IntroLimits | None = None,
        rendezvous_limits: RendezvousLimits | None = None,
    ) -> None:
        self._router = router
        self._clock = clock
        self.intros = IntroPointCore(intro_limits or IntroLimits())
        self.rendezvous = RendezvousCore(rendezvous_limits or RendezvousLimits())
        self._timer: asyncio.TimerHandle | None = None

    def message(self, message: HiddenRelayMessage) -> None:
        now = self._clock.monotonic()
        circuit, command, data = message.circuit, message.command, message.data
        actions: Sequence[RelayAction]
        if command == RelayCommand.ESTABLISH_INTRO:
            actions = self.intros.establish(circuit, message.source, message.binding, data, now)
        elif command == RelayCommand.INTRODUCE1:
            actions = self.intros.introduce(circuit, data, now)
        elif command == RelayCommand.ESTABLISH_RENDEZVOUS:
            actions = self.rendezvous.establish(circuit, message.source, data, now)
        else:
            actions = self.rendezvous.rendezvous1(circuit, data, now)
        self._carry_out(actions)
        self._arm()

    def circuit_closed(self, circuit: Circuit, reason: DestroyReason) -> None:
        actions: list[RelayAction] = [*self.intros.circuit_closed(circuit)]
        actions += self.rendezvous.circuit_closed(circuit, reason)
        self._carry_out(actions)

    def _carry_out(self, actions: Sequence[RelayAction]) -> None:
        for action in actions:
            if isinstance(action, SendOnCircuit):
                self._router.send_on(_key(action.circuit), action.command, action.data)
            elif isinstance(action, DestroyCircuit):
                RATELOG.info(
                    log,
                    "hidden-relay-refused",
                    "hidden relay: destroying circuit %s: %s",
                    _key(action.circuit)[1],
                    action.detail,
                )
                self._router.destroy(_key(action.circuit), action.reason)
            elif isinstance(action, JoinCircuits):
                self._router.join(_key(action.client_circuit), _key(action.service_circuit))

    def _arm(self) -> None:
        deadline = self.rendezvous.next_deadline()
        if deadline is None or self._timer is not None:
            return
        delay = max(0.0, deadline - self._clock.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._carry_out(self.rendezvous.timer(self._clock.monotonic()))
        self._arm()

    def stats(self) -> dict[str, int]:
        """Every counter of both cores, and what they hold now (for `vx6 status`)."""
        return {
            **self.intros.counts,
            **self.rendezvous.counts,
            "intro_registrations_held": len(self.intros),
            "intro_client_circuits_held": self.intros.client_circuits,
            "rendezvous_pending_held": self.rendezvous.pending_count,
            "rendezvous_joined_pairs_held": self.rendezvous.joined_pairs,
        }

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
