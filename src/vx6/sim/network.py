"""A simulated network on a virtual clock: datagrams between sans-IO DHT nodes.

Theory of operation: one heap of timed actions (deliver a datagram, fire a node's
timer, run a scenario callback), popped in time order. After any node is touched its
outgoing datagrams are scheduled for delivery after a random one-way latency, its
events go to the scenario's sink, and its next timer is scheduled if it is earlier than
the one already pending (stale timer entries are skipped when popped). A datagram to an
address nobody holds, or to a node that has gone, is lost, exactly as UDP would lose it.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Protocol, cast

from vx6.core.dht import Address
from vx6.core.dht.events import Event

_DELIVER = 0
_TIMER = 1
_CALL = 2


class SimNode(Protocol):
    def datagram_received(self, data: bytes, source: Address, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_timer(self) -> float: ...
    def datagrams_to_send(self) -> list[tuple[Address, bytes]]: ...
    def events(self) -> list[Event]: ...


EventSink = Callable[[int, Event], None]


class SimNetwork:
    def __init__(
        self, rng: random.Random, start: float, latency: tuple[float, float] = (0.01, 0.1)
    ) -> None:
        self.now = start
        self.rng = rng
        self.latency = latency
        self.nodes: list[SimNode] = []
        self.addresses: list[Address] = []
        self.alive: list[bool] = []
        self._by_address: dict[Address, int] = {}
        self._timer_at: list[float] = []
        self._heap: list[tuple[float, int, int, int, object]] = []
        self._seq = 0
        self.sink: EventSink = lambda index, event: None
        self.datagrams = 0
        self.bytes = 0
        self.largest = 0

    def add(self, node: SimNode, address: Address) -> int:
        index = len(self.nodes)
        self.nodes.append(node)
        self.addresses.append(address)
        self.alive.append(True)
        self._by_address[address] = index
        self._timer_at.append(float("inf"))
        self._schedule_timer(index)
        return index

    def kill(self, index: int) -> None:
        self.alive[index] = False

    def _push(self, at: float, kind: int, index: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, index, payload))

    def call_at(self, at: float, action: Callable[[], None]) -> None:
        self._push(at, _CALL, -1, action)

    def touch(self, index: int, action: Callable[[SimNode, float], object]) -> None:
        """Run `action(node, now)` on a live node and flush what it produced."""
        if self.alive[index]:
            action(self.nodes[index], self.now)
            self._flush(index)

    def _flush(self, index: int) -> None:
        node = self.nodes[index]
        source = self.addresses[index]
        low, high = self.latency
        for address, data in node.datagrams_to_send():
            self.datagrams += 1
            self.bytes += len(data)
            self.largest = max(self.largest, len(data))
            target = self._by_address.get(address)
            if target is not None:
                delay = low + (high - low) * self.rng.random()
                self._push(self.now + delay, _DELIVER, target, (data, source))
        for event in node.events():
            self.sink(index, event)
        self._schedule_timer(index)

    def _schedule_timer(self, index: int) -> None:
        at = self.nodes[index].next_timer()
        if at < self._timer_at[index]:
            self._timer_at[index] = at
            self._push(at, _TIMER, index, None)

    def run(self, until: float | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Process actions in time order until the heap is empty, the clock passes
        `until`, or `stop()` is true."""
        heap = self._heap
        while heap:
            if until is not None and heap[0][0] > until:
                self.now = until
                return
            if stop is not None and stop():
                return
            at, _, kind, index, payload = heapq.heappop(heap)
            self.now = at
            if kind == _CALL:
                assert callable(payload)
                payload()
                continue
            if not self.alive[index]:
                continue
            node = self.nodes[index]
            if kind == _DELIVER:
                data, source = cast(tuple[bytes, Address], payload)
                node.datagram_received(data, source, at)
            else:
                if at != self._timer_at[index]:
                    continue
                self._timer_at[index] = float("inf")
                node.handle_timer(at)
            self._flush(index)
