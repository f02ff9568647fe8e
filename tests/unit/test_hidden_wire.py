"""Hidden-service relay messages (docs/hidden.md sections 4 and 5): golden bytes for every
message, every way a message can be malformed, and round trips."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vx6.errors import DecodeError
from vx6.wire.cells import Endpoint
from vx6.wire.hidden import (
    INTRO_CIPHERTEXT_SIZE,
    INTRO_PLAINTEXT_SIZE,
    EstablishIntro,
    EstablishRendezvous,
    Introduce1,
    IntroduceAck,
    IntroducePlaintext,
    IntroduceStatus,
    IntroEstablished,
    Rendezvous1,
    Rendezvous2,
    RendezvousEstablished,
    client_proof_signed_bytes,
    decode_establish_intro,
    decode_establish_rendezvous,
    decode_intro_established,
    decode_introduce1,
    decode_introduce_ack,
    decode_introduce_plaintext,
    decode_rendezvous1,
    decode_rendezvous2,
    decode_rendezvous_established,
    encode_establish_intro,
    encode_establish_rendezvous,
    encode_intro_established,
    encode_introduce1,
    encode_introduce_ack,
    encode_introduce_plaintext,
    encode_rendezvous1,
    encode_rendezvous2,
    encode_rendezvous_established,
    establish_intro_signed_bytes,
)

KEY_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
KEY = bytes.fromhex(KEY_HEX)


def test_intro_plaintext_and_ciphertext_sizes() -> None:
    assert INTRO_PLAINTEXT_SIZE == 320
    assert INTRO_CIPHERTEXT_SIZE == 336


# -- golden bytes -------------------------------------------------------------------

GOLDEN: list[tuple[object, str, Callable[[Any], bytes], Callable[[bytes], object]]] = [
    (
        EstablishIntro(KEY, 25, 200, b"\xaa" * 64),
        KEY_HEX + "0019" + "00c8" + "aa" * 64,
        encode_establish_intro,
        decode_establish_intro,
    ),
    (
        EstablishIntro(KEY, 1000, 10000, b"\x01" * 64),
        KEY_HEX + "03e8" + "2710" + "01" * 64,
        encode_establish_intro,
        decode_establish_intro,
    ),
    (IntroEstablished(), "", encode_intro_established, decode_intro_established),
    (
        Introduce1(KEY, b"\x58" * 32, b"\xcc" * 336),
        KEY_HEX + "58" * 32 + "cc" * 336,
        encode_introduce1,
        decode_introduce1,
    ),
    (IntroduceAck(IntroduceStatus.SENT_ON), "00", encode_introduce_ack, decode_introduce_ack),
    (IntroduceAck(IntroduceStatus.UNKNOWN_INTRO), "01", encode_introduce_ack, decode_introduce_ack),
    (IntroduceAck(IntroduceStatus.RATE_LIMITED), "02", encode_introduce_ack, decode_introduce_ack),
    (
        EstablishRendezvous(b"\xc0" * 32),
        "c0" * 32,
        encode_establish_rendezvous,
        decode_establish_rendezvous,
    ),
    (RendezvousEstablished(), "", encode_rendezvous_established, decode_rendezvous_established),
    (
        Rendezvous1(b"\xc0" * 32, b"\x59" * 32 + b"\xa7" * 32),
        "c0" * 32 + "59" * 32 + "a7" * 32,
        encode_rendezvous1,
        decode_rendezvous1,
    ),
    (
        Rendezvous2(b"\x59" * 32 + b"\xa7" * 32),
        "59" * 32 + "a7" * 32,
        encode_rendezvous2,
        decode_rendezvous2,
    ),
    (
        IntroducePlaintext(
            b"\x11" * 32,
            b"\x22" * 32,
            b"\x33" * 32,
            (Endpoint("192.0.2.1", 443), Endpoint("2001:db8::1", 9000)),
            b"\x44" * 32,
            b"\x55" * 64,
        ),
        "11" * 32
        + "22" * 32
        + "33" * 32
        + "02"
        + "04c0000201"
        + "01bb"
        + "0620010db8000000000000000000000001"
        + "2328"
        + "01"
        + "44" * 32
        + "55" * 64
        + "00" * (320 - 96 - 1 - 7 - 19 - 1 - 96),
        encode_introduce_plaintext,
        decode_introduce_plaintext,
    ),
    (
        IntroducePlaintext(
            b"\x11" * 32, b"\x22" * 32, b"\x33" * 32, (Endpoint("10.1.2.3", 1),), None, None
        ),
        "11" * 32 + "22" * 32 + "33" * 32 + "01" + "040a010203" + "0001" + "00" + "00" * 215,
        encode_introduce_plaintext,
        decode_introduce_plaintext,
    ),
]


@pytest.mark.parametrize(("message", "golden", "encode", "decode"), GOLDEN)
def test_golden_bytes(
    message: object,
    golden: str,
    encode: Callable[[Any], bytes],
    decode: Callable[[bytes], object],
) -> None:
    raw = bytes.fromhex(golden)
    assert encode(message) == raw
    assert decode(raw) == message
    assert decode(memoryview(raw)) == message


def test_establish_intro_signed_bytes_golden() -> None:
    binding = b"\xb1" * 32
    expected = b"vx6-hs-establish-intro-v1\x00" + binding + KEY + bytes.fromhex("001900c8")
    assert establish_intro_signed_bytes(binding, KEY, 25, 200) == expected
    with pytest.raises(ValueError):
        establish_intro_signed_bytes(b"\xb1" * 31, KEY, 25, 200)
    with pytest.raises(ValueError):
        establish_intro_signed_bytes(binding, KEY, 0, 200)


def test_client_proof_signed_bytes_golden() -> None:
    expected = b"vx6-hs-client-proof-v1\x00" + KEY + b"\x58" * 32 + b"\xc0" * 32
    assert client_proof_signed_bytes(KEY, b"\x58" * 32, b"\xc0" * 32) == expected
    with pytest.raises(ValueError):
        client_proof_signed_bytes(KEY, b"\x58" * 32, b"\xc0" * 31)


# -- malformed ------------------------------------------------------------------------

EXACT_SIZES: list[tuple[Callable[[bytes], object], int]] = [
    (decode_establish_intro, 100),
    (decode_intro_established, 0),
    (decode_introduce1, 400),
    (decode_introduce_ack, 1),
    (decode_establish_rendezvous, 32),
    (decode_rendezvous_established, 0),
    (decode_rendezvous1, 96),
    (decode_rendezvous2, 64),
    (decode_introduce_plaintext, 320),
]


@pytest.mark.parametrize(("decode", "size"), EXACT_SIZES)
def test_any_other_length_is_a_decode_error(decode: Callable[[bytes], object], size: int) -> None:
    for wrong in {w for w in (0, 1, size - 1, size + 1, size + 64) if w >= 0 and w != size}:
        with pytest.raises(DecodeError):
            decode(b"\x01" * wrong)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1001, 1), (1, 0), (1, 10001), (65535, 1)])
def test_establish_intro_rate_and_burst_out_of_range(rate: int, burst: int) -> None:
    raw = KEY + rate.to_bytes(2, "big") + burst.to_bytes(2, "big") + bytes(64)
    with pytest.raises(DecodeError, match=r"rate|burst"):
        decode_establish_intro(raw)
    with pytest.raises(ValueError):
        encode_establish_intro(EstablishIntro(KEY, rate, burst, bytes(64)))


def test_introduce_ack_unknown_status() -> None:
    with pytest.raises(DecodeError, match="status 3"):
        decode_introduce_ack(b"\x03")


def _plaintext(middle: str) -> bytes:
    head = "11" * 32 + "22" * 32 + "33" * 32
    raw = bytes.fromhex(head + middle)
    return raw + bytes(320 - len(raw))


@pytest.mark.parametrize(
    ("middle", "match"),
    [
        ("00", "0 endpoints"),
        ("05" + "040a0102030001" * 5, "5 endpoints"),
        ("01050a010203000100", "family"),
        ("01040a010203000000", "port 0"),
        ("0106" + "00" * 10 + "ffff" + "0a010203" + "0001" + "00", "IPv4-mapped"),
        ("01040a010203000102", "proof flag 2"),
        ("01040a01020300010001", "padding"),
        ("01040a010203000101" + "44" * 96 + "07", "padding"),
    ],
)
def test_introduce_plaintext_malformed(middle: str, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_introduce_plaintext(_plaintext(middle))


def test_introduce_plaintext_padding_checked_to_the_last_byte() -> None:
    raw = bytearray(_plaintext("01040a010203000100"))
    decode_introduce_plaintext(bytes(raw))
    raw[-1] = 1
    with pytest.raises(DecodeError, match="padding"):
        decode_introduce_plaintext(bytes(raw))


def test_encoders_refuse_what_the_format_cannot_carry() -> None:
    endpoint = (Endpoint("10.0.0.1", 1),)
    cases: list[Callable[[], object]] = [
        lambda: encode_introduce1(Introduce1(KEY, KEY, bytes(335))),
        lambda: encode_establish_rendezvous(EstablishRendezvous(bytes(31))),
        lambda: encode_rendezvous1(Rendezvous1(bytes(32), bytes(63))),
        lambda: encode_rendezvous2(Rendezvous2(bytes(65))),
        lambda: encode_establish_intro(EstablishIntro(KEY, 1, 1, bytes(63))),
        lambda: encode_introduce_plaintext(IntroducePlaintext(KEY, KEY, KEY, (), None, None)),
        lambda: encode_introduce_plaintext(
            IntroducePlaintext(KEY, KEY, KEY, endpoint * 5, None, None)
        ),
        lambda: encode_introduce_plaintext(IntroducePlaintext(KEY, KEY, KEY, endpoint, KEY, None)),
        lambda: encode_introduce_plaintext(
            IntroducePlaintext(KEY, KEY, KEY, endpoint, KEY, bytes(63))
        ),
        lambda: encode_introduce_plaintext(
            IntroducePlaintext(KEY, KEY, KEY, (Endpoint("10.0.0.1", 0),), None, None)
        ),
    ]
    for case in cases:
        with pytest.raises(ValueError):
            case()


# -- round trips ----------------------------------------------------------------------

b32 = st.binary(min_size=32, max_size=32)
b64 = st.binary(min_size=64, max_size=64)


def _v6_ok(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # An IPv4-mapped address travels only as family 4, so it has no IPv6 encoding.
    return isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is None


endpoints = st.builds(
    Endpoint,
    st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).filter(_v6_ok).map(str),
    ),
    st.integers(1, 65535),
)
proofs = st.one_of(st.just((None, None)), st.tuples(b32, b64))
plaintexts = st.builds(
    lambda cookie, identity, onion, eps, proof: IntroducePlaintext(
        cookie, identity, onion, tuple(eps), proof[0], proof[1]
    ),
    b32,
    b32,
    b32,
    st.lists(endpoints, min_size=1, max_size=4),
    proofs,
)

ROUND_TRIPS: list[tuple[st.SearchStrategy[Any], Callable[[Any], bytes], Callable[[bytes], Any]]] = [
    (
        st.builds(EstablishIntro, b32, st.integers(1, 1000), st.integers(1, 10000), b64),
        encode_establish_intro,
        decode_establish_intro,
    ),
    (
        st.builds(Introduce1, b32, b32, st.binary(min_size=336, max_size=336)),
        encode_introduce1,
        decode_introduce1,
    ),
    (
        st.builds(IntroduceAck, st.sampled_from(IntroduceStatus)),
        encode_introduce_ack,
        decode_introduce_ack,
    ),
    (st.builds(EstablishRendezvous, b32), encode_establish_rendezvous, decode_establish_rendezvous),
    (st.builds(Rendezvous1, b32, b64), encode_rendezvous1, decode_rendezvous1),
    (st.builds(Rendezvous2, b64), encode_rendezvous2, decode_rendezvous2),
    (plaintexts, encode_introduce_plaintext, decode_introduce_plaintext),
]


@pytest.mark.parametrize(("values", "encode", "decode"), ROUND_TRIPS)
@given(data=st.data())
def test_round_trip(
    values: st.SearchStrategy[Any],
    encode: Callable[[Any], bytes],
    decode: Callable[[bytes], Any],
    data: st.DataObject,
) -> None:
    message = data.draw(values)
    raw = encode(message)
    assert decode(raw) == message
    assert encode(decode(raw)) == raw


CODECS: list[tuple[Callable[[bytes], Any], Callable[[Any], bytes]]] = [
    (decode_establish_intro, encode_establish_intro),
    (decode_intro_established, encode_intro_established),
    (decode_introduce1, encode_introduce1),
    (decode_introduce_ack, encode_introduce_ack),
    (decode_establish_rendezvous, encode_establish_rendezvous),
    (decode_rendezvous_established, encode_rendezvous_established),
    (decode_rendezvous1, encode_rendezvous1),
    (decode_rendezvous2, encode_rendezvous2),
    (decode_introduce_plaintext, encode_introduce_plaintext),
]


@pytest.mark.parametrize(("decode", "encode"), CODECS)
@given(
    raw=st.one_of(
        st.binary(max_size=420),
        st.sampled_from([0, 1, 32, 64, 96, 100, 320, 400]).flatmap(
            lambda n: st.binary(min_size=n, max_size=n)
        ),
    )
)
def test_any_bytes_decode_canonically_or_raise_decode_error(
    decode: Callable[[bytes], Any], encode: Callable[[Any], bytes], raw: bytes
) -> None:
    """Nothing but DecodeError escapes, and what decodes has exactly this encoding."""
    try:
        message = decode(raw)
    except DecodeError:
        return
    assert encode(message) == raw


@given(plaintext=plaintexts, flip=st.integers(0, 319), bit=st.integers(0, 7))
def test_a_flipped_plaintext_bit_decodes_to_another_canonical_value_or_fails(
    plaintext: IntroducePlaintext, flip: int, bit: int
) -> None:
    raw = bytearray(encode_introduce_plaintext(plaintext))
    raw[flip] ^= 1 << bit
    try:
        other = decode_introduce_plaintext(bytes(raw))
    except DecodeError:
        return
    assert other != plaintext
    assert encode_introduce_plaintext(other) == bytes(raw)
