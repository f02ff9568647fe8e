"""node/hidden_relay.py as a directory proxy (docs/hidden.md section 3): what it answers,
what it refuses, and that a closed circuit gets no answer."""

from __future__ import annotations

import asyncio

from vx6.core.hidden.dir_proxy import DirProxyLimits
from vx6.errors import DestroyReason
from vx6.net.router_hidden import HiddenRelayMessage
from vx6.node.hidden_relay import HiddenRelayRole
from vx6.wire.cells import RelayCommand
from vx6.wire.hidden import decode_dht_fetched, decode_dht_stored

CIRCUIT = (1, 7)
RECORD = b"\x04" + bytes(1023)
KEY = bytes(range(32))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1e9


class FakeRouter:
    def __init__(self) -> None:
        self.sent: list[tuple[tuple[int, int], int, bytes]] = []
        self.destroyed: list[tuple[tuple[int, int], DestroyReason]] = []

    def send_on(self, circuit: tuple[int, int], command: int, data: bytes) -> None:
        self.sent.append((circuit, command, data))

    def destroy(self, circuit: tuple[int, int], reason: DestroyReason) -> None:
        self.destroyed.append((circuit, reason))

    def join(self, client: tuple[int, int], service: tuple[int, int]) -> None:
        raise AssertionError("no joins here")


class FakeDirectory:
    def __init__(self, *, ok: bool = True, records: int = 1, hang: bool = False) -> None:
        self.ok = ok
        self.records = records
        self.hang = hang
        self.stored: list[bytes] = []
        self.fetched: list[bytes] = []
        self.release = asyncio.Event()

    def acceptable(self, record_raw: bytes) -> bool:
        return self.ok

    async def publish(self, record_raw: bytes) -> int:
        self.stored.append(record_raw)
        if self.hang:
            await self.release.wait()
        return 14

    async def fetch_raw(self, blinded_key: bytes) -> list[bytes]:
        self.fetched.append(blinded_key)
        if self.hang:
            await self.release.wait()
        return [RECORD] * self.records


def message(command: int, data: bytes, circuit: tuple[int, int] = CIRCUIT) -> HiddenRelayMessage:
    return HiddenRelayMessage(circuit, command, data, bytes(32), "source")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def role(directory: FakeDirectory, **limits: float) -> tuple[HiddenRelayRole, FakeRouter]:
    router = FakeRouter()
    proxy = DirProxyLimits(**limits)  # type: ignore[arg-type]
    return HiddenRelayRole(router, FakeClock(), directory=directory, proxy_limits=proxy), router


def test_a_store_is_run_by_this_node_and_answered_with_the_storer_count() -> None:
    async def run() -> None:
        directory = FakeDirectory()
        relay, router = role(directory)
        relay.message(message(RelayCommand.DHT_STORE, RECORD))
        await settle()
        assert directory.stored == [RECORD]
        [(circuit, command, data)] = router.sent
        assert (circuit, command) == (CIRCUIT, RelayCommand.DHT_STORED)
        assert decode_dht_stored(data).stored == 14

    asyncio.run(run())


def test_a_record_that_is_no_descriptor_is_answered_zero_without_the_dht() -> None:
    async def run() -> None:
        directory = FakeDirectory(ok=False)
        relay, router = role(directory)
        relay.message(message(RelayCommand.DHT_STORE, RECORD))
        await settle()
        assert directory.stored == []
        assert decode_dht_stored(router.sent[0][2]).stored == 0

    asyncio.run(run())


def test_a_fetch_answers_at_most_eight_records() -> None:
    async def run() -> None:
        directory = FakeDirectory(records=11)
        relay, router = role(directory)
        relay.message(message(RelayCommand.DHT_FETCH, KEY))
        await settle()
        assert directory.fetched == [KEY]
        [(_, command, data)] = router.sent
        assert command == RelayCommand.DHT_FETCHED
        assert decode_dht_fetched(data).records == (RECORD,) * 8

    asyncio.run(run())


def test_a_second_request_before_the_answer_destroys_the_circuit() -> None:
    async def run() -> None:
        directory = FakeDirectory(hang=True)
        relay, router = role(directory)
        relay.message(message(RelayCommand.DHT_FETCH, KEY))
        relay.message(message(RelayCommand.DHT_FETCH, KEY))
        assert router.destroyed == [(CIRCUIT, DestroyReason.PROTOCOL_ERROR)]
        relay.close()

    asyncio.run(run())


def test_a_malformed_request_destroys_the_circuit() -> None:
    async def run() -> None:
        relay, router = role(FakeDirectory())
        relay.message(message(RelayCommand.DHT_FETCH, bytes(31)))
        assert router.destroyed == [(CIRCUIT, DestroyReason.PROTOCOL_ERROR)]
        assert router.sent == []

    asyncio.run(run())


def test_over_the_node_wide_bound_the_answer_is_empty_at_once() -> None:
    async def run() -> None:
        directory = FakeDirectory(hang=True)
        relay, router = role(directory, max_concurrent=2)
        for cid in (1, 2, 3):
            relay.message(message(RelayCommand.DHT_FETCH, KEY, (1, cid)))
        await settle()
        assert directory.fetched == [KEY, KEY]
        [(circuit, command, data)] = router.sent
        assert circuit == (1, 3) and command == RelayCommand.DHT_FETCHED
        assert decode_dht_fetched(data).records == ()
        assert relay.stats()["dir_proxy_overloaded"] == 1
        relay.close()

    asyncio.run(run())


def test_a_proxied_operation_times_out_with_an_empty_answer() -> None:
    async def run() -> None:
        directory = FakeDirectory(hang=True)
        relay, router = role(directory, timeout=0.0)
        relay.message(message(RelayCommand.DHT_STORE, RECORD))
        await settle()
        assert decode_dht_stored(router.sent[0][2]).stored == 0
        assert relay.stats()["dir_proxy_timed_out"] == 1

    asyncio.run(run())


def test_a_circuit_closed_while_proxying_gets_no_answer() -> None:
    async def run() -> None:
        directory = FakeDirectory(hang=True)
        relay, router = role(directory)
        relay.message(message(RelayCommand.DHT_FETCH, KEY))
        await settle()
        relay.circuit_closed(CIRCUIT, DestroyReason.NONE)
        directory.release.set()
        await settle()
        assert router.sent == []
        assert relay.proxy.running == 0

    asyncio.run(run())
