"""A fake clock for tests: time moves only when the test says so.

Theory of operation. `FakeClock` has the two methods of the node layer's `Clock`
protocol: `monotonic()` (every timer, rate and age) and `wall()` (seconds since the
epoch, for what is signed or stored with a date: a fixed epoch plus the time advanced).
`advance(dt)` moves both forward together; `step_wall(dt)` sets the wall clock
forward or back alone, as NTP or a user does (monotonic time does not move).
`sleep(dt)` is the asyncio side: it returns a future at once (the deadline is
registered on the call, not when the caller first runs), which `advance` resolves once
it passes the deadline, earliest deadline first; the sleeper then resumes on the event
loop's next turns. Nothing here reads the real
clock, so a test that advances an hour takes no time and asserts no durations.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

EPOCH = 1_700_000_000.0  # wall() at monotonic() == start: 2023-11-14, any fixed day works


class FakeClock:
    def __init__(self, start: float = 1000.0, epoch: float = EPOCH) -> None:
        self._start = start
        self._now = start
        self._epoch = epoch
        # (deadline, tie-break, future): a heap, so advance wakes sleepers in order
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._epoch + (self._now - self._start)

    def advance(self, dt: float) -> None:
        """Move time forward by `dt` seconds and wake every sleeper whose deadline it
        reaches (a cancelled sleeper is skipped)."""
        if dt < 0:
            raise ValueError("a monotonic clock does not go back")
        self._now += dt
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    def step_wall(self, dt: float) -> None:
        """Set the wall clock `dt` seconds forward (or back, if negative) without moving
        monotonic time, as a clock correction does; sleepers are not woken."""
        self._epoch += dt

    def sleep(self, dt: float) -> asyncio.Future[None]:
        """An awaitable that completes once `advance` has moved time `dt` seconds past
        now (at once for dt <= 0). Must be called with an event loop running."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if dt <= 0:
            future.set_result(None)
        else:
            heapq.heappush(self._sleepers, (self._now + dt, next(self._order), future))
        return future
