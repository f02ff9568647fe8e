"""Aliases: the self-authenticating address of a hidden service (docs/hidden.md, 1).

    alias = base32(A 32 | checksum 2 | version 1), lowercase, no padding: 56 characters
    checksum = SHA3-256(b"vx6-alias-checksum\\x00" | A | version)[:2]

An alias is one label with no dot, so it is never mistaken for `name.service` (which
always has one) nor for a petname (a label of at most 32 characters). Parsing is
case-insensitive and says exactly what is wrong: length, alphabet, checksum (most
likely a typo), version, or a key that is not a valid curve point.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from vx6.crypto.hidden import ED25519_KEY_LEN, valid_ed25519_point
from vx6.errors import UsageError

ALIAS_LEN = 56
ALIAS_VERSION = 1
CHECKSUM_LEN = 2
_CHECKSUM_DOMAIN = b"vx6-alias-checksum\x00"
_BASE32 = re.compile(r"[a-z2-7]+")


class AliasError(UsageError):
    """Text that looks like it was meant as an alias but is not a valid one."""


def _checksum(key: bytes, version: int) -> bytes:
    return hashlib.sha3_256(_CHECKSUM_DOMAIN + key + bytes([version])).digest()[:CHECKSUM_LEN]


def encode_alias(key: bytes) -> str:
    """The alias of an alias public key (32 bytes)."""
    if len(key) != ED25519_KEY_LEN:
        raise ValueError("an alias key is 32 bytes")
    raw = key + _checksum(key, ALIAS_VERSION) + bytes([ALIAS_VERSION])
    return base64.b32encode(raw).decode("ascii").lower()


def looks_like_alias(text: str) -> bool:
    """True for one label of the alias length: what the address parser should hand to
    `parse_alias` (and report its error) rather than treat as a petname."""
    return len(text) == ALIAS_LEN and "." not in text


def parse_alias(text: str) -> bytes:
    """The alias key of `text`; AliasError saying what is wrong otherwise."""
    low = text.strip().lower()
    if len(low) != ALIAS_LEN:
        raise AliasError(f"an alias is {ALIAS_LEN} characters, not {len(low)}")
    if not _BASE32.fullmatch(low):
        raise AliasError("an alias uses only the letters a-z and the digits 2-7")
    try:
        raw = base64.b32decode(low.upper())
    except binascii.Error:  # unreachable for 56 valid characters; kept as a guard
        raise AliasError("an alias is not valid base32") from None
    key, checksum, version = raw[:32], raw[32:34], raw[34]
    if version != ALIAS_VERSION:
        raise AliasError(f"alias version {version} is not known to this VX6 (expected 1)")
    if checksum != _checksum(key, version):
        raise AliasError("the alias's checksum does not match: a typo?")
    if not valid_ed25519_point(key):
        raise AliasError("the alias does not encode a valid key")
    return key
