"""Descriptors published and fetched through a directory proxy (docs/hidden.md section 3).

Theory of operation. A service that stored its descriptor with its own DHT node would
show every storer (and a Sybil placed near the descriptor key, which anyone with the
alias can compute) its own address next to the blinded key; a client fetching with its
own DHT node would tell the storers which key its address asks for. `CircuitDirectory`
does neither: it builds a circuit (without AUTH) whose last relay is the directory
proxy, sends DHT_STORE or DHT_FETCH on stream 0 and waits for DHT_STORED / DHT_FETCHED;
the proxy runs the DHT operation with its own node (node/hidden_relay.py).

* `path()` plans each circuit: the service hands a guard-first path (guard, middle,
  proxy: core/hidden/service.py `directory_path`), the client any 3 relays but itself.
* The circuit is kept for `reuse` seconds (a service publishes then fetches back; a
  client may fetch several aliases) and carries one request at a time (a lock): the
  proxy destroys a circuit that sends a second one before the first is answered.
* An answer not there within `timeout`, a circuit that fails or ends, or DHT_STORED 0
  (the proxy may be overloaded or rate limiting) costs that circuit: the request is
  tried once more on a fresh one. DHT_FETCHED with no record is the answer.
* Fetched records are checked here like any DHT answer (`DescriptorChecker`): the proxy
  is one relay, and relays are not trusted with what they hand back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from vx6.core.routes import RelayCandidate
from vx6.errors import DecodeError, StreamError, StreamFailed, VX6Error
from vx6.net.circuit import ClientPath
from vx6.net.ports import Clock, Count
from vx6.node.hidden_ports import Builder, hop
from vx6.wire.cells import RelayCommand
from vx6.wire.hidden import (
    DhtFetch,
    DhtStore,
    decode_dht_fetched,
    decode_dht_stored,
    encode_dht_fetch,
    encode_dht_store,
)
from vx6.wire.records import SIGNER_LEN, Record

log = logging.getLogger("vx6.hidden")

REUSE_SECONDS = 180.0
# The proxy gives up on its DHT operation after 10 s (core/hidden/dir_proxy.py): wait a
# little longer for its answer, building the circuit not included.
ANSWER_TIMEOUT = 15.0
BUILD_TIMEOUT = 30.0
ATTEMPTS = 2

PathSource = Callable[[], Sequence[RelayCandidate] | None]


class DescriptorChecker(Protocol):
    def check(self, raw: bytes, blinded_key: bytes) -> Record | None: ...


class CircuitDirectory:
    def __init__(
        self,
        builder: Builder,
        path: PathSource,
        checker: DescriptorChecker,
        *,
        clock: Clock,
        count: Count,
        reuse: float = REUSE_SECONDS,
        timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        self._builder = builder
        self._path = path
        self._checker = checker
        self._clock = clock
        self._count = count
        self._reuse = reuse
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._circuit: ClientPath | None = None
        self._opened_at = 0.0
        self._answer: asyncio.Future[tuple[int, bytes] | None] | None = None

    async def publish(self, record_raw: bytes) -> int:
        """Store a signed descriptor through a proxy; how many storers accepted it."""
        data = encode_dht_store(DhtStore(record_raw))
        for _ in range(ATTEMPTS):
            answer = await self._ask(RelayCommand.DHT_STORE, data, RelayCommand.DHT_STORED)
            if answer is None:
                continue
            try:
                stored = decode_dht_stored(answer).stored
            except DecodeError:
                self._drop("hidden_dir_proxy_malformed")
                continue
            if stored:
                self._count("hidden_descriptors_published")
                return stored
            self._drop("hidden_dir_proxy_stored_nowhere")
        self._count("hidden_descriptors_stored_nowhere")
        return 0

    async def fetch(self, blinded_key: bytes) -> list[Record]:
        """The valid descriptors signed by `blinded_key`, newest first; [] if none."""
        if len(blinded_key) != SIGNER_LEN:
            raise ValueError("a blinded key is a 32-byte Ed25519 public key")
        data = encode_dht_fetch(DhtFetch(blinded_key))
        for _ in range(ATTEMPTS):
            answer = await self._ask(RelayCommand.DHT_FETCH, data, RelayCommand.DHT_FETCHED)
            if answer is None:
                continue
            try:
                raws = decode_dht_fetched(answer).records
            except DecodeError:
                self._drop("hidden_dir_proxy_malformed")
                continue
            found = {raw: r for raw in raws if (r := self._checker.check(raw, blinded_key))}
            self._count("hidden_descriptor_fetches")
            if not found:
                self._count("hidden_descriptor_fetches_empty")
            return sorted(found.values(), key=lambda r: r.seq, reverse=True)
        self._count("hidden_descriptor_fetches_failed")
        return []

    async def _ask(self, command: int, data: bytes, answer: int) -> bytes | None:
        """One request on the current (or a fresh) circuit: the answer's data, or None
        if it failed (the circuit is then dropped)."""
        async with self._lock:
            try:
                circuit = await self._open()
            except (VX6Error, TimeoutError) as exc:  # StreamFailed, a lost link, ...
                self._count("hidden_dir_proxy_build_failed")
                log.debug("directory proxy circuit failed: %s", exc)
                return None
            waiting = self._answer = asyncio.get_running_loop().create_future()
            circuit.send_control(command, data)
            got: tuple[int, bytes] | None
            try:
                async with asyncio.timeout(self._timeout):
                    got = await waiting
            except TimeoutError:
                got = None
                self._count("hidden_dir_proxy_timed_out")
            finally:
                self._answer = None
            if got is None or got[0] != answer:
                self._drop("hidden_dir_proxy_failed")
                return None
            self._count("hidden_dir_proxy_answers")
            return got[1]

    async def _open(self) -> ClientPath:
        now = self._clock.monotonic()
        current = self._circuit
        if current is not None and current.is_open and now - self._opened_at < self._reuse:
            return current
        self._close()
        path = self._path()
        if not path:
            raise StreamFailed(StreamError.NO_ROUTE, "no relays for a directory proxy path")
        async with asyncio.timeout(BUILD_TIMEOUT):
            circuit = await self._builder.build(
                hop(path[-1]),
                [hop(r) for r in path[:-1]],
                authenticate=False,  # the proxy must not learn who asks
                on_control=self._control,
            )
        circuit.on_closed = lambda reason: self._ended(circuit)
        self._circuit, self._opened_at = circuit, now
        self._count("hidden_dir_proxy_circuits")
        return circuit

    def _control(self, command: int, data: bytes) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((command, data))

    def _ended(self, circuit: ClientPath) -> None:
        if circuit is self._circuit:
            self._circuit = None
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(None)

    def _drop(self, what: str) -> None:
        self._count(what)
        self._close()

    def _close(self) -> None:
        circuit, self._circuit = self._circuit, None
        if circuit is not None:
            circuit.close()

    def close(self) -> None:
        self._close()
