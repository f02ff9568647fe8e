"""The hostile suite's attacks on the hidden-service relay roles (docs/hidden.md
section 7; rows 19-21 of docs/security.md, "The hostile suite").

Theory of operation. The attacker speaks the circuit protocol with vx6's own sans-IO
client circuit (`ClientCircuit`), many one-hop circuits to the victim relay over one link
per source (`CircuitLink`: a fresh identity key per link, which on loopback is one
source; `net/router.py` `_source`). Circuits are built at just under the relay's CREATE
rate for one source (20/s after a burst of 40), so what the row measures is the hidden
role's bound, not the circuit layer's. On a built circuit the attacker sends what a
service or client would (ESTABLISH_INTRO signed by a fresh auth key over the circuit's
binding, INTRODUCE1, ESTABLISH_RENDEZVOUS with a fresh cookie) and counts every answer
and every DESTROY by reason. While it still holds its circuits it reads the victim's
`hidden_relay` counters from the victim's control socket (a file on this machine, as
the benchmark's own), so what the victim holds at the peak is measured, not guessed.
Every loop is bounded by a count and the attack's `Budget`; every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _attack_kit import Budget, Peer, Target, close_all, fresh_identity

from vx6.core.circuit.client import ClientCircuit, HopSpec
from vx6.core.circuit.events import CircuitBuilt, CircuitDestroyed, StreamMessageReceived
from vx6.core.circuit.outbox import CellOutbox
from vx6.crypto.keys import Identity
from vx6.net.control import request
from vx6.net.dial import dial
from vx6.net.link import LinkProtocol
from vx6.wire.cells import CELL_SIZE, RelayCommand, decode_cell
from vx6.wire.hidden import (
    INTRO_CIPHERTEXT_SIZE,
    EstablishIntro,
    EstablishRendezvous,
    Introduce1,
    IntroduceStatus,
    decode_introduce_ack,
    encode_establish_intro,
    encode_establish_rendezvous,
    encode_introduce1,
    establish_intro_signed_bytes,
)

CREATE_BURST = 38  # just under the relay's per-source CREATE burst (40)
CREATE_RATE = 18.0  # just under its per-source rate (20/s)
ANSWER_TIMEOUT = 10.0


class CircuitLink(Peer):
    """One link from a fresh key carrying many one-hop circuits to the victim."""

    def __init__(
        self,
        t: Target,
        stats: Counter[str],
        hop: HopSpec | None = None,
        where: tuple[str, int] | None = None,
    ) -> None:
        """Circuits to the victim, or to the relay `hop` listening at `where`."""
        super().__init__(stats)
        self.t = t
        self.hop = hop or HopSpec(t.key, t.onion or b"")
        self.where = where or (t.host, t.port)
        self.outbox = CellOutbox()
        self.circuits: dict[int, ClientCircuit] = {}
        self.built: set[int] = set()
        self.destroyed: dict[int, str] = {}
        self.messages: dict[int, list[tuple[int, bytes]]] = {}
        self.changed = asyncio.Event()
        self.link: LinkProtocol | None = None
        self._next_id = 1

    async def open(self) -> bool:
        identity, link_key = fresh_identity()
        try:
            self.link = await dial(
                self,
                *self.where,
                identity=identity,
                link_key=link_key,
                timeout=5.0,
                expected_identity=self.hop.identity,
            )
        except Exception as exc:  # refused, reset, timed out, closed
            self.stats[f"dial_failed_{type(exc).__name__}"] += 1
            return False
        self.stats["links_up"] += 1
        return True

    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        super().link_closed(link, code, reason, by_peer)
        for cid in self.circuits:
            self.destroyed.setdefault(cid, "LINK_LOST")
        self.changed.set()

    def cells_received(self, link: LinkProtocol, chunks: tuple[bytes | memoryview, ...]) -> None:
        for chunk in chunks:
            for offset in range(0, len(chunk) - CELL_SIZE + 1, CELL_SIZE):
                cell = decode_cell(bytes(chunk[offset : offset + CELL_SIZE]))
                circuit = self.circuits.get(cell.circuit_id)
                if circuit is None:
                    continue
                self._events(circuit.cell_received(cell))
        self.flush()
        self.changed.set()

    def _events(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, CircuitBuilt):
                self.built.add(event.circuit_id)
            elif isinstance(event, StreamMessageReceived):
                self.messages.setdefault(event.circuit_id, []).append(
                    (event.command, bytes(event.data))
                )
            elif isinstance(event, CircuitDestroyed):
                self.destroyed[event.circuit_id] = event.reason.name
                self.stats[f"destroyed_{event.reason.name}"] += 1

    def flush(self) -> None:
        cells = [cell for cells in self.outbox.take().values() for cell in cells]
        if cells and self.link is not None and self.link.is_open:
            self.link.send_cells(cells)

    def start_circuit(self) -> int:
        cid = self._next_id
        self._next_id += 2
        circuit = ClientCircuit(0, cid, [self.hop], [os.urandom(32)], out=self.outbox)
        self.circuits[cid] = circuit
        self._events(circuit.start())
        return cid

    def send(self, cid: int, command: int, data: bytes) -> None:
        circuit = self.circuits[cid]
        if cid in self.destroyed:
            return
        self._events(circuit.send(command, 0, data))

    async def wait(self, done: Any, budget: Budget, timeout: float = ANSWER_TIMEOUT) -> bool:
        """Until `done()` holds, the link is gone, or `timeout` (within the budget)."""
        deadline = time.monotonic() + min(timeout, budget.left() + ANSWER_TIMEOUT)
        while not done():
            if self.link is None or not self.link.is_open:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.changed.wait()
        return True

    async def build(self, count: int, budget: Budget) -> list[int]:
        """`count` circuits, paced under the per-source CREATE rate; the ids built."""
        started: list[int] = []
        tokens, last = float(CREATE_BURST), time.monotonic()
        while len(started) < count and not budget.over:
            now = time.monotonic()
            tokens = min(CREATE_BURST, tokens + (now - last) * CREATE_RATE)
            last = now
            while tokens >= 1 and len(started) < count:
                started.append(self.start_circuit())
                tokens -= 1
            self.flush()
            if len(started) < count:
                await asyncio.sleep((1 - tokens) / CREATE_RATE)

        def settled() -> bool:
            return all(c in self.built or c in self.destroyed for c in started)

        await self.wait(settled, budget)
        self.stats["circuits_started"] += len(started)
        ok = [c for c in started if c in self.built and c not in self.destroyed]
        self.stats["circuits_built"] += len(ok)
        return ok

    def answer(self, cid: int) -> str | None:
        """The first answer on `cid`: a command name, or DESTROY_<reason>."""
        if self.messages.get(cid):
            return RelayCommand(self.messages[cid][0][0]).name
        if cid in self.destroyed:
            return f"DESTROY_{self.destroyed[cid]}"
        return None

    def close(self) -> None:
        if self.link is not None:
            close_all([self.link])


def victim_relay_stats(t: Target) -> dict[str, int] | None:
    """The victim's `hidden_relay` status counters (its control socket), or None."""
    if t.control is None:
        return None
    try:
        reply = request(Path(t.control), {"op": "status"}, 10.0)
    except Exception:  # a stalled or gone victim: the row says so
        return None
    stats = reply.get("hidden_relay") if reply.get("ok", True) else None
    return dict(stats) if isinstance(stats, dict) else None


