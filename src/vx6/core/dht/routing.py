"""The Kademlia routing table: k-buckets by shared prefix length with our own id.

Theory of operation: bucket i holds up to k contacts whose ids share exactly i leading
bits with ours, least recently seen first. Only a node that sent us a verified message
(signed by the key its id is the hash of) is ever passed to `seen`; ids learnt second
hand from NODES answers never enter the table, so a liar cannot fill it with fakes.

When a full bucket hears from a new node, Kademlia prefers the old: the newcomer goes
to the bucket's replacement cache, and the least recently seen contact is pinged
(`seen` returns it; ping-before-evict). If that ping times out (`failed`), the contact is
evicted and the freshest replacement takes its place; if it answers, it simply moves to
the tail. A contact that fails requests repeatedly yields to a replacement, and is
dropped outright after more failures.

Diversity: a bucket holds at most `prefix_cap_bucket` contacts from one IPv6 /48 or IPv4
/24 (loopback and the test prefixes exempt), so one operator with one address block
cannot own a bucket. A contact heard from a new address (a dynamic IP change) keeps its
place with the new address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from vx6.core.dht.config import DhtConfig
from vx6.core.dht.contacts import ID_BITS, Contact, common_prefix_bits, id_to_int, prefix_of


class Added(Enum):
    ADDED = "added"
    REFRESHED = "refreshed"
    PROBING = "probing"  # bucket full: newcomer cached, oldest contact to be pinged
    CACHED = "cached"  # bucket full and already probing: newcomer cached
    REFUSED = "refused"  # our own id, or the prefix cap


@dataclass(slots=True)
class _Entry:
    contact: Contact
    last_seen: float
    failures: int = 0
    prefix: bytes | None = None

    def __post_init__(self) -> None:
        self.prefix = prefix_of(self.contact.address[0])


@dataclass(slots=True)
class Bucket:
    entries: dict[bytes, _Entry] = field(default_factory=dict)  # oldest first
    replacements: dict[bytes, Contact] = field(default_factory=dict)  # newest last
    last_touched: float = 0.0
    probing: bytes | None = None


class RoutingTable:
    def __init__(self, own_id: bytes, config: DhtConfig, now: float) -> None:
        self.own_id = own_id
        self.own_int = id_to_int(own_id)
        self._config = config
        self._created = now
        self._buckets: dict[int, Bucket] = {}

    def __len__(self) -> int:
        return sum(len(b.entries) for b in self._buckets.values())

    def __contains__(self, node_id: bytes) -> bool:
        bucket = self._buckets.get(self.bucket_index(id_to_int(node_id)))
        return bucket is not None and node_id in bucket.entries

    def bucket_index(self, id_int: int) -> int:
        return common_prefix_bits(self.own_int, id_int)

    def contacts(self) -> list[Contact]:
        return [e.contact for b in self._buckets.values() for e in b.entries.values()]

    def get(self, node_id: bytes) -> Contact | None:
        bucket = self._buckets.get(self.bucket_index(id_to_int(node_id)))
        entry = None if bucket is None else bucket.entries.get(node_id)
        return None if entry is None else entry.contact

    def bucket_sizes(self) -> dict[int, int]:
        return {i: len(b.entries) for i, b in sorted(self._buckets.items()) if b.entries}

    def _prefix_full(self, bucket: Bucket, contact: Contact) -> bool:
        prefix = prefix_of(contact.address[0])
        if prefix is None:
            return False
        same = 0
        for node_id, entry in bucket.entries.items():
            if entry.prefix == prefix and node_id != contact.node_id:
                same += 1
        return same >= self._config.prefix_cap_bucket

    def seen(self, contact: Contact, now: float) -> tuple[Added, Contact | None]:
        """Record that `contact` sent us a verified message. Returns the outcome and, for
        PROBING, the least recently seen contact the caller must ping."""
        index = self.bucket_index(contact.id_int)
        if index >= ID_BITS:
            return Added.REFUSED, None
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = Bucket(last_touched=now)
        bucket.last_touched = now
        entry = bucket.entries.pop(contact.node_id, None)
        if entry is not None:
            if entry.contact.address != contact.address and self._prefix_full(bucket, contact):
                bucket.entries[contact.node_id] = entry  # keep the old address
                return Added.REFUSED, None
            entry.contact, entry.last_seen, entry.failures = contact, now, 0
            entry.prefix = prefix_of(contact.address[0])
            bucket.entries[contact.node_id] = entry
            if bucket.probing == contact.node_id:
                bucket.probing = None
            return Added.REFRESHED, None
        if self._prefix_full(bucket, contact):
            return Added.REFUSED, None
        if len(bucket.entries) < self._config.k:
            bucket.entries[contact.node_id] = _Entry(contact, now)
            bucket.replacements.pop(contact.node_id, None)
            return Added.ADDED, None
        bucket.replacements.pop(contact.node_id, None)
        bucket.replacements[contact.node_id] = contact
        while len(bucket.replacements) > self._config.replacement_cache:
            del bucket.replacements[next(iter(bucket.replacements))]
        if bucket.probing is not None:
            return Added.CACHED, None
        oldest = next(iter(bucket.entries.values()))
        bucket.probing = oldest.contact.node_id
        return Added.PROBING, oldest.contact

    def failed(self, node_id: bytes) -> None:
        """A request to `node_id` timed out or was answered by another key."""
        bucket = self._buckets.get(self.bucket_index(id_to_int(node_id)))
        if bucket is None:
            return
        bucket.replacements.pop(node_id, None)
        entry = bucket.entries.get(node_id)
        if entry is None:
            return
        entry.failures += 1
        if bucket.probing == node_id:
            bucket.probing = None
            self._evict(bucket, node_id)
        elif entry.failures >= self._config.evict_after_failures and bucket.replacements:
            self._evict(bucket, node_id)
        elif entry.failures >= self._config.drop_after_failures:
            del bucket.entries[node_id]

    def remove(self, node_id: bytes) -> None:
        bucket = self._buckets.get(self.bucket_index(id_to_int(node_id)))
        if bucket is not None:
            bucket.entries.pop(node_id, None)
            bucket.replacements.pop(node_id, None)

    def _evict(self, bucket: Bucket, node_id: bytes) -> None:
        del bucket.entries[node_id]
        while bucket.replacements and len(bucket.entries) < self._config.k:
            newest_id = next(reversed(bucket.replacements))
            newest = bucket.replacements.pop(newest_id)
            if not self._prefix_full(bucket, newest):
                bucket.entries[newest_id] = _Entry(newest, bucket.last_touched)

    def _bucket_order(self, target_int: int) -> list[int]:
        """Non-empty bucket indices in XOR order from `target_int`.

        With d = the target's bucket, every contact of bucket d is closer than any other;
        of the deeper buckets, those where the target's bit differs from ours come first
        (shallowest first), then the rest (deepest first); the shallower buckets come
        last, deepest first. So whole buckets are ordered without comparing contacts.
        """
        depth = self.bucket_index(target_int)
        diff = self.own_int ^ target_int
        indices = sorted(i for i, b in self._buckets.items() if b.entries)
        deeper = [i for i in indices if i > depth]
        first = [i for i in deeper if (diff >> (ID_BITS - 1 - i)) & 1]
        then = [i for i in reversed(deeper) if not (diff >> (ID_BITS - 1 - i)) & 1]
        shallower = [i for i in reversed(indices) if i < depth]
        own = [depth] if depth in self._buckets else []
        return own + first + then + shallower

    def closest(self, target: bytes | int, count: int, cap: int = 0) -> list[Contact]:
        """The `count` contacts closest to `target`, at most `cap` per prefix (0 = no cap)."""
        target_int = target if isinstance(target, int) else id_to_int(target)
        chosen: list[Contact] = []
        per_prefix: dict[bytes, int] = {}
        for index in self._bucket_order(target_int):
            entries = sorted(
                self._buckets[index].entries.values(),
                key=lambda e: e.contact.id_int ^ target_int,
            )
            for entry in entries:
                if cap > 0 and entry.prefix is not None:
                    seen = per_prefix.get(entry.prefix, 0)
                    if seen >= cap:
                        continue
                    per_prefix[entry.prefix] = seen + 1
                chosen.append(entry.contact)
                if len(chosen) >= count:
                    return chosen
        return chosen

    def touch_bucket_of(self, target: bytes, now: float) -> None:
        """A lookup for `target` went through: its bucket needs no refresh for a while."""
        bucket = self._buckets.get(self.bucket_index(id_to_int(target)))
        if bucket is not None:
            bucket.last_touched = now

    def buckets_due(self, now: float, interval: float) -> list[int]:
        """Indices of buckets not touched for `interval`, from the shallowest bucket to
        one past the deepest non-empty one (deeper ranges hold nobody to find)."""
        if not self._buckets:
            return []
        deepest = max((i for i, b in self._buckets.items() if b.entries), default=-1)
        due = []
        for i in range(min(deepest + 2, ID_BITS)):
            bucket = self._buckets.get(i)
            last = self._created if bucket is None else bucket.last_touched
            if now - last >= interval:
                due.append(i)
        return due

    def mark_refreshed(self, index: int, now: float) -> None:
        bucket = self._buckets.setdefault(index, Bucket())
        bucket.last_touched = now

    def random_id_in_bucket(self, index: int, random_bytes: bytes) -> bytes:
        """An id sharing exactly `index` leading bits with ours (32 random bytes in)."""
        noise = int.from_bytes(random_bytes[:32].ljust(32, b"\0"), "big")
        low_mask = (1 << (ID_BITS - index - 1)) - 1
        flipped = self.own_int ^ (1 << (ID_BITS - index - 1))
        value = (flipped & ~low_mask) | (noise & low_mask)
        return value.to_bytes(32, "big")
