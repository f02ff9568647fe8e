"""Onion key rotation (issue 11 point 7): the sans-IO schedule, the key files in the home
under a fake clock, the `onion_key_lifetime` setting, and a relay core carried across two
rotations: a circuit built with the old key keeps carrying cells, a client holding the old
node record still builds during the grace period, and after it a CREATE naming the
dropped key is destroyed with HANDSHAKE_FAILED."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from vx6.core.circuit import (
    CircuitDestroyed,
    CircuitEvent,
    ClientCircuit,
    ClientState,
    HopSpec,
    RelayCore,
    StreamMessageReceived,
)
from vx6.core.circuit.onion_schedule import OnionKeyAction, onion_key_step
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import DestroyReason, UsageError
from vx6.node.onion_rotation import onion_key_loop
from vx6.store.config import load_config
from vx6.store.home import ONION_KEY_LIFETIME, Home, HomeError
from vx6.wire import cells as c
from vx6.wire.cells import RelayCommand

LIFETIME = 100.0
T0 = 1000.0
LINK = 1


def _seed(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


# ---------------------------------------------------------------- schedule
@pytest.mark.parametrize(
    ("age", "action", "due_in"),
    [
        (0.0, OnionKeyAction.KEEP, LIFETIME),
        (LIFETIME - 1, OnionKeyAction.KEEP, 1.0),
        (LIFETIME, OnionKeyAction.ROTATE, LIFETIME),
        (2 * LIFETIME - 1, OnionKeyAction.ROTATE, LIFETIME),
        (2 * LIFETIME, OnionKeyAction.RENEW, LIFETIME),
        (-50.0, OnionKeyAction.KEEP, LIFETIME),  # the clock went back: from now on
    ],
)
def test_schedule_by_the_current_key_age(age: float, action: OnionKeyAction, due_in: float) -> None:
    step = onion_key_step(T0 + age, T0, LIFETIME)
    assert step.action is action
    assert step.due == T0 + age + due_in


def test_schedule_makes_a_key_when_there_is_none() -> None:
    step = onion_key_step(T0, None, LIFETIME)
    assert (step.action, step.due) == (OnionKeyAction.MAKE, T0 + LIFETIME)
    with pytest.raises(ValueError, match="positive"):
        onion_key_step(T0, T0, 0.0)


# ---------------------------------------------------------------- key files
def _onion_keys_on_disk(home: Path) -> set[bytes]:
    """The public halves of every onion key file in the home."""
    return {StaticKey(f.read_bytes()).public for f in home.iterdir() if f.name.startswith("onion")}


def test_home_rotates_keeps_one_previous_and_deletes_the_dropped_key(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    [k0], due = home.onion_key_state(T0, LIFETIME)
    assert due == T0 + LIFETIME
    assert [k.public for k in home.onion_keys(T0 + LIFETIME / 2, LIFETIME)] == [k0.public]
    k1, prev = home.onion_keys(T0 + LIFETIME, LIFETIME)
    assert prev.public == k0.public and k1.public != k0.public
    keys, due = home.onion_key_state(T0 + 2 * LIFETIME, LIFETIME)
    assert [k.public for k in keys[1:]] == [k1.public]  # k0's grace period is over
    assert due == T0 + 3 * LIFETIME
    assert _onion_keys_on_disk(tmp_path / "h") == {keys[0].public, k1.public}
    for name in ("onion.key", "onion.prev.key"):
        assert (tmp_path / "h" / name).stat().st_mode & 0o777 == 0o600


def test_home_down_past_the_grace_period_drops_both_keys(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.onion_keys(T0, LIFETIME)
    k1, k0 = home.onion_keys(T0 + LIFETIME, LIFETIME)
    keys = home.onion_keys(T0 + 4 * LIFETIME, LIFETIME)  # restarted after a long stop
    assert len(keys) == 1 and keys[0].public not in (k0.public, k1.public)
    assert not (tmp_path / "h" / "onion.prev.key").exists()
    assert _onion_keys_on_disk(tmp_path / "h") == {keys[0].public}


def test_onion_key_lifetime_setting(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert load_config(path).onion_key_lifetime == ONION_KEY_LIFETIME == 7 * 86400
    for text, seconds in (("2", 2.0), ("2.5", 2.5), ('"7d"', 7 * 86400.0), ('"12h"', 43200.0)):
        path.write_text(f"onion_key_lifetime = {text}\n")
        assert load_config(path).onion_key_lifetime == seconds
    for bad in ('"soon"', "0", '"400d"', "true", '"d"'):
        path.write_text(f"onion_key_lifetime = {bad}\n")
        with pytest.raises(UsageError, match="onion_key_lifetime"):
            load_config(path)


# ---------------------------------------------------------------- a relay across rotations
class OneHop:
    """A client and a relay core (the circuit's only hop, its exit) wired by calls."""

    def __init__(self, home: Home) -> None:
        self.identity = Identity.generate(_seed("relay")).public
        self.core = RelayCore(self.identity, home.onion_keys(T0, LIFETIME))
        self.exit_events: list[CircuitEvent] = []
        self.next_id = 1

    def build(self, published_onion_key: bytes) -> tuple[ClientCircuit, list[CircuitEvent]]:
        """A client that plans from a node record naming `published_onion_key`."""
        self.next_id += 2
        spec = HopSpec(self.identity, published_onion_key, (c.Endpoint("::1", 7000),))
        client = ClientCircuit(LINK, self.next_id, [spec], [_seed("x", self.next_id)])
        return client, self.pump(client, client.start())

    def pump(self, client: ClientCircuit, events: list[CircuitEvent]) -> list[CircuitEvent]:
        out = list(events)
        while True:
            moved = False
            for raw in client.out.take().get(LINK, []):
                cell = c.decode_cell(bytes(raw))
                ephemeral = _seed("y", cell.circuit_id)
                self.exit_events += self.core.cell_received(
                    LINK, cell, now=T0, source="client", ephemeral=ephemeral
                )
                moved = True
            for raw in self.core.cells_to_send().get(LINK, []):
                cell = c.decode_cell(bytes(raw))
                if cell.circuit_id == client.circuit_id:
                    out += client.cell_received(cell)
                moved = True
            if not moved:
                return out

    def carries(self, client: ClientCircuit, data: bytes) -> bool:
        """`data` goes to the exit, and the exit's reply comes back to the client."""
        self.exit_events.clear()
        self.pump(client, client.send(RelayCommand.DATA, 1, data))
        got = [e for e in self.exit_events if isinstance(e, StreamMessageReceived)]
        if [m.data for m in got] != [data]:
            return False
        reply = self.core.send(got[0].link, got[0].circuit_id, RelayCommand.DATA, 1, data[::-1])
        back = self.pump(client, reply)
        return [e.data for e in back if isinstance(e, StreamMessageReceived)] == [data[::-1]]


def test_circuits_across_two_rotations(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    net = OneHop(home)
    old_record_key = net.core._onion_keys[0].public
    live, _ = net.build(old_record_key)
    assert live.state is ClientState.OPEN
    assert net.carries(live, b"before the rotation")

    net.core.set_onion_keys(home.onion_keys(T0 + LIFETIME, LIFETIME))
    assert net.carries(live, b"after the first rotation")
    late, _ = net.build(old_record_key)  # the client has not seen the new record yet
    assert late.state is ClientState.OPEN  # the grace period
    assert net.carries(late, b"planned from the old record")

    net.core.set_onion_keys(home.onion_keys(T0 + 2 * LIFETIME, LIFETIME))
    assert net.carries(live, b"after the second rotation")
    assert net.carries(late, b"still going")
    refused, events = net.build(old_record_key)
    assert refused.state is ClientState.DESTROYED
    [destroyed] = [e for e in events if isinstance(e, CircuitDestroyed)]
    assert destroyed.reason is DestroyReason.HANDSHAKE_FAILED
    assert len(net.core) == 2  # live and late; nothing held for the refused CREATE
    for key in net.core._onion_keys:
        fresh, _ = net.build(key.public)
        assert fresh.state is ClientState.OPEN


# ---------------------------------------------------------------- the node's timer
class ScriptedHome:
    """A home whose key state follows a script; a HomeError entry is a failed write."""

    def __init__(self, script: list[list[StaticKey] | HomeError]) -> None:
        self.script = script
        self.calls = 0

    def onion_key_state(self, now: float, lifetime: float) -> tuple[list[StaticKey], float]:
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if isinstance(step, HomeError):
            raise step
        return step, now  # due at once: the loop's shortest sleep


def test_timer_reports_each_rotation_once_and_survives_a_home_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    k0, k1, k2 = (StaticKey(_seed("k", i)) for i in range(3))
    home = ScriptedHome([[k0], HomeError("disk full"), [k1, k0], [k1, k0], [k2, k1]])
    seen: list[list[bytes]] = []

    async def run() -> None:
        done = asyncio.Event()

        def rotated(keys: list[StaticKey]) -> None:
            seen.append([k.public for k in keys])
            if len(seen) == 2:
                done.set()

        task = asyncio.create_task(onion_key_loop(home, 0.01, [k0], rotated))
        await asyncio.wait_for(done.wait(), 10.0)
        task.cancel()

    asyncio.run(run())
    assert seen == [[k1.public, k0.public], [k2.public, k1.public]]
    assert "onion key rotation failed, keeping the current keys: disk full" in caplog.text
