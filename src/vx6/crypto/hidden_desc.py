"""Hidden-service descriptor layers, client authorization, the INTRODUCE1 cipher and the
rendezvous handshake (docs/hidden.md sections 3-5).

Theory of operation. Every key here is derived, never stored: the descriptor's two
AEAD layers from the blinded key A', the subcredential (which needs the alias A), the
revision and the salt, the inner one also from the descriptor cookie; so a storer that
holds only A' reads nothing, and a client that has the alias but no cookie reads only
the outer layer. Each listed client finds the cookie in the entry whose id its own
X25519 exchange with the descriptor's ephemeral key reproduces; ids are compared in
constant time and every entry is looked at. INTRODUCE1 is sealed to the intro's enc
key by the client's fresh key X, which the rendezvous handshake (the circuits' ntor
with its own PROTOID) reuses, so the service's RENDEZVOUS1 answer proves it holds that
enc key. The end-to-end layer is one HopCrypto per end, the service's directions being
the client's swapped. Every failure is a CryptoError; nothing here keeps state.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vx6.crypto.keys import KEY_LEN, StaticKey
from vx6.crypto.onion import (
    HOP_KEY_MATERIAL,
    HopCrypto,
    HopKeys,
    ntor_client_finish,
    ntor_client_start,
    ntor_server,
)
from vx6.errors import CryptoError

HS_NTOR_PROTOID = b"vx6-hs-ntor-curve25519-sha256-1"
AEAD_TAG_LEN = 16
COOKIE_LEN = 32
CLIENT_ID_LEN = 8
CLIENT_ENTRY_LEN = CLIENT_ID_LEN + COOKIE_LEN
SUBCREDENTIAL_LEN = 32

_CREDENTIAL_DOMAIN = b"vx6-hs-credential\x00"
_SUBCREDENTIAL_DOMAIN = b"vx6-hs-subcredential\x00"
_OUTER_INFO = b"vx6-hs-desc-outer"
_INNER_INFO = b"vx6-hs-desc-inner"
_CLIENT_AUTH_INFO = b"vx6-hs-client-auth"
_INTRO_INFO = b"vx6-hs-intro-v1"
_KEY_NONCE_LEN = 44  # AES-256 key 32 | GCM nonce 12


def credential(alias_public: bytes) -> bytes:
    """H(b"vx6-hs-credential\\x00" | A)."""
    _check_len(alias_public, KEY_LEN, "an alias key")
    return hashlib.sha3_256(_CREDENTIAL_DOMAIN + alias_public).digest()


def subcredential(alias_public: bytes, blinded_public: bytes) -> bytes:
    """H(b"vx6-hs-subcredential\\x00" | credential | A')."""
    _check_len(blinded_public, KEY_LEN, "a blinded key")
    return hashlib.sha3_256(
        _SUBCREDENTIAL_DOMAIN + credential(alias_public) + blinded_public
    ).digest()


def _check_len(value: bytes, length: int, what: str) -> None:
    if len(value) != length:
        raise CryptoError(f"{what} is {length} bytes, not {len(value)}")


def _hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (extract and expand) with an empty salt."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def _seal(ikm: bytes, info: bytes, plaintext: bytes, ad: bytes | None) -> bytes:
    okm = _hkdf(ikm, info, _KEY_NONCE_LEN)
    return AESGCM(okm[:32]).encrypt(okm[32:], plaintext, ad)


def _open(ikm: bytes, info: bytes, ciphertext: bytes, ad: bytes | None, what: str) -> bytes:
    if len(ciphertext) < AEAD_TAG_LEN:
        raise CryptoError(f"{what} is shorter than its tag")
    okm = _hkdf(ikm, info, _KEY_NONCE_LEN)
    try:
        return AESGCM(okm[:32]).decrypt(okm[32:], ciphertext, ad)
    except InvalidTag:
        raise CryptoError(f"{what} does not open: tampered, or the wrong keys") from None


def _layer_ikm(blinded: bytes, subcred: bytes, revision: int, salt: bytes) -> bytes:
    _check_len(blinded, KEY_LEN, "a blinded key")
    _check_len(subcred, SUBCREDENTIAL_LEN, "a subcredential")
    if not 0 <= revision < 2**64:
        raise CryptoError("a revision is an unsigned 64-bit integer")
    return blinded + subcred + struct.pack(">Q", revision) + salt


def seal_outer(
    blinded: bytes, subcred: bytes, revision: int, salt: bytes, plaintext: bytes
) -> bytes:
    """The outer layer: anyone with the alias (hence the subcredential) opens it."""
    return _seal(_layer_ikm(blinded, subcred, revision, salt), _OUTER_INFO, plaintext, None)


def open_outer(
    blinded: bytes, subcred: bytes, revision: int, salt: bytes, ciphertext: bytes
) -> bytes:
    ikm = _layer_ikm(blinded, subcred, revision, salt)
    return _open(ikm, _OUTER_INFO, ciphertext, None, "the descriptor's outer layer")


def seal_inner(
    blinded: bytes, subcred: bytes, revision: int, salt: bytes, cookie: bytes, plaintext: bytes
) -> bytes:
    """The inner layer, keyed also by the descriptor cookie (empty for a public one)."""
    ikm = _layer_ikm(blinded, subcred, revision, salt) + cookie
    return _seal(ikm, _INNER_INFO, plaintext, None)


def open_inner(
    blinded: bytes, subcred: bytes, revision: int, salt: bytes, cookie: bytes, ciphertext: bytes
) -> bytes:
    ikm = _layer_ikm(blinded, subcred, revision, salt) + cookie
    return _open(ikm, _INNER_INFO, ciphertext, None, "the descriptor's inner layer")


def _client_pad(shared: bytes, ephemeral: bytes, client_x25519: bytes, subcred: bytes) -> bytes:
    _check_len(subcred, SUBCREDENTIAL_LEN, "a subcredential")
    ikm = shared + ephemeral + client_x25519 + subcred
    return _hkdf(ikm, _CLIENT_AUTH_INFO, CLIENT_ENTRY_LEN)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def client_auth_entry(
    e_private: bytes,
    ephemeral: bytes,
    client_x25519_public: bytes,
    subcred: bytes,
    cookie: bytes,
) -> bytes:
    """Service side: id 8 | cookie XOR pad, for one listed client (40 bytes)."""
    _check_len(cookie, COOKIE_LEN, "a descriptor cookie")
    e = StaticKey(e_private)
    if not hmac.compare_digest(e.public, ephemeral):
        raise CryptoError("the ephemeral key does not match its private half")
    pad = _client_pad(e.dh(client_x25519_public), ephemeral, client_x25519_public, subcred)
    return pad[:CLIENT_ID_LEN] + _xor(cookie, pad[CLIENT_ID_LEN:])


def find_cookie(
    entries: Sequence[bytes], client_x25519_private: bytes, ephemeral: bytes, subcred: bytes
) -> bytes | None:
    """Client side: the cookie of the entry made for this client, or None. Every entry
    is compared, each in constant time, so the time taken does not say which slot."""
    client = StaticKey(client_x25519_private)
    pad = _client_pad(client.dh(ephemeral), ephemeral, client.public, subcred)
    expected_id = pad[:CLIENT_ID_LEN]
    found: bytes | None = None
    for entry in entries:
        _check_len(entry, CLIENT_ENTRY_LEN, "a client entry")
        if hmac.compare_digest(entry[:CLIENT_ID_LEN], expected_id) and found is None:
            found = _xor(entry[CLIENT_ID_LEN:], pad[CLIENT_ID_LEN:])
    return found


def _intro_ikm(
    shared: bytes, auth_key: bytes, x_public: bytes, enc_public: bytes, subcred: bytes
) -> bytes:
    _check_len(auth_key, KEY_LEN, "an intro auth key")
    _check_len(subcred, SUBCREDENTIAL_LEN, "a subcredential")
    return shared + auth_key + x_public + enc_public + subcred


def seal_introduce(
    x_private: bytes, enc_public: bytes, auth_key: bytes, subcred: bytes, plaintext: bytes
) -> tuple[bytes, bytes]:
    """Client: (X, INTRODUCE1 ciphertext) sealed to the intro's enc key B, AD = auth key | X."""
    x = StaticKey(x_private)
    ikm = _intro_ikm(x.dh(enc_public), auth_key, x.public, enc_public, subcred)
    return x.public, _seal(ikm, _INTRO_INFO, plaintext, auth_key + x.public)


def open_introduce(
    b_private: bytes, auth_key: bytes, x_public: bytes, ciphertext: bytes, subcred: bytes
) -> bytes:
    """Service: the INTRODUCE2 plaintext; CryptoError if it does not open."""
    _check_len(x_public, KEY_LEN, "X")
    b = StaticKey(b_private)
    ikm = _intro_ikm(b.dh(x_public), auth_key, x_public, b.public, subcred)
    return _open(ikm, _INTRO_INFO, ciphertext, auth_key + x_public, "the introduction")


def hs_ntor_service(
    auth_key: bytes, enc_key: StaticKey, x_public: bytes, y_private: bytes
) -> tuple[bytes, bytes]:
    """Service: (Y | AUTH for RENDEZVOUS1, HOP_KEY_MATERIAL) for the client's X."""
    _check_len(auth_key, KEY_LEN, "an intro auth key")
    _check_len(x_public, KEY_LEN, "X")
    onionskin = auth_key + enc_key.public + x_public
    return ntor_server(onionskin, auth_key, [enc_key], y_private, protoid=HS_NTOR_PROTOID)


def hs_ntor_client_finish(
    auth_key: bytes, enc_public: bytes, x_private: bytes, reply: bytes
) -> bytes:
    """Client: check RENDEZVOUS2's AUTH (only the enc key's holder can make it) and
    return the same HOP_KEY_MATERIAL the service derived."""
    state, _ = ntor_client_start(auth_key, enc_public, x_private, protoid=HS_NTOR_PROTOID)
    return ntor_client_finish(state, reply)


def e2e_crypto(material: bytes, *, client: bool) -> HopCrypto:
    """The end-to-end layer's two directions. The client's forward (client -> service)
    is the service's backward, so the service gets the client's keys swapped."""
    _check_len(material, HOP_KEY_MATERIAL, "hop key material")
    keys = HopKeys.from_material(material)
    if not client:
        keys = HopKeys(
            forward_key=keys.backward_key,
            backward_key=keys.forward_key,
            forward_nonce=keys.backward_nonce,
            backward_nonce=keys.forward_nonce,
            binding=keys.binding,
        )
    return HopCrypto(keys)
