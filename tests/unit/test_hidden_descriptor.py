"""Hidden-service descriptor bodies (docs/hidden.md sections 2-3): golden bytes of the
plaintext codecs, time periods, public and allow-list round trips, what a body does
not contain, and that every malformed or tampered body fails with the right error."""

from __future__ import annotations

import random as stdlib_random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vx6.core.hidden.alias import encode_alias
from vx6.core.hidden.descriptor import (
    blinded_key_for,
    open_descriptor_body,
    seal_descriptor_body,
    time_period,
)
from vx6.crypto.hidden import AliasKey, ed25519_seed_to_x25519_private
from vx6.crypto.hidden_desc import find_cookie, open_outer, seal_outer, subcredential
from vx6.crypto.keys import Identity
from vx6.errors import CryptoError, DecodeError, NotAuthorized, UsageError
from vx6.wire.hidden_desc import (
    DESCRIPTOR_BODY_SIZE,
    INNER_SIZE,
    MAX_DESCRIPTOR_CLIENTS,
    OUTER_SIZE,
    SALT_LEN,
    InnerPlaintext,
    IntroEntry,
    OuterPlaintext,
    decode_inner,
    decode_outer,
    encode_inner,
    encode_outer,
)

ALIAS = AliasKey(b"\xa1" * 32)
PERIOD = 20789
REVISION = 1_796_212_800_000
INTROS = InnerPlaintext(
    (
        IntroEntry(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32),
        IntroEntry(b"\x04" * 32, b"\x05" * 32, b"\x06" * 32),
    ),
    proof_required=True,
)
CLIENT_SEEDS = [bytes([0xC0 + i]) * 32 for i in range(13)]
CLIENTS = [Identity(s).public for s in CLIENT_SEEDS]
intro_entries = st.builds(IntroEntry, *[st.binary(min_size=32, max_size=32) for _ in range(3)])
inners = st.builds(
    InnerPlaintext, st.lists(intro_entries, min_size=1, max_size=3).map(tuple), st.booleans()
)


def _rng(seed: int = 1) -> stdlib_random.Random:
    return stdlib_random.Random(seed)


def _seal(clients: list[bytes], seed: int = 1, **kw: object) -> bytes:
    args: dict[str, object] = {
        "alias": ALIAS,
        "period": PERIOD,
        "revision": REVISION,
        "contents": INTROS,
        "clients": clients,
        "random": _rng(seed).randbytes,
    }
    args.update(kw)
    return seal_descriptor_body(**args)  # type: ignore[arg-type]


def test_sizes() -> None:
    assert (DESCRIPTOR_BODY_SIZE, OUTER_SIZE, INNER_SIZE, SALT_LEN) == (896, 864, 320, 16)


def test_inner_golden_bytes() -> None:
    encoded = encode_inner(INTROS)
    expected = bytes.fromhex("0201") + b"".join(bytes([i]) * 32 for i in range(1, 7))
    assert encoded == expected + bytes(INNER_SIZE - 2 - 192)
    assert decode_inner(encoded) == INTROS
    one = InnerPlaintext((IntroEntry(b"\x07" * 32, b"\x08" * 32, b"\x09" * 32),), False)
    assert encode_inner(one)[:2] == bytes.fromhex("0100")


def test_outer_golden_bytes() -> None:
    entries = tuple(bytes([0x10 + i]) * 40 for i in range(12))
    outer = OuterPlaintext(True, b"\xee" * 32, entries, b"\xdd" * 336)
    encoded = encode_outer(outer)
    expected = bytes.fromhex("0101") + b"\xee" * 32 + b"".join(entries) + b"\xdd" * 336
    assert encoded == expected + bytes(14)
    assert len(encoded) == OUTER_SIZE
    assert decode_outer(encoded) == outer
    public = encode_outer(OuterPlaintext(False, b"\xee" * 32, entries, b"\xdd" * 336))
    assert public[:2] == bytes.fromhex("0100")


@given(inners)
def test_inner_round_trip(inner: InnerPlaintext) -> None:
    assert decode_inner(encode_inner(inner)) == inner


