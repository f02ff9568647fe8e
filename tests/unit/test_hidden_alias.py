"""Aliases (docs/hidden.md section 1): round trip, and each way an alias can be wrong."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vx6.core.hidden.alias import ALIAS_LEN, AliasError, encode_alias, looks_like_alias, parse_alias
from vx6.core.names import parse_service_address
from vx6.crypto.keys import Identity
from vx6.errors import UsageError


def _key(seed: bytes) -> bytes:
    return Identity.generate(seed).public


@given(st.binary(min_size=32, max_size=32))
def test_alias_round_trip_any_case(seed: bytes) -> None:
    key = _key(seed)
    alias = encode_alias(key)
    assert len(alias) == ALIAS_LEN and alias == alias.lower() and "." not in alias
    assert parse_alias(alias) == key
    assert parse_alias(alias.upper()) == key
    assert looks_like_alias(alias)


ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


# A 16-bit checksum misses one typo in 65536: fixed examples keep the test from being
# that rare flake (a miss would be the truncated hash's, not the code's).
@settings(derandomize=True)
@given(st.binary(min_size=32, max_size=32), st.integers(0, ALIAS_LEN - 1), st.data())
def test_any_one_character_typo_is_refused(seed: bytes, pos: int, data: st.DataObject) -> None:
    alias = encode_alias(_key(seed))
    other = data.draw(st.sampled_from([c for c in ALPHABET if c != alias[pos]]))
    typo = alias[:pos] + other + alias[pos + 1 :]
    with pytest.raises(AliasError):
        parse_alias(typo)


def test_each_error_says_what_is_wrong() -> None:
    alias = encode_alias(_key(bytes(32)))
    with pytest.raises(AliasError, match="56 characters"):
        parse_alias(alias[:-1])
    with pytest.raises(AliasError, match="a-z and the digits 2-7"):
        parse_alias(alias[:-1] + "1")
    with pytest.raises(AliasError, match="version"):
        import base64

        raw = bytearray(base64.b32decode(alias.upper()))
        raw[34] = 2
        parse_alias(base64.b32encode(bytes(raw)).decode())
    # The identity point (0, 1) with a correct checksum: refused as no valid key.
    identity_point = bytes([1]) + bytes(31)
    with pytest.raises(AliasError, match="valid key"):
        parse_alias(encode_alias(identity_point))


def test_an_alias_is_not_a_service_address() -> None:
    alias = encode_alias(_key(b"\x07" * 32))
    with pytest.raises(UsageError):
        parse_service_address(alias)
    assert not looks_like_alias("alice.ssh") and not looks_like_alias("mybank")
