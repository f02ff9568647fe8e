"""Hidden-service keys: the alias key's point checks (more arrives with key blinding).

Theory of operation. A hidden service's alias encodes its whole Ed25519 public key
(core/hidden/alias.py); before a client derives anything from an alias it checks here
that the key is a valid point of the prime-order subgroup, so a crafted alias cannot
make blinding or verification work on a small-order or non-canonical point. Point
arithmetic comes from libsodium through PyNaCl (docs/dependencies.md).
"""

from __future__ import annotations

from nacl.bindings import crypto_core_ed25519_is_valid_point

ED25519_KEY_LEN = 32


def valid_ed25519_point(key: bytes) -> bool:
    """True if `key` encodes a point of the prime-order subgroup other than the identity
    (libsodium refuses small-order and non-canonical encodings)."""
    if len(key) != ED25519_KEY_LEN:
        return False
    return bool(crypto_core_ed25519_is_valid_point(key))
