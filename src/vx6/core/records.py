"""Record acceptance rules (sans-IO: the caller supplies `now` and what it holds).

A record is accepted only if, in this order (cheapest checks first, the signature last):

1. it is at most MAX_RECORD_SIZE bytes (checked before any parsing);
2. the envelope and its body parse canonically for the record's kind;
3. its signer is the key the caller expected, if the caller named one;
4. it is inside its time window: issued <= now + MAX_CLOCK_SKEW, expires > now,
   expires > issued, and expires - issued <= MAX_LIFETIME (MAX_DESCRIPTOR_LIFETIME for
   a hidden-service descriptor: a storer keeps one no longer than a few hours);
5. its sequence number is higher than the one the caller holds for the same
   (kind, signer, subject) slot, so a replayed older record is refused;
6. its Ed25519 signature verifies.

Unparseable bytes raise DecodeError; everything else raises RecordRejected with a short
machine-friendly reason (the REASON_* constants below).
"""

from __future__ import annotations

from vx6.core.names import name_pow_ok
from vx6.crypto.records import Signer, sign_record, verify_record
from vx6.errors import RecordRejected
from vx6.wire.records import (
    MAX_RECORD_SIZE,
    Body,
    Kind,
    NameClaimBody,
    Record,
    decode_record,
    encode_body,
    encode_record,
    kind_of_body,
)

MAX_CLOCK_SKEW = 300
MAX_LIFETIME = 7 * 86400
MAX_DESCRIPTOR_LIFETIME = 6 * 3600  # docs/hidden.md section 3 (services use 3 h)

REASON_TOO_LARGE = "too-large"
REASON_WRONG_SIGNER = "wrong-signer"
REASON_NOT_YET_VALID = "not-yet-valid"
REASON_EXPIRED = "expired"
REASON_BAD_LIFETIME = "bad-lifetime"
REASON_LIFETIME_TOO_LONG = "lifetime-too-long"
REASON_STALE_SEQUENCE = "stale-sequence"
REASON_BAD_SIGNATURE = "bad-signature"
REASON_WEAK_WORK = "weak-proof-of-work"
REASON_DESCRIPTOR_LIFETIME = "descriptor-lifetime"

RecordSlot = tuple[Kind, bytes, str]


def record_slot(record: Record) -> RecordSlot:
    """The (kind, signer, subject) a record replaces an older version of."""
    return (record.kind, record.signer, record.subject)


def check_record(
    raw: bytes, now: float, held_seq: int | None, *, expected_signer: bytes | None = None
) -> Record:
    """Parse and check `raw` against the acceptance rules; return the accepted record.

    `held_seq` is the sequence number of the record currently held for the same slot
    (None if none). `expected_signer`, if given, is the key the record is stored under.
    """
    if len(raw) > MAX_RECORD_SIZE:
        raise RecordRejected(REASON_TOO_LARGE)
    record = decode_record(raw)
    if expected_signer is not None and record.signer != expected_signer:
        raise RecordRejected(REASON_WRONG_SIGNER)
    if record.issued > now + MAX_CLOCK_SKEW:
        raise RecordRejected(REASON_NOT_YET_VALID)
    if record.expires <= now:
        raise RecordRejected(REASON_EXPIRED)
    if record.expires <= record.issued:
        raise RecordRejected(REASON_BAD_LIFETIME)
    if record.expires - record.issued > MAX_LIFETIME:
        raise RecordRejected(REASON_LIFETIME_TOO_LONG)
    if (
        record.kind == Kind.HIDDEN_DESCRIPTOR
        and record.expires - record.issued > MAX_DESCRIPTOR_LIFETIME
    ):
        raise RecordRejected(REASON_DESCRIPTOR_LIFETIME)
    if held_seq is not None and record.seq <= held_seq:
        raise RecordRejected(REASON_STALE_SEQUENCE)
    if not verify_record(record):
        raise RecordRejected(REASON_BAD_SIGNATURE)
    return record


def make_record(
    signer: Signer, body: Body, seq: int, now: float, lifetime: int
) -> tuple[Record, bytes]:
    """Sign `body` as `signer` (an `Identity`, or a blinded key for a descriptor), valid
    from `now` for `lifetime` seconds; return the record and its encoding. ValueError if
    the lifetime or a field is out of range."""
    kind = kind_of_body(body)
    longest = MAX_DESCRIPTOR_LIFETIME if kind == Kind.HIDDEN_DESCRIPTOR else MAX_LIFETIME
    if not 0 < lifetime <= longest:
        raise ValueError(f"lifetime must be 1..{longest} seconds, got {lifetime}")
    issued = int(now)
    record = sign_record(signer, kind, seq, issued, issued + lifetime, encode_body(body))
    return record, encode_record(record)


def check_claim_policy(record: Record, pow_bits: int) -> None:
    """Rules beyond the envelope: a name claim must carry its proof of work, so that
    squatting names in bulk costs work per name and key."""
    body = record.parsed_body()
    if isinstance(body, NameClaimBody) and not name_pow_ok(
        body.name, record.signer, body.pow_nonce, pow_bits
    ):
        raise RecordRejected(REASON_WEAK_WORK)
