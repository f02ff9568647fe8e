"""Signing and verifying records (the envelope itself is in `vx6.wire.records`)."""

from __future__ import annotations

from typing import Protocol

from vx6.crypto.keys import verify
from vx6.wire.records import Kind, Record, signing_bytes


class Signer(Protocol):
    """Whatever signs a record: a node's `Identity`, or a hidden service's blinded key
    for one period (crypto/hidden.py), which signs with plain Ed25519 under `public`."""

    @property
    def public(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


def sign_record(
    signer: Signer, kind: Kind, seq: int, issued: int, expires: int, body: bytes
) -> Record:
    """Sign a record as `signer`; ValueError if a field has no canonical encoding."""
    public = signer.public
    message = signing_bytes(kind, public, seq, issued, expires, body)
    return Record(kind, public, seq, issued, expires, body, signer.sign(message))


def verify_record(record: Record) -> bool:
    """True only if the record's signature is valid for its signer over its fields."""
    try:
        message = signing_bytes(
            record.kind, record.signer, record.seq, record.issued, record.expires, record.body
        )
    except ValueError:
        return False
    return verify(record.signer, message, record.signature)
