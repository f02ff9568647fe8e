"""Hidden-service descriptors in the DHT: publishing one, fetching them back.

Theory of operation. A descriptor (docs/hidden.md section 3) is a record of kind
HIDDEN_DESCRIPTOR signed by the period's blinded key A' and stored under the two replica
keys `hidden_descriptor_key(A', 0)` and `(A', 1)`, each on its own k closest nodes, so
losing one replica set does not hide the service. `DescriptorDirectory` holds no state:

* `publish(raw)` hands the record to the DHT, which stores it under both replica keys
  (core/dht/keys.py `record_keys`) and answers how many storers acknowledged, over both;
* `fetch(A')` looks both replica keys up at once and returns the valid descriptors
  signed by exactly A', newest revision first, each once. A lookup that fails or times
  out only costs its replica; "no descriptor" is nothing valid under either.

Since docs/hidden.md section 3's directory proxy, the service and the client no longer
use this directory with their own DHT node: they send DHT_STORE / DHT_FETCH through a
circuit (node/hidden_dir_circuit.py) and the relay at its end runs `publish` and
`fetch_raw` here (node/hidden_relay.py), after `acceptable` checked what it was handed.
The counters `hidden_descriptor_dht_stores` / `_lookups` count the DHT operations this
node originated for descriptors, so a test can assert a service or client made none.

The DHT core already checks every value it receives (core/dht/values.py); `fetch` checks
again (kind, signer, size, time window, lifetime cap, signature), since what the port
hands back is what a peer sent. Descriptors are never put in the registry or synced
(core/sync.py): the service role keeps the one it published, the client the one it used.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from vx6.core.dht import events as dht_events
from vx6.core.dht.keys import hidden_descriptor_keys
from vx6.core.records import check_record
from vx6.errors import DecodeError, RecordRejected
from vx6.net.ports import Clock, Count
from vx6.wire.records import MAX_RECORD_SIZE, SIGNER_LEN, Kind, Record, decode_record


class DescriptorDht(Protocol):
    """What the directory needs of the DHT service (net/dht.py `DhtService`)."""

    async def store(self, raw: bytes) -> int:
        """Store `raw` under each of its DHT keys; how many holders acknowledged."""
        ...

    async def lookup(self, target: bytes) -> dht_events.RecordFound | dht_events.LookupFinished: ...


class DescriptorDirectory:
    def __init__(self, dht: DescriptorDht, *, clock: Clock, count: Count) -> None:
        self.dht = dht
        self.clock = clock
        self.count = count

    async def publish(self, record_raw: bytes) -> int:
        """Store a signed descriptor under both replica keys; how many storers accepted
        it, over both (0 also when our own DHT node refuses it: the DHT logs why)."""
        self.count("hidden_descriptor_dht_stores")
        stored = await self.dht.store(record_raw)
        self.count("hidden_descriptors_published")
        if stored == 0:
            self.count("hidden_descriptors_stored_nowhere")
        return stored

    def acceptable(self, record_raw: bytes) -> bool:
        """Whether `record_raw` is a descriptor a storer would take (exact size, kind,
        signature, time window, lifetime cap): what a directory proxy stores."""
        try:
            signer = decode_record(record_raw).signer
        except DecodeError:
            self.count("hidden_descriptors_refused_malformed")
            return False
        return self.check(record_raw, signer) is not None

    async def fetch_raw(self, blinded_key: bytes) -> list[bytes]:
        """`fetch`, as the records' bytes (what a directory proxy answers)."""
        found = await self._found(blinded_key)
        return [raw for raw, _ in sorted(found.items(), key=lambda kv: kv[1].seq, reverse=True)]

    async def fetch(self, blinded_key: bytes) -> list[Record]:
        """The valid descriptors signed by `blinded_key` under either replica key,
        newest revision first; [] if there are none."""
        found = await self._found(blinded_key)
        return sorted(found.values(), key=lambda r: r.seq, reverse=True)

    async def _found(self, blinded_key: bytes) -> dict[bytes, Record]:
        if len(blinded_key) != SIGNER_LEN:
            raise ValueError("a blinded key is a 32-byte Ed25519 public key")
        self.count("hidden_descriptor_dht_lookups")
        targets = hidden_descriptor_keys(blinded_key)
        answers = await asyncio.gather(
            *(self.dht.lookup(target) for target in targets), return_exceptions=True
        )
        found: dict[bytes, Record] = {}
        for answer in answers:
            if isinstance(answer, TimeoutError):
                self.count("hidden_descriptor_lookups_timed_out")
                continue
            if isinstance(answer, BaseException):
                raise answer
            for raw in answer.records:
                record = self.check(raw, blinded_key)
                if record is not None:
                    found[raw] = record
        self.count("hidden_descriptor_fetches")
        if not found:
            self.count("hidden_descriptor_fetches_empty")
        return found

    def check(self, raw: bytes, blinded_key: bytes) -> Record | None:
        """The descriptor `raw` if it is valid and signed by `blinded_key`, else None."""
        if len(raw) != MAX_RECORD_SIZE:
            self.count("hidden_descriptors_refused_size")
            return None
        try:
            record = check_record(raw, self.clock.wall(), None, expected_signer=blinded_key)
        except (DecodeError, RecordRejected) as exc:
            reason = exc.reason if isinstance(exc, RecordRejected) else "malformed"
            self.count(f"hidden_descriptors_refused_{reason}")
            return None
        if record.kind != Kind.HIDDEN_DESCRIPTOR:
            self.count("hidden_descriptors_refused_kind")
            return None
        return record