@given(st.binary(min_size=INNER_SIZE, max_size=INNER_SIZE))
def test_inner_decoder_raises_only_decode_error(data: bytes) -> None:
    try:
        inner = decode_inner(data)
    except DecodeError:
        return
    assert encode_inner(inner) == data  # one encoding per value


@pytest.mark.parametrize(
    "patch",
    [
        (0, 0),  # no intro
        (0, 4),  # more than MAX_INTROS
        (1, 2),  # unknown flag bit
        (1, 0x81),
        (2 + 2 * 96, 1),  # padding right after the last intro
        (INNER_SIZE - 1, 1),  # padding at the end
    ],
)
def test_inner_decoder_refusals(patch: tuple[int, int]) -> None:
    data = bytearray(encode_inner(INTROS))
    data[patch[0]] = patch[1]
    with pytest.raises(DecodeError):
        decode_inner(bytes(data))


def test_decoders_refuse_wrong_sizes() -> None:
    for size in (0, INNER_SIZE - 1, INNER_SIZE + 1):
        with pytest.raises(DecodeError):
            decode_inner(bytes(size))
    for size in (0, OUTER_SIZE - 1, OUTER_SIZE + 1):
        with pytest.raises(DecodeError):
            decode_outer(bytes(size))


@pytest.mark.parametrize(
    "patch", [(0, 0), (0, 2), (1, 2), (OUTER_SIZE - 14, 1), (OUTER_SIZE - 1, 9)]
)
def test_outer_decoder_refusals(patch: tuple[int, int]) -> None:
    outer = OuterPlaintext(False, b"\xee" * 32, (b"\x00" * 40,) * 12, b"\xdd" * 336)
    data = bytearray(encode_outer(outer))
    data[patch[0]] = patch[1]
    with pytest.raises(DecodeError):
        decode_outer(bytes(data))


def test_encoders_refuse_values_without_an_encoding() -> None:
    with pytest.raises(ValueError):
        InnerPlaintext((), False)
    with pytest.raises(ValueError):
        InnerPlaintext(INTROS.intros * 2, False)
    with pytest.raises(ValueError):
        IntroEntry(b"\x01" * 31, b"\x02" * 32, b"\x03" * 32)
    with pytest.raises(ValueError):
        OuterPlaintext(False, b"\xee" * 32, (b"\x00" * 40,) * 11, b"\xdd" * 336)


def test_time_period() -> None:
    noon = 1_796_212_800  # 2026-12-02 12:00:00 UTC
    assert time_period(noon) == 20789
    assert time_period(noon - 0.5) == 20788
    assert time_period(noon + 86399.9) == 20789
    assert time_period(43200) == 0


def test_blinded_key_for_matches_the_alias_key() -> None:
    assert blinded_key_for(ALIAS.public, PERIOD) == ALIAS.blinded(PERIOD, 86400).public


def test_public_round_trip() -> None:
    body = _seal([])
    assert len(body) == DESCRIPTOR_BODY_SIZE
    assert open_descriptor_body(body, ALIAS.public, PERIOD, REVISION, None) == INTROS
    assert open_descriptor_body(body, ALIAS.public, PERIOD, REVISION, CLIENT_SEEDS[0]) == INTROS
    assert _seal([], alias=ALIAS.public) == body  # the public key alone seals it


@pytest.mark.parametrize("count", [1, 2, 5, MAX_DESCRIPTOR_CLIENTS])
def test_allow_list_round_trip(count: int) -> None:
    body = _seal(CLIENTS[:count], seed=count)
    assert len(body) == DESCRIPTOR_BODY_SIZE
    for seed in CLIENT_SEEDS[:count]:
        assert open_descriptor_body(body, ALIAS.public, PERIOD, REVISION, seed) == INTROS
    for seed in (CLIENT_SEEDS[12], b"\x99" * 32):
        with pytest.raises(NotAuthorized):
            open_descriptor_body(body, ALIAS.public, PERIOD, REVISION, seed)
    with pytest.raises(NotAuthorized):
        open_descriptor_body(body, ALIAS.public, PERIOD, REVISION, None)


