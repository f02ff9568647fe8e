"""Admission of directory-proxy requests at a relay (docs/hidden.md section 3), sans-IO.

Theory of operation. A relay at the end of a circuit may be asked to store a
descriptor in the DHT (DHT_STORE) or to look a blinded key up (DHT_FETCH) on behalf of
whoever built the circuit; it then runs the DHT operation with its own DHT node, so the
storers see the relay, never the service or the client. Each request costs the relay a
DHT operation, so `DirProxyAdmission` bounds what a peer can make it do:

* one request in flight per circuit: a second before the answer is a protocol error
  (the circuit is destroyed), since an honest builder waits for its answer;
* a token bucket per source (the key the circuit's creations count against): `rate`
  per second, `burst` at once; the source table holds at most `max_sources` (sources
  whose bucket has refilled are forgotten first; if none has, the request is refused);
* at most `max_concurrent` operations at once over the whole node.

A request over the rate or the node-wide bound is answered at once with an empty answer
(DHT_STORED 0, DHT_FETCHED with no record): the builder retries elsewhere. The adapter
(node/hidden_relay.py) runs each admitted operation under `limits.timeout` and calls
`finished` when it is done, answered or not; `circuit_closed` forgets the circuit.

    verdict of admit(circuit, source, now), in order of the checks:
        circuit already has one in flight -> BUSY_CIRCUIT   (destroy, PROTOCOL_ERROR)
        max_concurrent in flight          -> OVERLOADED     (empty answer)
        source table full, none refilled  -> RATE_LIMITED   (empty answer)
        source bucket below one token     -> RATE_LIMITED   (empty answer)
        otherwise                         -> ADMITTED       (in flight until finished)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class DirProxyLimits:
    rate: float = 2.0  # requests per second per source
    burst: float = 20.0
    max_concurrent: int = 32  # proxied DHT operations at once, node-wide
    max_sources: int = 4096
    timeout: float = 10.0  # a proxied operation gives up after this (the adapter's)


class Verdict(Enum):
    ADMITTED = "admitted"
    BUSY_CIRCUIT = "busy_circuit"
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limited"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class DirProxyAdmission:
    def __init__(self, limits: DirProxyLimits | None = None) -> None:
        self.limits = limits or DirProxyLimits()
        self._in_flight: set[Hashable] = set()  # circuits waiting for their answer
        self._running = 0  # admitted operations not finished (a closed circuit's too)
        self._sources: dict[object, _Bucket] = {}
        self.counts: Counter[str] = Counter()

    @property
    def running(self) -> int:
        return self._running

    def admit(self, circuit: Hashable, source: object, now: float) -> Verdict:
        verdict = self._verdict(circuit, source, now)
        self.counts[f"dir_proxy_{verdict.value}"] += 1
        if verdict is Verdict.ADMITTED:
            self._in_flight.add(circuit)
            self._running += 1
        return verdict

    def _verdict(self, circuit: Hashable, source: object, now: float) -> Verdict:
        if circuit in self._in_flight:
            return Verdict.BUSY_CIRCUIT
        if self._running >= self.limits.max_concurrent:
            return Verdict.OVERLOADED
        bucket = self._bucket(source, now)
        if bucket is None or bucket.tokens < 1.0:
            return Verdict.RATE_LIMITED
        bucket.tokens -= 1.0
        return Verdict.ADMITTED

    def _bucket(self, source: object, now: float) -> _Bucket | None:
        bucket = self._sources.get(source)
        if bucket is None:
            if len(self._sources) >= self.limits.max_sources:
                self._forget_refilled(now)
            if len(self._sources) >= self.limits.max_sources:
                self.counts["dir_proxy_sources_full"] += 1
                return None
            bucket = self._sources[source] = _Bucket(self.limits.burst, now)
            return bucket
        elapsed = max(0.0, now - bucket.at)
        bucket.tokens = min(self.limits.burst, bucket.tokens + elapsed * self.limits.rate)
        bucket.at = now
        return bucket

    def _forget_refilled(self, now: float) -> None:
        """A source whose bucket is full again is no different from a new one."""
        limits = self.limits
        for source, bucket in list(self._sources.items()):
            if bucket.tokens + max(0.0, now - bucket.at) * limits.rate >= limits.burst:
                del self._sources[source]

    def finished(self, circuit: Hashable) -> None:
        """An admitted operation is over (once per ADMITTED, answered or not)."""
        self._in_flight.discard(circuit)
        self._running = max(0, self._running - 1)

    def circuit_closed(self, circuit: Hashable) -> None:
        """The circuit ended: a running operation keeps its node-wide slot until it
        finishes (closing circuits must not make room for more), its answer is dropped."""
        self._in_flight.discard(circuit)
