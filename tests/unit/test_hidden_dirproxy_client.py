"""node/hidden_dir_circuit.py: the service's and client's side of a directory proxy
(docs/hidden.md section 3): reuse, one retry on a fresh circuit, checked answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from vx6.core.routes import RelayCandidate
from vx6.node.hidden_dir_circuit import CircuitDirectory
from vx6.wire.cells import Endpoint, RelayCommand
from vx6.wire.hidden import (
    DhtFetched,
    DhtStored,
    decode_dht_fetch,
    encode_dht_fetched,
    encode_dht_stored,
)
from vx6.wire.records import Record

KEY = bytes(range(32))
RECORD = b"\x04" + bytes(1023)


class FakeClock:
    def monotonic(self) -> float:
        return 0.0

    def wall(self) -> float:
        return 0.0


class FakePath:
    def __init__(self, answer: Callable[[int, bytes], tuple[int, bytes] | None]) -> None:
        self.answer = answer
        self.is_open = True
        self.sent: list[tuple[int, bytes]] = []
        self.on_control: Callable[[int, bytes], None] | None = None
        self.on_closed: Callable[[str], None] | None = None

    def send_control(self, command: int, data: bytes) -> None:
        self.sent.append((command, data))
        reply = self.answer(command, data)
        if reply is not None and self.on_control is not None:
            asyncio.get_running_loop().call_soon(self.on_control, *reply)

    def close(self, *_: object) -> None:
        self.is_open = False


class FakeBuilder:
    def __init__(self, answers: list[Callable[[int, bytes], tuple[int, bytes] | None]]) -> None:
        self.answers = answers
        self.built: list[tuple[Any, Any, bool]] = []
        self.paths: list[FakePath] = []

    async def build(self, owner: Any, relays: Any, **kw: Any) -> FakePath:
        self.built.append((owner, relays, kw["authenticate"]))
        path = FakePath(self.answers[min(len(self.paths), len(self.answers) - 1)])
        path.on_control = kw["on_control"]
        self.paths.append(path)
        return path


class Checker:
    def check(self, raw: bytes, blinded_key: bytes) -> Record | None:
        assert blinded_key == KEY
        return Record(4, KEY, 1, 0, 1, b"", b"") if raw == RECORD else None  # type: ignore[arg-type]


def candidate(i: int) -> RelayCandidate:
    return RelayCandidate(bytes([i]) * 32, bytes(32), (Endpoint("::1", 1000 + i),), None)


def directory(builder: FakeBuilder, counts: dict[str, int]) -> CircuitDirectory:
    def count(what: str, n: int = 1) -> None:
        counts[what] = counts.get(what, 0) + n

    path = [candidate(1), candidate(2), candidate(3)]
    return CircuitDirectory(
        builder,  # type: ignore[arg-type]
        lambda: path,
        Checker(),
        clock=FakeClock(),
        count=count,
        timeout=0.05,
    )


def stored(n: int) -> Callable[[int, bytes], tuple[int, bytes]]:
    return lambda command, data: (RelayCommand.DHT_STORED, encode_dht_stored(DhtStored(n)))


def test_publish_is_a_dht_store_on_a_circuit_without_auth_reused_for_the_fetch() -> None:
    def answer(command: int, data: bytes) -> tuple[int, bytes]:
        if command == RelayCommand.DHT_STORE:
            return RelayCommand.DHT_STORED, encode_dht_stored(DhtStored(9))
        assert decode_dht_fetch(data).blinded_key == KEY
        fetched = DhtFetched((RECORD, b"\x04junk"))
        return RelayCommand.DHT_FETCHED, encode_dht_fetched(fetched)

    async def run() -> None:
        builder, counts = FakeBuilder([answer]), {}
        proxy = directory(builder, counts)
        assert await proxy.publish(RECORD) == 9
        found = await proxy.fetch(KEY)
        assert [r.signer for r in found] == [KEY]  # the junk record was checked out
        assert len(builder.built) == 1 and builder.built[0][2] is False  # reused, no AUTH
        assert builder.built[0][0].identity == candidate(3).identity  # the proxy is last
        assert [c for c, _ in builder.paths[0].sent] == [
            RelayCommand.DHT_STORE,
            RelayCommand.DHT_FETCH,
        ]

    asyncio.run(run())


def test_stored_zero_is_retried_once_on_a_fresh_circuit() -> None:
    async def run() -> None:
        builder, counts = FakeBuilder([stored(0), stored(5)]), {}
        assert await directory(builder, counts).publish(RECORD) == 5
        assert len(builder.built) == 2 and not builder.paths[0].is_open

    asyncio.run(run())


def test_no_answer_twice_gives_up() -> None:
    async def run() -> None:
        builder, counts = FakeBuilder([lambda command, data: None]), {}
        proxy = directory(builder, counts)
        assert await proxy.fetch(KEY) == []
        assert len(builder.built) == 2
        assert counts["hidden_dir_proxy_timed_out"] == 2
        assert counts["hidden_descriptor_fetches_failed"] == 1

    asyncio.run(run())
