"""The relay directory: rendezvous keys in the DHT where relays can be found.

Theory of operation. A node that joined by `--bootstrap` alone has no sync neighbour to
hand it relays' node records, and nothing tells it which node ids belong to relays. So
a relay stores its node record twice: under its node id as every node does, and under
one of `RELAY_DIRECTORY_BUCKETS` well-known keys, `SHA-256("vx6-relays\\0" || bucket)`,
the bucket fixed by its node id (`keys.relay_bucket`). A client looks up the bucket keys
and accepts what it finds through the same record rules as any record.

Sybils are cheap (a key costs nothing), so a holder keeps a directory entry only if it
costs the signer something real, and keeps few of each kind:

* `store_source_ok`: a STORE of a directory entry must come from one of the addresses
  the record lists (the DHT token proves the source address). Listing addresses one
  does not hold gets nothing stored; a third party cannot store a relay's entry for it.
* `prefix_room`: at most `PER_PREFIX` entries under one directory key whose addresses
  share an IPv6 /48 or IPv4 /24 (an entry counts against the prefix of every address
  it lists; loopback and the test prefixes are exempt, as for the routing table). With
  16 slots per key an attacker needs real addresses in 8 networks to fill one key, and
  entries already held are never pushed out (incumbents that refresh keep their place).
* Holders answer a directory lookup with a random sample of what they hold (one
  datagram carries about four node records), so repeated lookups see more entries.
* `select_entries`: a client takes at most `ACCEPT_PER_LOOKUP` entries from one
  directory lookup, at most `PER_PREFIX` per network, so one lookup cannot fill its
  registry with one operator's relays; route planning spreads over networks as well.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from vx6.core.dht.contacts import prefix_of
from vx6.core.dht.keys import RELAY_DIRECTORY_BUCKETS, RELAY_DIRECTORY_KEYS
from vx6.errors import DecodeError
from vx6.wire.records import NodeBody, Record, decode_record

__all__ = [
    "ACCEPT_PER_LOOKUP",
    "PER_PREFIX",
    "RELAY_DIRECTORY_BUCKETS",
    "RELAY_DIRECTORY_KEYS",
    "prefix_room",
    "prefixes_of",
    "sample",
    "select_entries",
    "store_source_ok",
]

PER_PREFIX = 2  # directory entries per /48 or /24 under one key (held and accepted)
ACCEPT_PER_LOOKUP = 32  # directory entries a client accepts from one lookup


def _addresses(record: Record) -> tuple[str, ...]:
    try:
        body = record.parsed_body()
    except DecodeError:
        return ()
    if not isinstance(body, NodeBody):
        return ()
    return tuple(a.host for a in body.addresses)


def prefixes_of(record: Record) -> set[bytes]:
    """The networks a directory entry counts against (none for exempt addresses)."""
    return {p for p in map(prefix_of, _addresses(record)) if p is not None}


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def store_source_ok(raw: bytes, source_host: str) -> bool:
    """Does the STORE of entry `raw` come from one of the addresses it lists? (An entry
    that does not parse passes here: the record rules refuse it with their reason.)"""
    try:
        record = decode_record(raw)
    except DecodeError:
        return True
    source = _ip(source_host)
    return source is not None and any(_ip(h) == source for h in _addresses(record))


def prefix_room(record: Record, held: Iterable[Record]) -> bool:
    """May `record` take a new slot under a directory key that holds `held`?"""
    mine = prefixes_of(record)
    if not mine:
        return True
    counts: dict[bytes, int] = {}
    for other in held:
        if other.signer == record.signer:
            continue
        for p in prefixes_of(other) & mine:
            counts[p] = counts.get(p, 0) + 1
    return all(counts.get(p, 0) < PER_PREFIX for p in mine)


def sample(records: list[bytes], entropy: Callable[[int], bytes]) -> list[bytes]:
    """`records` in a random order (so each answer's datagram carries a different few)."""
    if len(records) < 2:
        return records
    noise = entropy(4 * len(records))
    order = sorted(range(len(records)), key=lambda i: noise[4 * i : 4 * i + 4])
    return [records[i] for i in order]


def select_entries(records: Iterable[bytes], *, limit: int = ACCEPT_PER_LOOKUP) -> list[bytes]:
    """The directory entries a client accepts from one lookup: at most `limit`, at most
    `PER_PREFIX` per network."""
    chosen: list[bytes] = []
    counts: dict[bytes, int] = {}
    for raw in records:
        try:
            record = decode_record(raw)
        except DecodeError:
            continue
        prefixes = prefixes_of(record)
        if len(chosen) >= limit or any(counts.get(p, 0) >= PER_PREFIX for p in prefixes):
            continue
        for p in prefixes:
            counts[p] = counts.get(p, 0) + 1
        chosen.append(raw)
    return chosen
