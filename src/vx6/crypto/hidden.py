"""Hidden-service keys: alias keys, key blinding and blinded signatures (docs/hidden.md 2).

Theory of operation. A hidden service's alias encodes its whole Ed25519 public key A
(core/hidden/alias.py); before a client derives anything from an alias it checks here
that the key is a valid point of the prime-order subgroup, so a crafted alias cannot
make blinding or verification work on a small-order or non-canonical point.

For each time period the service signs with a *blinded key* (Tor's rend-spec-v3 A.2):
a clamped factor h is hashed from A and the period, A' = h * A, and the secret side is
a' = h * a mod l with a fresh prefix' hashed from the alias key's prefix. Anyone who
knows A computes A' for any period; without A two blinded keys cannot be linked. The
signing is the ordinary Ed25519 algorithm done by hand on (a', prefix'), because no
library signs with a bare scalar, so its output verifies with any standard verifier.
The domain strings are parameters so the code is checked against Tor's own vectors
with Tor's strings (tests/unit/vectors/ed25519_blinding_tor.json).

The Ed25519 -> X25519 conversions let a descriptor's client authorization address a
node by its identity key alone. Point arithmetic comes from libsodium through PyNaCl
(docs/dependencies.md); nothing here keeps state beyond the key objects.
"""

from __future__ import annotations

import hashlib
import struct

from nacl.bindings import (
    crypto_core_ed25519_is_valid_point,
    crypto_core_ed25519_scalar_add,
    crypto_core_ed25519_scalar_mul,
    crypto_core_ed25519_scalar_reduce,
    crypto_scalarmult_ed25519_base_noclamp,
    crypto_scalarmult_ed25519_noclamp,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
)
from nacl.exceptions import CryptoError as NaclCryptoError

from vx6.errors import CryptoError

ED25519_KEY_LEN = 32
ED25519_SEED_LEN = 32
ED25519_EXPANDED_LEN = 64
SIGNATURE_LEN = 64

BLIND_DOMAIN = b"vx6-hs-blind-v1\x00"
PREFIX_DOMAIN = b"vx6-hs-blind-prefix-v1\x00"
# Tor's strings (rend-spec-v3 A.2 and ed25519_donna_blind_secret_key), for its vectors.
TOR_BLIND_DOMAIN = b"Derive temporary signing key\x00"
TOR_PREFIX_DOMAIN = b"Derive temporary signing key hash input"
BASEPOINT_STRING = (
    b"(15112221349535400772501151409588531511454012693041857206046113283949847762202, "
    b"46316835694926478169428394003475163141307993866256225615783033603165251855960)"
)
_NONCE_LABEL = b"key-blind"


def valid_ed25519_point(key: bytes) -> bool:
    """True if `key` encodes a point of the prime-order subgroup other than the identity
    (libsodium refuses small-order and non-canonical encodings)."""
    if len(key) != ED25519_KEY_LEN:
        return False
    return bool(crypto_core_ed25519_is_valid_point(key))


def clamp_scalar(raw: bytes) -> bytes:
    """The 32-byte little-endian scalar with Ed25519's clamping (low 3 bits clear, bit
    254 set, bit 255 clear)."""
    if len(raw) != 32:
        raise CryptoError("a scalar is 32 bytes")
    out = bytearray(raw)
    out[0] &= 248
    out[31] &= 63
    out[31] |= 64
    return bytes(out)


def _reduce(scalar32: bytes) -> bytes:
    """The scalar mod l (libsodium's reduce takes 64 bytes)."""
    return bytes(crypto_core_ed25519_scalar_reduce(scalar32 + bytes(32)))


def _reduce64(digest: bytes) -> bytes:
    return bytes(crypto_core_ed25519_scalar_reduce(digest))


def blinding_factor(
    public: bytes, period: int, period_length: int, *, domain: bytes = BLIND_DOMAIN
) -> bytes:
    """h = clamp(SHA3-256(domain | A | BASEPOINT | "key-blind" | period u64 | length u64))."""
    if len(public) != ED25519_KEY_LEN:
        raise CryptoError("an alias key is 32 bytes")
    if not (0 <= period < 2**64 and 0 < period_length < 2**64):
        raise CryptoError("period and period length are unsigned 64-bit integers")
    nonce = _NONCE_LABEL + struct.pack(">QQ", period, period_length)
    return clamp_scalar(hashlib.sha3_256(domain + public + BASEPOINT_STRING + nonce).digest())


def blind_public(public: bytes, h: bytes) -> bytes:
    """A' = h * A (no clamping: h is already clamped). CryptoError for a key that is not
    a valid point of the prime-order subgroup."""
    if not valid_ed25519_point(public) or len(h) != 32:
        raise CryptoError("cannot blind: not a valid Ed25519 point")
    try:
        return bytes(crypto_scalarmult_ed25519_noclamp(h, public))
    except NaclCryptoError as exc:  # a zero result; unreachable for a valid point
        raise CryptoError(f"blinding failed: {exc}") from None


