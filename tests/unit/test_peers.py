"""The peer keepers (vx6.node.peers) with fake collaborators: a DHT table the test fills
and empties, a clock the test moves, a connect that fails until the test lets it."""

from __future__ import annotations

import asyncio

from vx6.core.backoff import RetrySchedule
from vx6.core.dht.contacts import Address
from vx6.node.peers import BootstrapKeeper, PeerKeeper

NO_JITTER = RetrySchedule(start=1.0, cap=8.0, jitter=0.0)
A: Address = ("127.0.0.1", 4001)
B: Address = ("::1", 4002)


class FakeDht:
    def __init__(self) -> None:
        self.table: list[Address] = []
        self.pinged: list[list[Address]] = []

    def ping(self, addresses: list[Address]) -> None:
        self.pinged.append(list(addresses))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def keeper(dht: FakeDht, clock: Clock, *addresses: Address, enough: int = 3) -> BootstrapKeeper:
    return BootstrapKeeper(
        list(addresses),
        ping=dht.ping,
        contacts=lambda: dht.table,
        now=clock,
        rand=lambda: 0.5,
        schedule=NO_JITTER,
        enough=enough,
    )


def run_until(k: BootstrapKeeper, clock: Clock, until: float) -> None:
    """Step the keeper at each time it asks for, up to `until` (virtual time)."""
    while clock.t <= until:
        clock.t = max(clock.t, k.step())


def test_an_unanswered_bootstrap_is_pinged_again_with_growing_gaps() -> None:
    dht, clock = FakeDht(), Clock()
    k = keeper(dht, clock, A)
    times = []
    start = clock.t
    while clock.t < start + 40:
        before = len(dht.pinged)
        wake = k.step()
        if len(dht.pinged) > before:
            times.append(clock.t - start)
        clock.t = wake
    assert times[:6] == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0]  # 1, 2, 4, 8, then the cap 8
    (row,) = k.describe()
    assert row["state"] == "retrying" and row["last_error"] == "no answer"
    assert row["attempts"] == len(times) and row["next_retry_s"] is not None


def test_an_answer_resets_and_stops_the_pings_for_that_address() -> None:
    dht, clock = FakeDht(), Clock()
    k = keeper(dht, clock, A, B)
    run_until(k, clock, clock.t + 10)
    dht.table = [("::ffff:127.0.0.1", 4001)]  # the same address, as a dual-stack socket sees it
    pings = len(dht.pinged)
    run_until(k, clock, clock.t + 30)
    assert all(A not in batch for batch in dht.pinged[pings:])  # B is still tried
    assert any(B in batch for batch in dht.pinged[pings:])
    rows = {r["address"]: r for r in k.describe()}
    assert rows["127.0.0.1:4001"]["state"] == "answered"
    assert rows["127.0.0.1:4001"]["attempts"] == 0
    assert rows["[::1]:4002"]["state"] == "retrying"


def test_a_full_table_stops_every_ping_and_an_empty_one_bootstraps_again() -> None:
    dht, clock = FakeDht(), Clock()
    k = keeper(dht, clock, A, enough=2)
    run_until(k, clock, clock.t + 20)
    dht.table = [("127.0.0.9", 1), ("127.0.0.8", 1)]  # learnt from others: enough
    run_until(k, clock, clock.t + 2)
    pings = len(dht.pinged)
    run_until(k, clock, clock.t + 120)
    assert len(dht.pinged) == pings
    assert k.describe()[0]["state"] == "idle"
    dht.table = []  # every contact went away: start again, from a reset schedule
    restart = clock.t
    run_until(k, clock, restart + 5)
    assert len(dht.pinged) > pings
    assert k.describe()[0]["attempts"] <= 3  # about 1 s apart again, not the cap's 8 s


def test_an_answered_address_that_leaves_the_table_is_pinged_again() -> None:
    dht, clock = FakeDht(), Clock()
    k = keeper(dht, clock, A)
    run_until(k, clock, clock.t + 1)
    dht.table = [A]
    run_until(k, clock, clock.t + 30)
    pings = len(dht.pinged)
    dht.table = []
    run_until(k, clock, clock.t + 6)  # one watch interval at most
    assert len(dht.pinged) > pings and [A] in dht.pinged[pings:]


def test_a_host_name_is_reported_unusable_not_pinged() -> None:
    dht, clock = FakeDht(), Clock()
    k = keeper(dht, clock, ("example.invalid", 1), A)
    run_until(k, clock, clock.t + 5)
    assert all(("example.invalid", 1) not in batch for batch in dht.pinged)
    assert k.describe()[0]["state"] == "unusable"


def test_peer_keeper_redials_until_the_peer_answers_and_after_it_drops() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        failures_left = 3
        links: list[asyncio.Future[None]] = []
        connected = asyncio.Event()

        async def connect(host: str, port: int) -> asyncio.Future[None]:
            nonlocal failures_left
            if failures_left:
                failures_left -= 1
                raise ConnectionRefusedError(f"connect to {host}:{port} refused")
            links.append(loop.create_future())
            connected.set()
            return links[-1]

        peer = PeerKeeper(
            "127.0.0.1",
            4001,
            connect=connect,
            now=loop.time,
            rand=lambda: 0.5,
            schedule=RetrySchedule(start=0.01, cap=0.05, jitter=0.0),
            stable_after=0.02,
        )
        task = asyncio.create_task(peer.run())
        try:
            async with asyncio.timeout(10):
                await connected.wait()
            row = peer.describe()
            assert row["state"] == "connected" and row["next_retry_s"] is None
            assert failures_left == 0
            async with asyncio.timeout(10):  # it holds: the backoff resets
                while peer.backoff.attempts:
                    await asyncio.sleep(0.01)  # polling a bounded condition
            connected.clear()
            links[-1].set_result(None)  # the link drops: redialled
            async with asyncio.timeout(10):
                await connected.wait()
            assert len(links) == 2
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_peer_keeper_reports_the_error_and_next_retry() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        tried = asyncio.Event()

        async def connect(host: str, port: int) -> asyncio.Future[None]:
            tried.set()
            raise TimeoutError()

        peer = PeerKeeper("::1", 4002, connect=connect, now=loop.time, rand=lambda: 0.0)
        task = asyncio.create_task(peer.run())
        try:
            async with asyncio.timeout(10):
                await tried.wait()
                while peer.state != "retrying":
                    await asyncio.sleep(0)
            row = peer.describe()
            assert row["address"] == "[::1]:4002" and row["attempts"] == 1
            assert row["last_error"] == "TimeoutError"
            assert 0 <= row["next_retry_s"] <= 1.0
        finally:
            task.cancel()

    asyncio.run(scenario())
