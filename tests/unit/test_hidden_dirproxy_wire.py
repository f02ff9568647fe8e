"""The directory-proxy relay messages (docs/hidden.md section 3): DHT_STORE, DHT_STORED,
DHT_FETCH, DHT_FETCHED: golden bytes, canonical decoding, refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vx6.errors import DecodeError
from vx6.wire.hidden import (
    MAX_FETCHED_RECORDS,
    DhtFetch,
    DhtFetched,
    DhtStore,
    DhtStored,
    decode_dht_fetch,
    decode_dht_fetched,
    decode_dht_store,
    decode_dht_stored,
    encode_dht_fetch,
    encode_dht_fetched,
    encode_dht_store,
    encode_dht_stored,
)
from vx6.wire.records import MAX_RECORD_SIZE

GOLDEN: list[tuple[object, str, Callable[[Any], bytes], Callable[[bytes], object]]] = [
    (DhtStore(b"\x04\x01\x02"), "040102", encode_dht_store, decode_dht_store),
    (DhtStored(0), "0000", encode_dht_stored, decode_dht_stored),
    (DhtStored(0x0102), "0102", encode_dht_stored, decode_dht_stored),
    (DhtFetch(bytes(range(32))), bytes(range(32)).hex(), encode_dht_fetch, decode_dht_fetch),
    (DhtFetched(()), "00", encode_dht_fetched, decode_dht_fetched),
    (
        DhtFetched((b"\xaa", b"\xbb\xcc")),
        "02 0001 aa 0002 bbcc",
        encode_dht_fetched,
        decode_dht_fetched,
    ),
]


@pytest.mark.parametrize(("message", "golden", "encode", "decode"), GOLDEN)
def test_golden_bytes(
    message: object, golden: str, encode: Callable[[Any], bytes], decode: Callable[[bytes], object]
) -> None:
    raw = bytes.fromhex(golden)
    assert encode(message) == raw
    assert decode(raw) == message


@pytest.mark.parametrize(
    ("decode", "raw"),
    [
        (decode_dht_store, b""),
        (decode_dht_store, bytes(MAX_RECORD_SIZE + 1)),
        (decode_dht_stored, b"\x00"),
        (decode_dht_stored, b"\x00\x00\x00"),
        (decode_dht_fetch, bytes(31)),
        (decode_dht_fetch, bytes(33)),
        (decode_dht_fetched, b""),
        (decode_dht_fetched, bytes([MAX_FETCHED_RECORDS + 1])),
        (decode_dht_fetched, b"\x01\x00"),  # ends inside a length
        (decode_dht_fetched, b"\x01\x00\x00"),  # an empty record
        (decode_dht_fetched, b"\x01\x00\x02\xaa"),  # shorter than its length
        (decode_dht_fetched, b"\x01\x00\x01\xaa\x00"),  # trailing bytes
        (decode_dht_fetched, b"\x01\x04\x01" + bytes(MAX_RECORD_SIZE + 1)),  # too long
    ],
)
def test_malformed_is_a_decode_error(decode: Callable[[bytes], object], raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw)


@pytest.mark.parametrize(
    ("encode", "message"),
    [
        (encode_dht_store, DhtStore(b"")),
        (encode_dht_store, DhtStore(bytes(MAX_RECORD_SIZE + 1))),
        (encode_dht_stored, DhtStored(0x10000)),
        (encode_dht_stored, DhtStored(-1)),
        (encode_dht_fetch, DhtFetch(bytes(31))),
        (encode_dht_fetched, DhtFetched((b"\x01",) * (MAX_FETCHED_RECORDS + 1))),
        (encode_dht_fetched, DhtFetched((b"",))),
    ],
)
def test_values_the_format_cannot_carry_are_a_value_error(
    encode: Callable[[Any], bytes], message: object
) -> None:
    with pytest.raises(ValueError):
        encode(message)


records = st.lists(st.binary(min_size=1, max_size=MAX_RECORD_SIZE), max_size=MAX_FETCHED_RECORDS)


@given(found=records)
def test_fetched_round_trips(found: list[bytes]) -> None:
    message = DhtFetched(tuple(found))
    assert decode_dht_fetched(encode_dht_fetched(message)) == message


@pytest.mark.parametrize(
    ("decode", "encode"),
    [
        (decode_dht_store, encode_dht_store),
        (decode_dht_stored, encode_dht_stored),
        (decode_dht_fetch, encode_dht_fetch),
        (decode_dht_fetched, encode_dht_fetched),
    ],
)
@given(raw=st.one_of(st.binary(max_size=64), st.binary(min_size=1020, max_size=1030)))
def test_any_bytes_decode_canonically_or_raise_decode_error(
    decode: Callable[[bytes], Any], encode: Callable[[Any], bytes], raw: bytes
) -> None:
    try:
        message = decode(raw)
    except DecodeError:
        return
    assert encode(message) == raw