def ed25519_public_to_x25519(public: bytes) -> bytes:
    """The X25519 (Montgomery) form of an Ed25519 public key."""
    if not valid_ed25519_point(public):
        raise CryptoError("not a valid Ed25519 public key")
    try:
        return bytes(crypto_sign_ed25519_pk_to_curve25519(public))
    except NaclCryptoError as exc:
        raise CryptoError(f"Ed25519 -> X25519 failed: {exc}") from None


def ed25519_seed_to_x25519_private(seed: bytes) -> bytes:
    """The X25519 private key matching `ed25519_public_to_x25519` of the seed's public
    key (libsodium hashes the seed exactly as Ed25519 does)."""
    if len(seed) != ED25519_SEED_LEN:
        raise CryptoError("an Ed25519 seed is 32 bytes")
    # libsodium's sk_to_curve25519 reads only the seed half of the 64-byte secret key.
    return bytes(crypto_sign_ed25519_sk_to_curve25519(seed + bytes(32)))


class BlindedKey:
    """A blinded signing key (a', prefix') and its public key A'."""

    __slots__ = ("_prefix", "_scalar", "public")

    def __init__(self, scalar: bytes, prefix: bytes) -> None:
        if len(scalar) != 32 or len(prefix) != 32:
            raise CryptoError("a blinded key is a 32-byte scalar and a 32-byte prefix")
        self._scalar = _reduce(scalar)
        self._prefix = prefix
        try:
            self.public: bytes = bytes(crypto_scalarmult_ed25519_base_noclamp(self._scalar))
        except NaclCryptoError:
            raise CryptoError("a blinded scalar of zero") from None

    def expanded(self) -> bytes:
        """a' | prefix' (Tor's 64-byte expanded secret key form)."""
        return self._scalar + self._prefix

    def sign(self, message: bytes) -> bytes:
        """Ed25519 (RFC 8032 5.1.6) with the blinded scalar and prefix: R | S."""
        r = _reduce64(hashlib.sha512(self._prefix + message).digest())
        # r = 0 has probability 2^-252: a hash preimage, not a case to handle.
        big_r = bytes(crypto_scalarmult_ed25519_base_noclamp(r))
        k = _reduce64(hashlib.sha512(big_r + self.public + message).digest())
        s = crypto_core_ed25519_scalar_add(r, crypto_core_ed25519_scalar_mul(k, self._scalar))
        return big_r + bytes(s)


def blind_expanded(
    expanded: bytes, h: bytes, *, prefix_domain: bytes = PREFIX_DOMAIN
) -> BlindedKey:
    """Blind an expanded secret key (clamped scalar a 32 | prefix 32) by the clamped
    factor h: a' = h * a mod l, prefix' = SHA-512(prefix_domain | prefix)[:32]."""
    if len(expanded) != ED25519_EXPANDED_LEN or len(h) != 32:
        raise CryptoError("an expanded secret key is 64 bytes and a factor 32")
    scalar = crypto_core_ed25519_scalar_mul(_reduce(h), _reduce(expanded[:32]))
    prefix = hashlib.sha512(prefix_domain + expanded[32:]).digest()[:32]
    return BlindedKey(bytes(scalar), prefix)


def expand_seed(seed: bytes) -> bytes:
    """RFC 8032's expansion of a seed: clamp(SHA-512(seed)[:32]) | SHA-512(seed)[32:]."""
    if len(seed) != ED25519_SEED_LEN:
        raise CryptoError("an Ed25519 seed is 32 bytes")
    digest = hashlib.sha512(seed).digest()
    return clamp_scalar(digest[:32]) + digest[32:]


class AliasKey:
    """A hidden service's alias key pair, from its 32-byte seed (HOME/hidden/NAME/
    alias.key). `public` is the same key any Ed25519 library derives from the seed."""

    __slots__ = ("_expanded", "public", "seed")

    def __init__(self, seed: bytes) -> None:
        self._expanded = expand_seed(seed)
        self.seed = seed
        self.public: bytes = bytes(
            crypto_scalarmult_ed25519_base_noclamp(_reduce(self._expanded[:32]))
        )

    def blinded(
        self,
        period: int,
        period_length: int,
        *,
        domain: bytes = BLIND_DOMAIN,
        prefix_domain: bytes = PREFIX_DOMAIN,
    ) -> BlindedKey:
        """The blinded key of `period`; its `public` equals
        blind_public(self.public, blinding_factor(self.public, period, period_length))."""
        h = blinding_factor(self.public, period, period_length, domain=domain)
        return blind_expanded(self._expanded, h, prefix_domain=prefix_domain)
