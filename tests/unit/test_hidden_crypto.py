"""Hidden-service cryptography (docs/hidden.md sections 2, 4, 5): Tor's blinding
vectors, blinded signatures under the standard verifier, the Ed25519 -> X25519 forms,
client authorization, the INTRODUCE1 cipher, the rendezvous ntor and the e2e layer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vx6.core.hidden.descriptor import time_period
from vx6.crypto.hidden import (
    TOR_BLIND_DOMAIN,
    TOR_PREFIX_DOMAIN,
    AliasKey,
    blind_expanded,
    blind_public,
    blinding_factor,
    clamp_scalar,
    ed25519_public_to_x25519,
    ed25519_seed_to_x25519_private,
    expand_seed,
    valid_ed25519_point,
)
from vx6.crypto.hidden_desc import (
    HS_NTOR_PROTOID,
    client_auth_entry,
    e2e_crypto,
    find_cookie,
    hs_ntor_client_finish,
    hs_ntor_service,
    open_introduce,
    seal_introduce,
    subcredential,
)
from vx6.crypto.keys import Identity, StaticKey, verify
from vx6.crypto.onion import HOP_KEY_MATERIAL
from vx6.errors import CryptoError

VECTORS = json.loads((Path(__file__).parent / "vectors" / "ed25519_blinding_tor.json").read_text())
CASES = VECTORS["cases"]
DAY = 86400
seeds = st.binary(min_size=32, max_size=32)


def _tor_tweak(param: bytes) -> bytes:
    # How the vectors' blinding parameter becomes the factor h (see the JSON's note).
    return clamp_scalar(hashlib.sha512(VECTORS["tweak_domain"].encode() + param).digest()[:32])


@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
def test_tor_key_expansion_and_x25519_vectors(case: dict[str, str]) -> None:
    seed = bytes.fromhex(case["secret_key"])
    assert expand_seed(seed).hex() == case["expanded_secret_key"]
    assert AliasKey(seed).public.hex() == case["public_key"]
    x25519 = ed25519_public_to_x25519(bytes.fromhex(case["public_key"]))
    assert x25519.hex() == case["curve25519_public_key"]
    assert StaticKey(ed25519_seed_to_x25519_private(seed)).public == x25519


@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
def test_tor_blinding_vectors(case: dict[str, str]) -> None:
    h = _tor_tweak(bytes.fromhex(case["blinding_param"]))
    expanded = bytes.fromhex(case["expanded_secret_key"])
    blinded = blind_expanded(expanded, h, prefix_domain=TOR_PREFIX_DOMAIN)
    assert blinded.expanded().hex() == case["blinded_secret_key"]
    assert blinded.public.hex() == case["blinded_public_key"]
    assert blind_public(bytes.fromhex(case["public_key"]), h).hex() == case["blinded_public_key"]
    message = b"signed by a Tor-blinded key"
    assert verify(blinded.public, message, blinded.sign(message))


HS_VECTOR = json.loads((Path(__file__).parent / "vectors" / "hs_blinding_tor.json").read_text())


def test_tor_rend_spec_blinding_end_to_end() -> None:
    v = HS_VECTOR
    assert time_period(v["instant_unix"]) == v["time_period"]
    public = bytes.fromhex(v["public_key"])
    h = blinding_factor(public, v["time_period"], v["period_length"], domain=TOR_BLIND_DOMAIN)
    assert h == clamp_scalar(bytes.fromhex(v["blinding_param_unclamped"]))
    assert blind_public(public, h).hex() == v["blinded_public_key"]
    blinded = blind_expanded(
        bytes.fromhex(v["expanded_secret_key"]), h, prefix_domain=TOR_PREFIX_DOMAIN
    )
    assert blinded.expanded().hex() == v["blinded_secret_key"]
    assert blinded.public.hex() == v["blinded_public_key"]


def test_vx6_blinding_is_pinned() -> None:
    # Our own domain strings: a regression pin (RFC 8032's seed 00..1f).
    alias = AliasKey(bytes(range(32)))
    assert alias.public.hex() == "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    h = blinding_factor(alias.public, 20000, DAY)
    assert h.hex() == "08210b736b6e31870881a4d7ff4537380cb56d54518be92313be1ae658abcc4e"
    assert (
        alias.blinded(20000, DAY).public.hex()
        == "792c0c43e0ff4df8bbc1170e7b1cec96b1cddf95ad16f276b52c8f8cbb43b8ac"
    )


@settings(max_examples=40)
@given(seeds, st.integers(0, 2**40), st.integers(1, 2**20), st.binary(max_size=200))
def test_blinded_signatures_verify_with_the_standard_verifier(
    seed: bytes, period: int, gap: int, message: bytes
) -> None:
    alias = AliasKey(seed)
    assert alias.public == Identity(seed).public
    key = alias.blinded(period, DAY)
    assert key.public == blind_public(alias.public, blinding_factor(alias.public, period, DAY))
    signature = key.sign(message)
    assert len(signature) == 64
    assert verify(key.public, message, signature)
    assert not verify(key.public, message + b"x", signature)
    assert not verify(alias.public, message, signature)
    assert not verify(alias.blinded(period + gap, DAY).public, message, signature)


@settings(max_examples=40)
@given(seeds, st.integers(0, 2**40), st.integers(1, 2**20))
def test_blinded_keys_of_two_periods_are_unlinked_points(
    seed: bytes, period: int, gap: int
) -> None:
    alias = AliasKey(seed).public
    first = blind_public(alias, blinding_factor(alias, period, DAY))
    second = blind_public(alias, blinding_factor(alias, period + gap, DAY))
    assert first != second
    for blinded in (first, second):
        assert valid_ed25519_point(blinded)
        assert blinded != alias and alias not in first + second


@given(seeds, st.integers(0, 2**40))
def test_blinding_factor_is_clamped(seed: bytes, period: int) -> None:
    h = blinding_factor(AliasKey(seed).public, period, DAY)
    assert h[0] & 7 == 0 and h[31] & 0xC0 == 0x40


def test_blinding_refuses_invalid_points() -> None:
    h = blinding_factor(AliasKey(bytes(32)).public, 1, DAY)
    for bad in (bytes(32), bytes([1]) + bytes(31), b"\xff" * 32, bytes(31)):
        with pytest.raises(CryptoError):
            blind_public(bad, h)
        with pytest.raises(CryptoError):
            ed25519_public_to_x25519(bad)
    with pytest.raises(CryptoError):
        blinding_factor(bytes(31), 1, DAY)


@settings(max_examples=30)
@given(seeds)
def test_x25519_forms_of_an_identity_agree(seed: bytes) -> None:
    public = Identity(seed).public
    assert StaticKey(ed25519_seed_to_x25519_private(seed)).public == ed25519_public_to_x25519(
        public
    )


def _subcred() -> bytes:
    alias = AliasKey(b"\x11" * 32)
    return subcredential(alias.public, alias.blinded(7, DAY).public)


def test_client_auth_entry_found_only_by_its_client() -> None:
    subcred = _subcred()
    e_private = b"\x22" * 32
    ephemeral = StaticKey(e_private).public
    cookie = b"\x33" * 32
    listed, other = b"\x44" * 32, b"\x55" * 32
    listed_x = ed25519_public_to_x25519(Identity(listed).public)
    entry = client_auth_entry(e_private, ephemeral, listed_x, subcred, cookie)
    assert len(entry) == 40 and cookie not in entry
    entries = [b"\x66" * 40, entry, b"\x77" * 40]
    assert (
        find_cookie(entries, ed25519_seed_to_x25519_private(listed), ephemeral, subcred) == cookie
    )
    assert find_cookie(entries, ed25519_seed_to_x25519_private(other), ephemeral, subcred) is None
    assert (
        find_cookie(entries, ed25519_seed_to_x25519_private(listed), ephemeral, bytes(32)) is None
    )
    with pytest.raises(CryptoError):
        client_auth_entry(e_private, bytes(32), listed_x, subcred, cookie)


AUTH_KEY = Identity(b"\x01" * 32).public
ENC = StaticKey(b"\x02" * 32)
X_PRIVATE = b"\x03" * 32
PLAINTEXT = bytes(range(256)) + bytes(64)


def test_introduce_round_trip() -> None:
    subcred = _subcred()
    x_public, ciphertext = seal_introduce(X_PRIVATE, ENC.public, AUTH_KEY, subcred, PLAINTEXT)
    assert x_public == StaticKey(X_PRIVATE).public
    assert len(ciphertext) == len(PLAINTEXT) + 16
    assert open_introduce(ENC.private_bytes(), AUTH_KEY, x_public, ciphertext, subcred) == PLAINTEXT


@settings(max_examples=50)
@given(st.data())
def test_introduce_tampering_fails(data: st.DataObject) -> None:
    subcred = _subcred()
    x_public, ciphertext = seal_introduce(X_PRIVATE, ENC.public, AUTH_KEY, subcred, PLAINTEXT)
    args = [ENC.private_bytes(), AUTH_KEY, x_public, ciphertext, subcred]
    # Everything but the service's own private key (X25519 ignores its clamped bits).
    which = data.draw(st.integers(1, 4))
    value = bytearray(args[which])
    value[data.draw(st.integers(0, len(value) - 1))] ^= data.draw(st.integers(1, 255))
    args[which] = bytes(value)
    with pytest.raises(CryptoError):
        open_introduce(*args)


def test_hs_ntor_both_ends_derive_the_same_material() -> None:
    x_public = StaticKey(X_PRIVATE).public
    reply, service_material = hs_ntor_service(AUTH_KEY, ENC, x_public, b"\x04" * 32)
    assert len(reply) == 64 and len(service_material) == HOP_KEY_MATERIAL
    client_material = hs_ntor_client_finish(AUTH_KEY, ENC.public, X_PRIVATE, reply)
    assert client_material == service_material
    assert HS_NTOR_PROTOID == b"vx6-hs-ntor-curve25519-sha256-1"
    # Only the enc key's holder answers: another key, or a forged AUTH, is refused.
    other_reply, _ = hs_ntor_service(AUTH_KEY, StaticKey(b"\x05" * 32), x_public, b"\x04" * 32)
    with pytest.raises(CryptoError):
        hs_ntor_client_finish(AUTH_KEY, ENC.public, X_PRIVATE, other_reply)
    with pytest.raises(CryptoError):
        hs_ntor_client_finish(AUTH_KEY, ENC.public, X_PRIVATE, reply[:-1] + b"\x00")
    with pytest.raises(CryptoError):
        hs_ntor_client_finish(Identity(b"\x06" * 32).public, ENC.public, X_PRIVATE, reply)


def _seal(direction: object, plaintext: bytes) -> bytearray:
    buf = bytearray(plaintext + bytes(16))
    direction.seal_in_place(memoryview(buf))  # type: ignore[attr-defined]
    return buf


def _open(direction: object, ciphertext: bytearray) -> bytes:
    out = bytearray(len(ciphertext) - 16)
    direction.open_into(memoryview(ciphertext), memoryview(out))  # type: ignore[attr-defined]
    return bytes(out)


def test_e2e_directions_match() -> None:
    _reply, material = hs_ntor_service(AUTH_KEY, ENC, StaticKey(X_PRIVATE).public, b"\x04" * 32)
    client = e2e_crypto(material, client=True)
    service = e2e_crypto(material, client=False)
    assert client.binding == service.binding
    for n in range(3):
        message = bytes([n]) * 100
        assert _open(service.backward, _seal(client.forward, message)) == message
        assert _open(client.backward, _seal(service.forward, message)) == message
    # A cell sealed for one direction does not open in the other.
    with pytest.raises(CryptoError):
        _open(service.forward, _seal(client.forward, b"x" * 100))
