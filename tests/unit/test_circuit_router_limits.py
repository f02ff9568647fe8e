"""The node's circuit router (vx6.net.router) under mass destroys and stray cells, driven
in-process with stand-in links: a thousand circuits destroyed at once (their link lost,
or all idle) log a few lines with an exact count, and a link that floods cells for
unknown circuits is closed while the counters say exactly what happened."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pytest

from vx6.core.circuit import RelayCore, RelayLimits
from vx6.crypto.keys import Identity, StaticKey, node_id
from vx6.crypto.onion import ntor_client_start
from vx6.errors import CloseCode, DestroyReason
from vx6.net.ports import SYSTEM_CLOCK
from vx6.net.router import CircuitRouter
from vx6.wire import cells as c

CIRCUITS = 1000


def _seed(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


class SlotCore:
    """What the router needs of a link's core: in-place cell slots, and `initiator`."""

    initiator = False

    def __init__(self, sent: list[bytes]) -> None:
        self._sent = sent
        self._slot = bytearray(c.CELL_SIZE)

    def cell_slot(self) -> memoryview:
        return memoryview(self._slot)

    def cell_written(self) -> None:
        self._sent.append(bytes(self._slot))


class FakeLink:
    def __init__(self, n: int) -> None:
        self.peer_address = ("127.0.0.1", 4000 + n)
        self.peer_identity = bytes([n]) * 32
        self.is_open = True
        self.paused = False
        self.sent: list[bytes] = []
        self.core = SlotCore(self.sent)
        self.closed: tuple[int, str] | None = None

    def send_cells(self, cells: list[Any]) -> None:
        self.sent.extend(bytes(x) for x in cells)

    def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)
        self.is_open = False


@dataclass
class FakeConfig:
    relay: bool = True
    circuit_idle_timeout: float = 300.0


@dataclass
class FakeNode:
    identity: Identity = field(default_factory=lambda: Identity.generate(_seed("id")))
    onion_keys: list[StaticKey] = field(default_factory=lambda: [StaticKey(_seed("onion"))])
    config: FakeConfig = field(default_factory=FakeConfig)
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def spawn(self, coro: Any) -> None:
        coro.close()  # these tests extend nowhere

    def stream_requested(self, carrier: Any, sid: int, service: str, flags: int) -> None:
        pass

    def open_link(self, identity: bytes) -> None:
        return None

    async def link_to(self, identity: bytes, endpoints: Any = (), *, for_peer: bool = False) -> Any:
        raise AssertionError("no dial in these tests")


def _router(**limits: Any) -> tuple[CircuitRouter, FakeNode]:
    node = FakeNode()
    router = CircuitRouter(
        node.identity,
        node.onion_keys,
        RelayLimits(idle_timeout=node.config.circuit_idle_timeout),
        relay=node.config.relay,
        links=node,
        on_stream=node.stream_requested,
        spawn=node.spawn,
        count=node.count,
        clock=SYSTEM_CLOCK,
        random=os.urandom,
    )
    router.core = RelayCore(
        node.identity.public,
        node.onion_keys,
        RelayLimits(
            creation_burst=10 * CIRCUITS,
            max_circuits_per_link=CIRCUITS,
            max_circuits_per_source=CIRCUITS,
            **limits,
        ),
        writers=router._writers,
    )
    return router, node


def _fill(router: CircuitRouter, node: FakeNode, link: FakeLink) -> None:
    ident = node_id(node.identity.public)
    onion = node.onion_keys[0].public
    for i in range(1, CIRCUITS + 1):
        skin = ntor_client_start(ident, onion, _seed("x", i))[1]
        router.cells_received(link, (c.encode_cell(c.Create(2 * i, 1, skin)),))  # type: ignore[arg-type]
    assert len(router.core) == CIRCUITS
    link.sent.clear()


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vx6.circuits"]


def test_mass_destroy_when_a_link_dies_logs_one_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router, node = _router()
    link = FakeLink(1)
    _fill(router, node, link)
    caplog.set_level(logging.INFO, logger="vx6.circuits")
    router.link_closed(link)  # type: ignore[arg-type]
    assert len(router.core) == 0
    assert node.counters["circuits_destroyed"] == CIRCUITS
    lines = _lines(caplog)
    assert len(lines) <= 3, lines
    assert any(f"{CIRCUITS} circuits destroyed" in line for line in lines)


def test_mass_idle_expiry_logs_a_few_lines_and_destroys_every_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router, node = _router(idle_timeout=0.0)
    link = FakeLink(2)
    _fill(router, node, link)
    caplog.set_level(logging.INFO, logger="vx6.circuits")
    router._tick()  # what the router's timer runs
    assert len(router.core) == 0
    assert node.counters["circuits_destroyed"] == CIRCUITS
    destroys = [c.decode_cell(raw) for raw in link.sent]
    assert len(destroys) == CIRCUITS
    assert all(isinstance(d, c.Destroy) and d.reason == DestroyReason.IDLE for d in destroys)
    lines = _lines(caplog)
    assert len(lines) <= 3, lines
    assert any(f"{CIRCUITS} circuits destroyed" in line for line in lines)
    assert router.describe()["expired_idle"] == CIRCUITS


def test_a_link_flooding_cells_for_unknown_circuits_is_closed() -> None:
    router, node = _router(stray_limit=100)
    flooder, honest = FakeLink(3), FakeLink(4)
    body = bytes(c.BODY_SIZE)
    frame = b"".join(c.encode_cell(c.Relay(1000 + i, body)) for i in range(3))
    for _ in range(40):  # 120 cells for circuits that never existed
        if flooder.closed:
            break
        router.cells_received(flooder, (frame,))  # type: ignore[arg-type]
    assert flooder.closed is not None and flooder.closed[0] == CloseCode.PROTOCOL_ERROR
    assert node.counters["links_closed_stray_cells"] == 1
    assert router.describe()["unknown_cells"] == 101  # exact: it stopped at the one over
    router.cells_received(honest, (c.encode_cell(c.Relay(7, body)),))  # type: ignore[arg-type]
    assert honest.closed is None and router.describe()["unknown_cells"] == 102
