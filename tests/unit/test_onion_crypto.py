"""ntor handshake and onion layers (crypto/onion.py): Tor's published vector, an
independent step-by-step re-derivation, golden values, and tampering/replay/reorder."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vx6.crypto import onion
from vx6.crypto.keys import StaticKey, node_id
from vx6.errors import CryptoError
from vx6.wire.cells import BODY_SIZE

VECTOR = json.loads((Path(__file__).parent / "vectors" / "ntor_arti.json").read_text())


def _v(name: str) -> bytes:
    return bytes.fromhex(VECTOR[name])


def _key(seed: int) -> bytes:
    return hashlib.sha256(b"test-key" + bytes([seed])).digest()


# --- the published Tor vector -------------------------------------------------------


def test_tor_published_vector_client_and_server() -> None:
    assert StaticKey(_v("b_private")).public == _v("b_public")
    state, onionskin = onion.ntor_client_start(
        _v("id"), _v("b_public"), _v("x_private"), protoid=onion.TOR_PROTOID, id_len=20
    )
    assert onionskin == _v("client_handshake")
    reply, server_keys = onion.ntor_server(
        onionskin,
        _v("id"),
        [StaticKey(_v("b_private"))],
        _v("y_private"),
        key_len=72,
        protoid=onion.TOR_PROTOID,
    )
    assert reply == _v("server_handshake")
    assert server_keys == _v("keys")
    assert onion.ntor_client_finish(state, reply, key_len=72) == _v("keys")


def test_hkdf_expand_rfc5869_case_1() -> None:
    ikm = b"\x0b" * 22
    salt = bytes(range(13))
    info = bytes(range(0xF0, 0xFA))
    prk = hmac.digest(salt, ikm, "sha256")
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = onion.hkdf_expand(prk, info, 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


# --- VX6's own parameters: re-derivation and golden values ---------------------------

RELAY_IDENTITY = b"\x11" * 32
B_PRIV, X_PRIV, Y_PRIV = _key(1), _key(2), _key(3)


def _handshake() -> tuple[bytes, bytes, bytes]:
    relay_id = node_id(RELAY_IDENTITY)
    b = StaticKey(B_PRIV)
    state, skin = onion.ntor_client_start(relay_id, b.public, X_PRIV)
    reply, server_keys = onion.ntor_server(skin, relay_id, [b], Y_PRIV)
    client_keys = onion.ntor_client_finish(state, reply)
    assert client_keys == server_keys
    return skin, reply, client_keys


def test_vx6_handshake_matches_independent_derivation() -> None:
    skin, reply, keys = _handshake()
    relay_id = node_id(RELAY_IDENTITY)
    b, x, y = StaticKey(B_PRIV), StaticKey(X_PRIV), StaticKey(Y_PRIV)
    assert skin == relay_id + b.public + x.public
    protoid = b"vx6-ntor-curve25519-sha256-1"
    secret = x.dh(y.public) + x.dh(b.public) + relay_id + b.public + x.public + y.public + protoid

    def mac(tag: bytes, msg: bytes) -> bytes:
        return hmac.new(protoid + tag, msg, hashlib.sha256).digest()

    key_seed = mac(b":key_extract", secret)
    verify = mac(b":verify", secret)
    auth = mac(b":mac", verify + relay_id + b.public + y.public + x.public + protoid + b"Server")
    assert reply == y.public + auth
    info = protoid + b":key_expand"
    t1 = hmac.new(key_seed, info + b"\x01", hashlib.sha256).digest()
    t2 = hmac.new(key_seed, t1 + info + b"\x02", hashlib.sha256).digest()
    t3 = hmac.new(key_seed, t2 + info + b"\x03", hashlib.sha256).digest()
    t4 = hmac.new(key_seed, t3 + info + b"\x04", hashlib.sha256).digest()
    assert keys == (t1 + t2 + t3 + t4)[:120]
    hop = onion.HopKeys.from_material(keys)
    assert (hop.forward_key, hop.backward_key) == (keys[:32], keys[32:64])
    assert (hop.forward_nonce, hop.backward_nonce) == (keys[64:76], keys[76:88])
    assert hop.binding == keys[88:120]


def test_golden_values_vx6() -> None:
    _, reply, keys = _handshake()
    # The first 88 bytes (layer keys and nonces) predate the 32-byte circuit binding,
    # which HKDF appends without changing them.
    assert hashlib.sha256(reply + keys[:88]).hexdigest() == GOLDEN_VX6_DIGEST
    assert hashlib.sha256(reply + keys).hexdigest() == GOLDEN_VX6_BINDING_DIGEST


GOLDEN_VX6_DIGEST = "31566ce0923bc3d47a0020a6a41d17675973d84ad9e087f64590fe2815ab9c6c"
GOLDEN_VX6_BINDING_DIGEST = "d1ef934248a264fd1f1908c1b37ecb5d732f81ea958df421a3346dca69e31750"


# --- handshake failures ---------------------------------------------------------------


def test_tampered_reply_fails_auth() -> None:
    relay_id = node_id(RELAY_IDENTITY)
    b = StaticKey(B_PRIV)
    state, skin = onion.ntor_client_start(relay_id, b.public, X_PRIV)
    reply, _ = onion.ntor_server(skin, relay_id, [b], Y_PRIV)
    for i in (0, 40, 63):
        bad = bytearray(reply)
        bad[i] ^= 1
        with pytest.raises(CryptoError):
            onion.ntor_client_finish(state, bytes(bad))
    with pytest.raises(CryptoError):
        onion.ntor_client_finish(state, reply[:-1])


def test_impostor_without_onion_key_fails() -> None:
    relay_id = node_id(RELAY_IDENTITY)
    real, impostor = StaticKey(B_PRIV), StaticKey(_key(9))
    state, skin = onion.ntor_client_start(relay_id, real.public, X_PRIV)
    with pytest.raises(CryptoError, match="onion key"):
        onion.ntor_server(skin, relay_id, [impostor], Y_PRIV)
    # An impostor that answers as if B were its own key gets AUTH wrong.
    forged = bytearray(skin)
    forged[32:64] = impostor.public
    reply, _ = onion.ntor_server(bytes(forged), relay_id, [impostor], Y_PRIV)
    with pytest.raises(CryptoError, match="AUTH"):
        onion.ntor_client_finish(state, reply)
    with pytest.raises(CryptoError, match="another relay"):
        onion.ntor_server(skin, node_id(b"\x22" * 32), [real], Y_PRIV)


def test_previous_onion_key_still_accepted() -> None:
    relay_id = node_id(RELAY_IDENTITY)
    old, new = StaticKey(B_PRIV), StaticKey(_key(7))
    state, skin = onion.ntor_client_start(relay_id, old.public, X_PRIV)
    reply, keys = onion.ntor_server(skin, relay_id, [new, old], Y_PRIV)
    assert onion.ntor_client_finish(state, reply) == keys


def test_degenerate_client_point_rejected() -> None:
    relay_id = node_id(RELAY_IDENTITY)
    b = StaticKey(B_PRIV)
    with pytest.raises(CryptoError):
        onion.ntor_server(relay_id + b.public + bytes(32), relay_id, [b], Y_PRIV)
    with pytest.raises(CryptoError):
        onion.ntor_server(b"short", relay_id, [b], Y_PRIV)


# --- layers ----------------------------------------------------------------------------


def _pairs(n: int) -> tuple[list[onion.HopCrypto], list[onion.HopCrypto]]:
    material = [
        onion.hkdf_expand(bytes([i]) * 32, b"test", onion.HOP_KEY_MATERIAL) for i in range(n)
    ]
    keys = [onion.HopKeys.from_material(m) for m in material]
    return [onion.HopCrypto(k) for k in keys], [onion.HopCrypto(k) for k in keys]


# Byte-string forms of the in-place layer operations (the node works on cell buffers).
def encrypt_layers(hops: list[onion.HopCrypto], payload: bytes) -> bytes:
    if len(payload) != onion.relay_plaintext_size(max(len(hops), 1)):
        raise CryptoError("payload size does not match the target hop")
    body = bytearray(BODY_SIZE)
    body[len(hops) : len(hops) + len(payload)] = payload
    onion.seal_layers(hops, memoryview(body))
    return bytes(body)


def decrypt_layers(hops: list[onion.HopCrypto], body: bytes) -> tuple[int, bytes]:
    index, message = onion.open_layers(hops, memoryview(bytearray(body)))
    return index, bytes(message)


def peel(hop: onion.HopCrypto, body: bytes, depth: int) -> tuple[bool, bytes]:
    out = bytearray(BODY_SIZE + 1)
    if onion.peel_into(hop, memoryview(body), depth, memoryview(out)):
        return True, bytes(out[1 : 1 + onion.relay_plaintext_size(depth)])
    return False, bytes(out[1:])


def add_layer(hop: onion.HopCrypto, body: bytes, depth: int, *, originated: bool) -> bytes:
    size = onion.relay_plaintext_size(depth)
    if len(body) != (size if originated else BODY_SIZE):
        raise CryptoError("body size does not match this hop")
    out = bytearray(BODY_SIZE)
    out[1 : 1 + size] = body[:size]
    onion.seal_layer(hop, memoryview(out), depth, originated=originated)
    return bytes(out)


def _payload(depth: int, marker: bytes = b"MARKER-plaintext") -> bytes:
    size = onion.relay_plaintext_size(depth)
    return (marker * (size // len(marker) + 1))[:size]


def _through(relays: list[onion.HopCrypto], body: bytes, target: int) -> bytes:
    """Forward a body through relays 1..target; returns what the target hop reads."""
    for depth, relay in enumerate(relays[:target], start=1):
        for_us, body = peel(relay, body, depth)
        assert len(body) == (onion.relay_plaintext_size(depth) if for_us else BODY_SIZE)
        if for_us:
            assert depth == target
            return body
        assert b"MARKER" not in body
    raise AssertionError("no hop took the cell")


@pytest.mark.parametrize("hops", range(1, onion.MAX_DEPTH + 1))
def test_layers_forward_and_backward_for_every_target(hops: int) -> None:
    client, relays = _pairs(hops)
    for target in range(1, hops + 1):
        for _ in range(3):  # counters move in step
            body = encrypt_layers(client[:target], _payload(target))
            assert len(body) == BODY_SIZE
            assert b"MARKER" not in body
            assert _through(relays, body, target) == _payload(target)
            back = add_layer(relays[target - 1], _payload(target), target, originated=True)
            for depth in range(target - 1, 0, -1):
                back = add_layer(relays[depth - 1], back, depth, originated=False)
            assert decrypt_layers(client, back) == (target - 1, _payload(target))


def test_tampering_at_any_hop_is_detected() -> None:
    for hop in range(1, 6):
        client, relays = _pairs(5)
        body = encrypt_layers(client, _payload(5))
        for depth in range(1, hop):
            _, body = peel(relays[depth - 1], body, depth)
        bad = bytearray(body)
        bad[onion.layer_size(hop) - 1] ^= 0x80  # in the tag
        bad[7] ^= 1
        with pytest.raises(CryptoError):
            peel(relays[hop - 1], bytes(bad), hop)


def test_zero_fill_is_ignored() -> None:
    client, relays = _pairs(3)
    _, body = peel(relays[0], encrypt_layers(client, _payload(3)), 1)
    filled = body[: onion.layer_size(2)] + b"\xff" * (BODY_SIZE - onion.layer_size(2))
    for_us, body = peel(relays[1], filled, 2)
    assert not for_us
    assert peel(relays[2], body, 3) == (True, _payload(3))


def test_replay_and_reorder_fail() -> None:
    client, relays = _pairs(2)
    first = encrypt_layers(client, _payload(2))
    second = encrypt_layers(client, _payload(2))
    peel(relays[0], first, 1)
    with pytest.raises(CryptoError):
        peel(relays[0], first, 1)  # replay
    client, relays = _pairs(2)
    first = encrypt_layers(client, _payload(2))
    second = encrypt_layers(client, _payload(2))
    with pytest.raises(CryptoError):
        peel(relays[0], second, 1)  # reorder
    back = add_layer(relays[0], _payload(1), 1, originated=True)
    assert decrypt_layers(client, back)[0] == 0
    with pytest.raises(CryptoError):
        decrypt_layers(client, back)
    del first


def test_wrong_sizes_rejected() -> None:
    client, relays = _pairs(2)
    with pytest.raises(CryptoError):
        encrypt_layers(client, b"x")
    with pytest.raises(CryptoError):
        encrypt_layers([], b"")
    with pytest.raises(CryptoError):
        peel(relays[0], b"short", 1)
    with pytest.raises(CryptoError):
        decrypt_layers(client, b"short")
    with pytest.raises(CryptoError):
        add_layer(relays[0], b"short", 1, originated=True)
    with pytest.raises(CryptoError):
        onion.HopKeys.from_material(b"short")


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.integers(1, onion.MAX_DEPTH))
def test_any_payload_round_trips(data: bytes, hops: int) -> None:
    client, relays = _pairs(hops)
    payload = (data + bytes(BODY_SIZE))[: onion.relay_plaintext_size(hops)]
    assert _through(relays, encrypt_layers(client, payload), hops) == payload


@settings(max_examples=25, deadline=None)
@given(st.integers(0, BODY_SIZE - 1), st.integers(1, 255))
def test_any_flip_in_the_authenticated_prefix_fails(position: int, flip: int) -> None:
    client, relays = _pairs(1)
    bad = bytearray(encrypt_layers(client, _payload(1)))
    bad[position] ^= flip
    with pytest.raises(CryptoError):
        peel(relays[0], bytes(bad), 1)


# Layered bodies as computed before the in-place rewrite of the layer code: the wire
# format of a RELAY body must not change with how the bytes are produced.
_GOLDEN_LAYERS = {
    1: ("fdb1b4b9a554e5ae29695148811890d5", "65dbe18591bd3039bbf6d0b86ee395a5"),
    3: ("3d818de5114abfa457394a18309640aa", "4b4d571f87953183a73dae313906fdc8"),
    6: ("3b57cb164bbb5223294a0ba85dba4c5f", "a93866aee2afb36df64ea205b3ddc604"),
}


@pytest.mark.parametrize("hops", sorted(_GOLDEN_LAYERS))
def test_layered_bodies_golden(hops: int) -> None:
    client, relays = _pairs(hops)
    forward = encrypt_layers(client, _payload(hops))
    back = add_layer(relays[hops - 1], _payload(hops), hops, originated=True)
    for depth in range(hops - 1, 0, -1):
        back = add_layer(relays[depth - 1], back, depth, originated=False)
    digests = (
        hashlib.sha256(forward).hexdigest()[:32],
        hashlib.sha256(back).hexdigest()[:32],
    )
    assert digests == _GOLDEN_LAYERS[hops]
