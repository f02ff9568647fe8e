"""Identity and static keys.

A node has one long-lived Ed25519 identity key (signs records, proves who is behind a
link) and X25519 keys for key agreement: a *link key* used as the Noise static key, and
an *onion key* for circuit handshakes. Both X25519 public keys are published in the
node's signed record, so a peer that knows the record can use Noise IK, and a peer that
does not learns the link key in an XX handshake together with a signature by the
identity key over it (see `link_key_proof`).

Everything else in VX6 handles keys as raw 32-byte strings; this module is the only
place that turns them into library objects.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from vx6.errors import CryptoError

KEY_LEN = 32
SIG_LEN = 64
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()

LINK_PROOF_DOMAIN = b"vx6-link-key-v1\x00"
CIRCUIT_AUTH_DOMAIN = b"vx6-circuit-auth-v1\x00"


def node_id(identity_public: bytes) -> bytes:
    """256-bit node id bound to an identity key (SHA-256 of the domain and the key)."""
    return hashlib.sha256(b"vx6-node-id\x00" + identity_public).digest()


def fingerprint(identity_public: bytes) -> str:
    """Short human form of a key: 16 base32 characters (80 bits) of the node id."""
    return base64.b32encode(node_id(identity_public)[:10]).decode().lower()


def key_to_text(public: bytes) -> str:
    """Full key as 52 lowercase base32 characters (the key-based address form)."""
    return base64.b32encode(public).decode().rstrip("=").lower()


def key_from_text(text: str) -> bytes:
    """Inverse of `key_to_text`; raises ValueError on anything else."""
    if len(text) != 52:
        raise ValueError("a key is 52 base32 characters")
    raw = base64.b32decode(text.upper() + "====")
    if len(raw) != KEY_LEN:
        raise ValueError("a key is 32 bytes")
    return raw


class Identity:
    """An Ed25519 signing key. `public` is the 32-byte raw public key."""

    __slots__ = ("_key", "public")

    def __init__(self, private_bytes: bytes) -> None:
        if len(private_bytes) != KEY_LEN:
            raise CryptoError("an Ed25519 private key is 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(private_bytes)
        self.public: bytes = self._key.public_key().public_bytes(_RAW, _RAW_PUB)

    @classmethod
    def generate(cls, seed: bytes) -> Identity:
        """Create from 32 bytes of fresh randomness supplied by the caller."""
        return cls(seed)

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(_RAW, _RAW_PRIV, _NO_ENC)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True only if `signature` is a valid Ed25519 signature of `message` by `public`."""
    if len(public) != KEY_LEN or len(signature) != SIG_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


class StaticKey:
    """An X25519 key pair (link key or onion key)."""

    __slots__ = ("_key", "public")

    def __init__(self, private_bytes: bytes) -> None:
        if len(private_bytes) != KEY_LEN:
            raise CryptoError("an X25519 private key is 32 bytes")
        self._key = X25519PrivateKey.from_private_bytes(private_bytes)
        self.public: bytes = self._key.public_key().public_bytes(_RAW, _RAW_PUB)

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(_RAW, _RAW_PRIV, _NO_ENC)

    def dh(self, peer_public: bytes) -> bytes:
        """X25519 shared secret; raises CryptoError on a low-order or malformed point."""
        try:
            return self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:
            raise CryptoError(f"X25519 exchange failed: {exc}") from exc


def link_key_proof(identity: Identity, link_public: bytes) -> bytes:
    """Signature by the identity key that binds a link (Noise static) key to it."""
    return identity.sign(LINK_PROOF_DOMAIN + link_public)


def check_link_key_proof(identity_public: bytes, link_public: bytes, proof: bytes) -> bool:
    return verify(identity_public, LINK_PROOF_DOMAIN + link_public, proof)


def circuit_auth_proof(identity: Identity, exit_identity: bytes, binding: bytes) -> bytes:
    """The client's signature over the circuit binding it shares with the exit (and the
    exit's key, so a proof made for one exit is worthless at another)."""
    return identity.sign(CIRCUIT_AUTH_DOMAIN + exit_identity + binding)


def check_circuit_auth_proof(
    client_identity: bytes, exit_identity: bytes, binding: bytes, proof: bytes
) -> bool:
    return verify(client_identity, CIRCUIT_AUTH_DOMAIN + exit_identity + binding, proof)
