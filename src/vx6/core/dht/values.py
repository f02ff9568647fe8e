"""Checking and holding the records stored in the DHT.

Theory of operation: every record that arrives (in a STORE, or in a VALUES answer to one
of our lookups) goes through `check_value`, which applies the record rules in this
order, cheapest first: size cap, canonical parse, DHT key matches the target (one of
`keys.record_keys`: a relay's node record also fits its relay directory key, a
hidden-service descriptor either of its two replica keys), then
`vx6.core.records.check_record` (time window, sequence number, signature). The verdict
says what to do with it:

    NEW       valid and newer than what we hold for its (kind, signer, subject) slot
    SAME      byte-identical to what we hold (a republish; nothing to verify again)
    STALE     valid shape but older than what we hold (a replay, or a stale holder)
    CONFLICT  a validly signed record with the same sequence number as the one we hold
              but different bytes: the signer equivocated; refused and reported
    REFUSED   fails a rule; `reason` names it (the REASON_* strings of core.records,
              plus "too-large", "malformed", "wrong-key", "full", "prefix-full")

`RecordStore` holds the accepted records per DHT key and slot, bounded in total and per
key; when full it keeps what it has (incumbents that keep refreshing are never pushed
out by a flood of new keys). Under a relay directory key it also keeps at most
`directory.PER_PREFIX` entries per network (core/dht/directory.py). Expired records are
dropped by `expire`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from vx6.core.dht.directory import prefix_room
from vx6.core.dht.keys import is_relay_directory_key, record_keys
from vx6.core.records import (
    REASON_EXPIRED,
    REASON_STALE_SEQUENCE,
    REASON_TOO_LARGE,
    RecordSlot,
    check_record,
    record_slot,
)
from vx6.errors import DecodeError, RecordRejected
from vx6.wire.records import MAX_RECORD_SIZE, Record, decode_record

REASON_MALFORMED = "malformed"
REASON_WRONG_KEY = "wrong-key"
REASON_FULL = "full"
REASON_PREFIX_FULL = "prefix-full"
REASON_CONFLICT = "same-seq-conflict"


class Outcome(Enum):
    NEW = "new"
    SAME = "same"
    STALE = "stale"
    CONFLICT = "conflict"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Checked:
    outcome: Outcome
    reason: str = ""
    record: Record | None = None
    slot: RecordSlot | None = None

    @property
    def acceptable(self) -> bool:
        """Valid and at least as new as what we hold."""
        return self.outcome in (Outcome.NEW, Outcome.SAME)


@dataclass(slots=True)
class Held:
    raw: bytes
    record: Record
    stored_at: float


def check_value(
    raw: bytes,
    target: bytes,
    now: float,
    held: Mapping[RecordSlot, Held],
    *,
    room_for_new_slot: bool = True,
) -> Checked:
    """Apply the record rules to `raw` offered under DHT key `target` (see module doc)."""
    if len(raw) > MAX_RECORD_SIZE:
        return Checked(Outcome.REFUSED, REASON_TOO_LARGE)
    try:
        record = decode_record(raw)
        keys = record_keys(record)
        slot = record_slot(record)
    except (DecodeError, ValueError):
        return Checked(Outcome.REFUSED, REASON_MALFORMED)
    if target not in keys:
        return Checked(Outcome.REFUSED, REASON_WRONG_KEY, record)
    current = held.get(slot)
    if current is None and not room_for_new_slot:
        return Checked(Outcome.REFUSED, REASON_FULL, record, slot)
    if current is not None and current.raw == raw:
        if record.expires <= now:
            return Checked(Outcome.REFUSED, REASON_EXPIRED, record, slot)
        return Checked(Outcome.SAME, "", current.record, slot)
    held_seq = None if current is None else current.record.seq
    try:
        if current is not None and record.seq == held_seq:
            # Verify before accusing: a forged signature is no evidence of equivocation.
            check_record(raw, now, None)
            return Checked(Outcome.CONFLICT, REASON_CONFLICT, record, slot)
        accepted = check_record(raw, now, held_seq)
    except RecordRejected as exc:
        if exc.reason == REASON_STALE_SEQUENCE:
            return Checked(Outcome.STALE, exc.reason, record, slot)
        return Checked(Outcome.REFUSED, exc.reason, record, slot)
    except DecodeError:
        return Checked(Outcome.REFUSED, REASON_MALFORMED)
    return Checked(Outcome.NEW, "", accepted, slot)


class RecordStore:
    """Accepted records by DHT key and slot, bounded (see module doc)."""

    def __init__(self, max_records: int, max_slots_per_target: int) -> None:
        self._by_target: dict[bytes, dict[RecordSlot, Held]] = {}
        self._count = 0
        self._max_records = max_records
        self._max_slots = max_slots_per_target

    def __len__(self) -> int:
        return self._count

    def held(self, target: bytes) -> Mapping[RecordSlot, Held]:
        return self._by_target.get(target, {})

    def targets(self) -> list[bytes]:
        return list(self._by_target)

    def offer(self, raw: bytes, target: bytes, now: float) -> Checked:
        """Check `raw` and keep it if it is NEW (SAME only refreshes the store time)."""
        slots = self._by_target.get(target, {})
        room = len(slots) < self._max_slots and self._count < self._max_records
        checked = check_value(raw, target, now, slots, room_for_new_slot=room)
        if checked.outcome is Outcome.NEW:
            assert checked.record is not None and checked.slot is not None
            if (
                checked.slot not in slots
                and is_relay_directory_key(target)
                and not prefix_room(checked.record, (h.record for h in slots.values()))
            ):
                return Checked(Outcome.REFUSED, REASON_PREFIX_FULL, checked.record, checked.slot)
            self.put(raw, target, checked.record, checked.slot, now)
        elif checked.outcome is Outcome.SAME:
            assert checked.slot is not None
            slots[checked.slot].stored_at = now
        return checked

    def put(self, raw: bytes, target: bytes, record: Record, slot: RecordSlot, now: float) -> None:
        """Keep an already checked record (replacing the older one in its slot)."""
        slots = self._by_target.setdefault(target, {})
        if slot not in slots:
            self._count += 1
        slots[slot] = Held(raw, record, now)

    def live(self, target: bytes, now: float) -> list[bytes]:
        """Unexpired records under `target`, newest issue time first."""
        slots = self._by_target.get(target)
        if not slots:
            return []
        alive = [h for h in slots.values() if h.record.expires > now]
        alive.sort(key=lambda h: h.record.issued, reverse=True)
        return [h.raw for h in alive]

    def expire(self, now: float) -> int:
        """Drop expired records; return how many went."""
        dropped = 0
        for target in list(self._by_target):
            slots = self._by_target[target]
            for slot in [s for s, h in slots.items() if h.record.expires <= now]:
                del slots[slot]
                dropped += 1
            if not slots:
                del self._by_target[target]
        self._count -= dropped
        return dropped