def test_thirteen_clients_are_refused() -> None:
    with pytest.raises(UsageError):
        _seal(CLIENTS[:13])
    with pytest.raises(UsageError):
        _seal([bytes(32)])  # not a valid client key


def _slots_of_client(body: bytes, client_seed: bytes) -> list[int]:
    blinded = blinded_key_for(ALIAS.public, PERIOD)
    subcred = subcredential(ALIAS.public, blinded)
    salt, outer_ct = body[:SALT_LEN], body[SALT_LEN:]
    outer = decode_outer(open_outer(blinded, subcred, REVISION, salt, outer_ct))
    client_x = ed25519_seed_to_x25519_private(client_seed)
    return [
        i
        for i, entry in enumerate(outer.entries)
        if find_cookie([entry], client_x, outer.ephemeral, subcred) is not None
    ]


def test_listed_clients_land_in_random_slots() -> None:
    slots: set[int] = set()
    for seed in range(12):
        found = _slots_of_client(_seal(CLIENTS[:2], seed=seed), CLIENT_SEEDS[0])
        assert len(found) == 1
        slots.add(found[0])
    assert len(slots) > 3  # not a fixed slot (12 draws, seeded: deterministic)


@settings(max_examples=25)
@given(st.binary(min_size=32, max_size=32), st.integers(0, 12), st.integers(0, 2**32))
def test_a_body_holds_neither_the_alias_key_nor_the_alias(
    seed: bytes, clients: int, rng_seed: int
) -> None:
    alias = AliasKey(seed)
    body = _seal(CLIENTS[:clients], seed=rng_seed, alias=alias)
    assert alias.public not in body
    assert encode_alias(alias.public).encode() not in body
    assert encode_alias(alias.public).upper().encode() not in body
    for client in CLIENTS[:clients]:
        assert client not in body


BODY_PUBLIC = _seal([])
BODY_LISTED = _seal(CLIENTS[:3])


@settings(max_examples=150)
@given(st.booleans(), st.integers(0, DESCRIPTOR_BODY_SIZE - 1), st.integers(1, 255))
def test_tampering_any_byte_fails(listed: bool, index: int, mask: int) -> None:
    body = bytearray(BODY_LISTED if listed else BODY_PUBLIC)
    body[index] ^= mask
    with pytest.raises((CryptoError, DecodeError)):
        open_descriptor_body(bytes(body), ALIAS.public, PERIOD, REVISION, CLIENT_SEEDS[0])


def test_wrong_size_is_a_decode_error() -> None:
    for body in (BODY_PUBLIC[:-1], BODY_PUBLIC + b"\x00", b""):
        with pytest.raises(DecodeError):
            open_descriptor_body(body, ALIAS.public, PERIOD, REVISION, None)


def test_wrong_period_revision_or_alias_fails() -> None:
    for period, revision, alias in (
        (PERIOD + 1, REVISION, ALIAS.public),
        (PERIOD, REVISION + 1, ALIAS.public),
        (PERIOD, REVISION, AliasKey(b"\xa2" * 32).public),
    ):
        with pytest.raises(CryptoError):
            open_descriptor_body(BODY_LISTED, alias, period, revision, CLIENT_SEEDS[0])


def test_bad_padding_under_a_valid_layer_is_a_decode_error() -> None:
    # A service that seals a malformed plaintext: the layer opens, the codec refuses.
    blinded = blinded_key_for(ALIAS.public, PERIOD)
    subcred = subcredential(ALIAS.public, blinded)
    salt = b"\x5a" * SALT_LEN
    outer = bytearray(
        encode_outer(OuterPlaintext(False, b"\xee" * 32, (bytes(40),) * 12, bytes(336)))
    )
    outer[-1] = 1
    body = salt + seal_outer(blinded, subcred, REVISION, salt, bytes(outer))
    with pytest.raises(DecodeError):
        open_descriptor_body(body, ALIAS.public, PERIOD, REVISION, None)
