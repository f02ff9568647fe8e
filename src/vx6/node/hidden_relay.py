"""The intro-point and rendezvous-point role of a relay (docs/hidden.md section 7).

Theory of operation. Every relay can serve hidden services as an introduction point and
as a rendezvous point. The router hands this role each intro or rendezvous command that
arrives on a circuit ending here (`message`) and tells it of every circuit that ends
(`circuit_closed`). The two sans-IO cores decide (core/hidden/intro_point.py,
core/hidden/rendezvous_point.py: registrations, cookies, rates, bounds); this role only
carries their actions out on the router: answer on a circuit, destroy one, join two.
The rendezvous core's pending cookies expire on a timer armed from its next deadline.

As a directory proxy (docs/hidden.md section 3) it answers DHT_STORE and DHT_FETCH with
the node's own descriptor directory (node/hidden_dht.py), so the DHT's storers see this
relay, not the circuit's builder. core/hidden/dir_proxy.py admits each request (one per
circuit in flight, a rate per source, a node-wide bound); an admitted one runs as a task
under `limits.timeout` and is answered on its circuit if that still exists. A record
that is no acceptable descriptor is answered DHT_STORED 0 without touching the DHT.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Sequence
from typing import Protocol, cast

from vx6.core.hidden.dir_proxy import DirProxyAdmission, DirProxyLimits, Verdict
from vx6.core.hidden.intro_point import IntroLimits, IntroPointCore
from vx6.core.hidden.relay_actions import DestroyCircuit, JoinCircuits, SendOnCircuit
from vx6.core.hidden.rendezvous_point import RendezvousCore, RendezvousLimits
from vx6.errors import DecodeError, DestroyReason
from vx6.net.ports import Clock
from vx6.net.ratelog import RATELOG
from vx6.net.router_hidden import HiddenRelayMessage
from vx6.wire.cells import RelayCommand
from vx6.wire.hidden import (
    MAX_FETCHED_RECORDS,
    DhtFetched,
    DhtStored,
    decode_dht_fetch,
    decode_dht_store,
    encode_dht_fetched,
    encode_dht_stored,
)

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


class ProxiedDirectory(Protocol):
    """What the directory proxy needs of the node's descriptor directory."""

    def acceptable(self, record_raw: bytes) -> bool: ...

    async def publish(self, record_raw: bytes) -> int: ...

    async def fetch_raw(self, blinded_key: bytes) -> list[bytes]: ...


class HiddenRelayRole:
    def __init__(
        self,
        router: CircuitActions,
        clock: Clock,
        *,
        intro_limits: IntroLimits | None = None,
        rendezvous_limits: RendezvousLimits | None = None,
        directory: ProxiedDirectory | None = None,
        proxy_limits: DirProxyLimits | None = None,
    ) -> None:
        self._router = router
        self._clock = clock
        self.intros = IntroPointCore(intro_limits or IntroLimits())
        self.rendezvous = RendezvousCore(rendezvous_limits or RendezvousLimits())
        self._timer: asyncio.TimerHandle | None = None
        self._directory = directory
        self.proxy = DirProxyAdmission(proxy_limits)
        self._proxied: dict[Circuit, asyncio.Task[None]] = {}
        self._closed_while_proxying: set[Circuit] = set()  # answers to drop

    def message(self, message: HiddenRelayMessage) -> None:
        now = self._clock.monotonic()
        circuit, command, data = message.circuit, message.command, message.data
        actions: Sequence[RelayAction]
        if command in (RelayCommand.DHT_STORE, RelayCommand.DHT_FETCH):
            self._proxy(message, now)
            return
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

    # ------------------------------------------------------------------ directory proxy
    def _proxy(self, message: HiddenRelayMessage, now: float) -> None:
        circuit, command = message.circuit, message.command
        store = command == RelayCommand.DHT_STORE
        answer = RelayCommand.DHT_STORED if store else RelayCommand.DHT_FETCHED
        empty = encode_dht_stored(DhtStored(0)) if store else encode_dht_fetched(DhtFetched(()))
        try:
            data = decode_dht_store(message.data).record if store else None
            key = None if store else decode_dht_fetch(message.data).blinded_key
        except DecodeError as exc:
            self._refuse(circuit, f"malformed directory request: {exc}")
            return
        if self._directory is None:
            self._router.send_on(circuit, answer, empty)
            return
        verdict = self.proxy.admit(circuit, message.source, now)
        if verdict is Verdict.BUSY_CIRCUIT:
            self._refuse(circuit, "a second directory request before the answer")
            return
        if verdict is not Verdict.ADMITTED:
            self._router.send_on(circuit, answer, empty)
            return
        if store:
            assert data is not None
            work = self._store(circuit, data)
        else:
            assert key is not None
            work = self._fetch(circuit, key)
        self._proxied[circuit] = asyncio.get_running_loop().create_task(work)

    async def _store(self, circuit: Circuit, record: bytes) -> None:
        assert self._directory is not None
        stored = 0
        try:
            if self._directory.acceptable(record):
                async with asyncio.timeout(self.proxy.limits.timeout):
                    stored = await self._directory.publish(record)
        except TimeoutError:
            self.proxy.counts["dir_proxy_timed_out"] += 1
        finally:
            self._done(circuit)
        self._answer(circuit, RelayCommand.DHT_STORED, encode_dht_stored(DhtStored(stored)))

    async def _fetch(self, circuit: Circuit, blinded_key: bytes) -> None:
        assert self._directory is not None
        records: list[bytes] = []
        try:
            async with asyncio.timeout(self.proxy.limits.timeout):
                records = await self._directory.fetch_raw(blinded_key)
        except TimeoutError:
            self.proxy.counts["dir_proxy_timed_out"] += 1
        finally:
            self._done(circuit)
        fetched = DhtFetched(tuple(records[:MAX_FETCHED_RECORDS]))
        self._answer(circuit, RelayCommand.DHT_FETCHED, encode_dht_fetched(fetched))

    def _done(self, circuit: Circuit) -> None:
        self._proxied.pop(circuit, None)
        self.proxy.finished(circuit)

    def _answer(self, circuit: Circuit, command: int, data: bytes) -> None:
        if circuit in self._closed_while_proxying:
            self._closed_while_proxying.discard(circuit)
            return
        self._router.send_on(circuit, command, data)

    def _refuse(self, circuit: Circuit, detail: str) -> None:
        RATELOG.info(
            log,
            "hidden-relay-refused",
            "hidden relay: destroying circuit %s: %s",
            circuit[1],
            detail,
        )
        self._router.destroy(circuit, DestroyReason.PROTOCOL_ERROR)

    def circuit_closed(self, circuit: Circuit, reason: DestroyReason) -> None:
        self.proxy.circuit_closed(circuit)
        if circuit in self._proxied:
            self._closed_while_proxying.add(circuit)
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
            **self.proxy.counts,
            "intro_registrations_held": len(self.intros),
            "intro_client_circuits_held": self.intros.client_circuits,
            "rendezvous_pending_held": self.rendezvous.pending_count,
            "rendezvous_joined_pairs_held": self.rendezvous.joined_pairs,
        }

    def close(self) -> None:
        for task in self._proxied.values():
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