def establish_intro(binding: bytes, rate: int, burst: int) -> tuple[Identity, bytes]:
    auth = Identity(os.urandom(32))
    signed = establish_intro_signed_bytes(binding, auth.public, rate, burst)
    message = EstablishIntro(auth.public, rate, burst, auth.sign(signed))
    return auth, encode_establish_intro(message)


async def _open_links(t: Target, count: int, stats: Counter[str]) -> list[CircuitLink]:
    links = [CircuitLink(t, stats) for _ in range(count)]
    opened = await asyncio.gather(*(link.open() for link in links))
    return [link for link, ok in zip(links, opened, strict=True) if ok]


async def _held(t: Target) -> dict[str, int] | None:
    return await asyncio.to_thread(victim_relay_stats, t)


# ---------------------------------------------------------------- 19
async def intro_registrations(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`sources` links (fresh keys), each building `per_source` circuits and sending
    ESTABLISH_INTRO with a fresh auth key on every one; held until the victim's counters
    were read, then closed."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    links = await _open_links(t, p["sources"], stats)

    async def one(link: CircuitLink) -> int:
        ids = await link.build(p["per_source"], budget)
        for cid in ids:
            link.send(cid, RelayCommand.ESTABLISH_INTRO, establish_intro(
                link.circuits[cid].exit_binding, 25, 200)[1])  # fmt: skip
        link.flush()
        await link.wait(lambda: all(link.answer(c) for c in ids), budget)
        answers = Counter(link.answer(c) or "unanswered" for c in ids)
        for name, n in answers.items():
            stats[f"answer_{name}"] += n
        return answers["INTRO_ESTABLISHED"]

    per_source = await asyncio.gather(*(one(link) for link in links))
    held = await _held(t)
    for link in links:
        link.close()
    return {
        **stats,
        "registered_per_source_max": max(per_source, default=0),
        "registered_total": sum(per_source),
        "victim_held_at_peak": held,
    }


# ---------------------------------------------------------------- 20
async def rendezvous_cookies(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """`sources` links, each building `per_source` circuits and registering a fresh
    cookie on every one; the victim's holdings read at the peak and, if `hold` > 0,
    again after `hold` seconds with the circuits kept (the cookies' expiry)."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"])
    links = await _open_links(t, p["sources"], stats)

    async def one(link: CircuitLink) -> int:
        ids = await link.build(p["per_source"], budget)
        for cid in ids:
            cookie = os.urandom(32)
            link.send(cid, RelayCommand.ESTABLISH_RENDEZVOUS,
                      encode_establish_rendezvous(EstablishRendezvous(cookie)))  # fmt: skip
        link.flush()
        await link.wait(lambda: all(link.answer(c) for c in ids), budget)
        answers = Counter(link.answer(c) or "unanswered" for c in ids)
        for name, n in answers.items():
            stats[f"answer_{name}"] += n
        return answers["RENDEZVOUS_ESTABLISHED"]

    per_source = await asyncio.gather(*(one(link) for link in links))
    held = await _held(t)
    after_hold = None
    if p.get("hold", 0) > 0:
        await asyncio.sleep(min(p["hold"], budget.left() + p["hold"]))
        after_hold = await _held(t)
        stats["circuits_alive_after_hold"] = sum(
            sum(1 for c in link.built if c not in link.destroyed) for link in links
        )
    for link in links:
        link.close()
    return {
        **stats,
        "registered_per_source_max": max(per_source, default=0),
        "registered_total": sum(per_source),
        "victim_held_at_peak": held,
        "victim_after_hold": after_hold,
    }


# ---------------------------------------------------------------- 21
async def _answered(link: CircuitLink, rounds: int, budget: Budget) -> None:
    """Until every client circuit of `link` has `rounds` answers (or 2 s)."""

    def done() -> bool:
        return all(len(link.messages.get(c, [])) >= rounds for c in link.built)

    await link.wait(done, budget, 2.0)


async def intro_flood(t: Target, p: dict[str, Any]) -> dict[str, Any]:
    """One service circuit registers an intro (its own fresh auth key, `rate`/`burst`);
    `flooders` links each open `circuits` client circuits and send INTRODUCE1 for that
    key as fast as the answers come, `introductions` in all, within `seconds`. The
    service circuit counts the INTRODUCE2s the intro point forwarded."""
    stats: Counter[str] = Counter()
    budget = Budget(p["seconds"] + ANSWER_TIMEOUT)
    (service,) = await _open_links(t, 1, stats)
    (scid,) = await service.build(1, budget)
    auth, data = establish_intro(service.circuits[scid].exit_binding, p["rate"], p["burst"])
    # The intro point's bucket starts (full) when it registers, after this moment.
    registered_at = time.monotonic()
    service.send(scid, RelayCommand.ESTABLISH_INTRO, data)
    service.flush()
    await service.wait(lambda: service.answer(scid) is not None, budget)
    stats[f"service_{service.answer(scid)}"] += 1
    flooders = await _open_links(t, p["flooders"], stats)
    circuits = [(link, cid) for link in flooders for cid in await link.build(p["circuits"], budget)]
    sent = 0
    acks: Counter[str] = Counter()
    flood_start = time.monotonic()
    window = Budget(p["seconds"])
    per_round = max(1, len(circuits))
    while sent < p["introductions"] and not window.over and circuits:
        for link, cid in circuits:
            message = Introduce1(auth.public, os.urandom(32), os.urandom(INTRO_CIPHERTEXT_SIZE))
            link.send(cid, RelayCommand.INTRODUCE1, encode_introduce1(message))
        sent += per_round
        for link in flooders:
            link.flush()
        # Wait for this round's answers (an INTRODUCE_ACK per message) before the next.
        await asyncio.gather(*(_answered(link, sent // per_round, window) for link in flooders))
        # Spread the introductions over the window: the bucket's refill is the point.
        due = flood_start + sent / p["introductions"] * p["seconds"]
        await asyncio.sleep(max(0.0, min(due - time.monotonic(), window.left())))
    flood_seconds = time.monotonic() - registered_at  # an upper bound of the refill time
    await asyncio.sleep(0.5)  # the last INTRODUCE2s on their way to the service circuit
    for link in flooders:
        for cid in link.circuits:
            for command, body in link.messages.get(cid, []):
                if command == RelayCommand.INTRODUCE_ACK:
                    acks[decode_introduce_ack(body).status.name] += 1
    forwarded = sum(
        1 for command, _ in service.messages.get(scid, []) if command == RelayCommand.INTRODUCE2
    )
    held = await _held(t)
    for link in [service, *flooders]:
        link.close()
    return {
        **stats,
        "introductions_sent": sent,
        "acks": dict(acks),
        "acks_sent_on": acks[IntroduceStatus.SENT_ON.name],
        "acks_rate_limited": acks[IntroduceStatus.RATE_LIMITED.name],
        "introduce2_at_service": forwarded,
        "flood_seconds": round(flood_seconds, 2),
        "forward_bound": int(p["rate"] * flood_seconds + p["burst"]),
        "service_destroyed": service.destroyed.get(scid),
        "victim_held_at_end": held,
    }


ATTACKS = {
    "intro-registrations": intro_registrations,
    "rendezvous-cookies": rendezvous_cookies,
    "intro-flood": intro_flood,
}
