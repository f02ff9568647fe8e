"""Helpers for the node-layer role tests (tests/unit/test_role_*.py): signed records put
straight into a real registry, a recording stand-in for the DHT lookup, and an event
loop whose `create_connection` dials the kit's in-memory network.

Theory of operation. Roles read what they know from a real `Registry` (a file in the
test's tmp_path); `put_signed` stores a record as the records hub would after checking
it, with the source the hub would give it ("dht", "peer [::1]:4242", "self"), dated by
the test's clock. `FakeLookup` stands in for `RecordHub.lookup`: it records every target
asked for and, if the test gave records for that target, stores them (as the DHT event
handler would) and answers True. `MemoryLoop` is a standard selector loop in every way
but one: `loop.create_connection(factory, host, port)` connects through a
`MemoryNetwork`, so the real dialler (`vx6.net.link.dial`) reaches in-memory listeners.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kit.network import MemoryNetwork
from vx6.core.records import make_record
from vx6.crypto.keys import Identity
from vx6.store.registry import Registry
from vx6.wire.records import Body

LIFETIME = 86400


def put_signed(
    registry: Registry,
    signer: Identity,
    body: Body,
    seq: int,
    now: float,
    *,
    source: str = "dht",
    lifetime: int = LIFETIME,
) -> bytes:
    """Sign `body` as `signer` (issued at `now`) and store it as checked; its bytes."""
    rec, raw = make_record(signer, body, seq, now, lifetime)
    registry.put_record(
        rec.kind, rec.signer, rec.subject, rec.seq, rec.issued, rec.expires, raw, source, now
    )
    return raw


class FakeLookup:
    """`Lookup` (node/resolver.py) without a DHT: `found[target]` is called to store
    what the DHT would have returned; True if there was anything."""

    def __init__(self) -> None:
        self.targets: list[bytes] = []
        self.found: dict[bytes, Callable[[], None]] = {}

    async def __call__(self, target: bytes) -> bool:
        self.targets.append(target)
        store = self.found.get(target)
        if store is None:
            return False
        store()
        return True


class MemoryLoop(asyncio.SelectorEventLoop):
    """A selector loop whose outgoing connections go through a MemoryNetwork."""

    def __init__(self, network: MemoryNetwork) -> None:
        super().__init__()
        self.network = network
        self.dialled: list[tuple[str, int]] = []

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, **_: Any
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        self.dialled.append((host, port))
        return self.network.connect(protocol_factory, host, port)


def run_on(network: MemoryNetwork, main: Callable[[], Any]) -> Any:
    """Run the coroutine `main()` on a MemoryLoop over `network`."""
    with asyncio.Runner(loop_factory=lambda: MemoryLoop(network)) as runner:
        return runner.run(main())
