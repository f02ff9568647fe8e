"""Signing and verifying records (the envelope itself is in `vx6.wire.records`)."""

from __future__ import annotations

from vx6.crypto.keys import Identity, verify
from vx6.wire.records import Kind, Record, signing_bytes


def sign_record(
    identity: Identity, kind: Kind, seq: int, issued: int, expires: int, body: bytes
) -> Record:
    """Sign a record as `identity`; ValueError if a field has no canonical encoding."""
    message = signing_bytes(kind, identity.public, seq, issued, expires, body)
    return Record(kind, identity.public, seq, issued, expires, body, identity.sign(message))


def verify_record(record: Record) -> bool:
    """True only if the record's signature is valid for its signer over its fields."""
    try:
        message = signing_bytes(
            record.kind, record.signer, record.seq, record.issued, record.expires, record.body
        )
    except ValueError:
        return False
    return verify(record.signer, message, record.signature)
