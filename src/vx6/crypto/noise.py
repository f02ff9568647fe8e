"""Noise protocol (revision 34): XX and IK handshakes and transport ciphers, sans-IO.

Theory of operation. The suite is fixed: X25519, AES-256-GCM, SHA-256, so the protocol
names are `Noise_XX_25519_AESGCM_SHA256` and `Noise_IK_25519_AESGCM_SHA256`. A
`HandshakeState` holds the spec's SymmetricState (chaining key `ck`, transcript hash `h`,
handshake cipher key and nonce) and walks the pattern's message list: the initiator
writes messages 0, 2, ... and reads 1, 3, ...; the responder the other way round. Every
token is handled exactly as the spec's WriteMessage/ReadMessage say, so the bytes match
the published test vectors (checked in tests/unit/test_noise.py).

Randomness comes in from the caller (the ephemeral private key), never from inside.

`read_message` is transactional: it works on a copy of the symmetric state and keeps the
result only if the whole message checks out, so a forged or damaged message leaves the
handshake exactly as it was (the caller decides whether to abort or wait). Calls out of
turn, after completion, or with oversized messages raise CryptoError.

Once complete, `split()` hands out the two transport `CipherState`s, already oriented as
(send, receive) for this side. It works once: a second pair would reuse nonces.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vx6.crypto.keys import KEY_LEN, StaticKey
from vx6.errors import CryptoError

MAX_MESSAGE = 65535
TAG_LEN = 16
MAX_PLAINTEXT = MAX_MESSAGE - TAG_LEN
DH_LEN = KEY_LEN
HASH_LEN = 32

# Nonce 2**64 - 1 is reserved by the spec (it is what rekey uses).
_NONCE_LIMIT = 2**64 - 1
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_REKEY_NONCE = _NONCE_PREFIX + b"\xff" * 8
_ZERO_KEY = bytes(32)

BytesLike = bytes | bytearray | memoryview

# Each message is a tuple of tokens; patterns here carry no PSK.
_PATTERNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "XX": (("e",), ("e", "ee", "s", "es"), ("s", "se")),
    "IK": (("e", "es", "s", "ss"), ("e", "ee", "se")),
}
_SUITE = b"_25519_AESGCM_SHA256"


class CipherState:
    """One direction of AES-256-GCM with the Noise nonce (4 zero bytes, 8-byte big-endian
    counter). `nonce` counts messages; it advances on every encrypt and on every
    successful decrypt, and never wraps."""

    __slots__ = ("_aead", "nonce")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise CryptoError("a cipher key is 32 bytes")
        self._aead = AESGCM(key)
        self.nonce = 0

    def encrypt(self, plaintext: BytesLike, ad: BytesLike = b"") -> bytes:
        """Return ciphertext || 16-byte tag for the next nonce."""
        n = self.nonce
        if n >= _NONCE_LIMIT:
            raise CryptoError("nonce space exhausted; the session must end")
        if len(plaintext) > MAX_PLAINTEXT:
            raise CryptoError(f"plaintext over {MAX_PLAINTEXT} bytes")
        ciphertext = self._aead.encrypt(_NONCE_PREFIX + n.to_bytes(8, "big"), plaintext, ad)
        self.nonce = n + 1
        return ciphertext

    def decrypt(self, ciphertext: BytesLike, ad: BytesLike = b"") -> bytes:
        """Check the tag and return the plaintext; CryptoError on any failure."""
        n = self.nonce
        if n >= _NONCE_LIMIT:
            raise CryptoError("nonce space exhausted; the session must end")
        size = len(ciphertext)
        if size < TAG_LEN or size > MAX_MESSAGE:
            raise CryptoError(f"ciphertext of {size} bytes is outside {TAG_LEN}..{MAX_MESSAGE}")
        try:
            plaintext = self._aead.decrypt(_NONCE_PREFIX + n.to_bytes(8, "big"), ciphertext, ad)
        except InvalidTag:
            raise CryptoError("AEAD tag does not verify") from None
        self.nonce = n + 1
        return plaintext

    def rekey(self) -> None:
        """The spec's REKEY: the new key is ENCRYPT(k, 2**64-1, "", 32 zero bytes)[:32].
        The nonce counter is left as it is, as the spec says."""
        self._aead = AESGCM(self._aead.encrypt(_REKEY_NONCE, _ZERO_KEY, b"")[:32])


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """The spec's HKDF with two outputs (HMAC-SHA256 based)."""
    temp_key = _hmac(chaining_key, ikm)
    out1 = _hmac(temp_key, b"\x01")
    out2 = _hmac(temp_key, out1 + b"\x02")
    return out1, out2


class _SymmetricState:
    """ck, h and the handshake cipher (key and nonce). Cheap to copy, which is what makes
    `read_message` transactional."""

    __slots__ = ("aead", "ck", "h", "n")

    def __init__(self, ck: bytes, h: bytes, aead: AESGCM | None, n: int) -> None:
        self.ck = ck
        self.h = h
        self.aead = aead
        self.n = n

    def copy(self) -> _SymmetricState:
        return _SymmetricState(self.ck, self.h, self.aead, self.n)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.aead = AESGCM(temp_k)
        self.n = 0

    def _nonce(self) -> bytes:
        # Handshakes use a handful of nonces; the limit can only matter in theory.
        return _NONCE_PREFIX + self.n.to_bytes(8, "big")

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.aead is None:
            ciphertext = plaintext
        else:
            ciphertext = self.aead.encrypt(self._nonce(), plaintext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self.aead is None:
            plaintext = ciphertext
        else:
            try:
                plaintext = self.aead.decrypt(self._nonce(), ciphertext, self.h)
            except InvalidTag:
                raise CryptoError("handshake message fails authentication") from None
            self.n += 1
        self.mix_hash(ciphertext)
        return plaintext

    @property
    def has_key(self) -> bool:
        return self.aead is not None


class HandshakeState:
    """One side of a Noise XX or IK handshake with caller-supplied keys."""

    def __init__(
        self,
        pattern: str,
        initiator: bool,
        static_private: bytes,
        ephemeral_private: bytes,
        remote_static: bytes | None = None,
        prologue: bytes = b"",
    ) -> None:
        messages = _PATTERNS.get(pattern)
        if messages is None:
            raise CryptoError(f"unsupported Noise pattern {pattern!r} (XX or IK)")
        knows_remote = pattern == "IK" and initiator
        if knows_remote and remote_static is None:
            raise CryptoError("an IK initiator needs the responder's static key")
        if not knows_remote and remote_static is not None:
            raise CryptoError(f"only an IK initiator starts with a remote static key ({pattern})")
        if remote_static is not None and len(remote_static) != DH_LEN:
            raise CryptoError("a remote static key is 32 bytes")
        self._messages = messages
        self._initiator = initiator
        self._s = StaticKey(static_private)
        self._e = StaticKey(ephemeral_private)
        self._rs = remote_static
        self._re: bytes | None = None
        self._turn = 0
        self._split_done = False

        name = b"Noise_" + pattern.encode() + _SUITE
        h = (
            name.ljust(HASH_LEN, b"\x00")
            if len(name) <= HASH_LEN
            else hashlib.sha256(name).digest()
        )
        self._sym = _SymmetricState(h, h, None, 0)
        self._sym.mix_hash(prologue)
        if pattern == "IK":  # pre-message "<- s": the responder's static key
            responder_static = remote_static if initiator else self._s.public
            assert responder_static is not None
            self._sym.mix_hash(responder_static)

    @property
    def complete(self) -> bool:
        return self._turn >= len(self._messages)

    @property
    def remote_static(self) -> bytes | None:
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """The transcript hash `h`; final (and fit for channel binding) once complete."""
        return self._sym.h

    def _my_turn_to_write(self) -> bool:
        return (self._turn % 2 == 0) == self._initiator

    def _dh(self, sym: _SymmetricState, token: str, re: bytes | None, rs: bytes | None) -> None:
        # Which local key meets which remote key depends on the side: "es" is the
        # initiator's e with the responder's s, so the responder uses its s with re.
        local_kind = token[0] if self._initiator else token[1]
        remote_kind = token[1] if self._initiator else token[0]
        local = self._e if local_kind == "e" else self._s
        remote = re if remote_kind == "e" else rs
        if remote is None:
            raise CryptoError(f"token {token} before the remote key is known")
        sym.mix_key(local.dh(remote))

    def write_message(self, payload: bytes = b"") -> bytes:
        if self.complete:
            raise CryptoError("handshake already complete")
        if not self._my_turn_to_write():
            raise CryptoError("not our turn to write a handshake message")
        sym = self._sym.copy()
        out: list[bytes] = []
        for token in self._messages[self._turn]:
            if token == "e":
                out.append(self._e.public)
                sym.mix_hash(self._e.public)
            elif token == "s":
                out.append(sym.encrypt_and_hash(self._s.public))
            else:
                self._dh(sym, token, self._re, self._rs)
        size = sum(map(len, out)) + len(payload) + (TAG_LEN if sym.has_key else 0)
        if size > MAX_MESSAGE:
            raise CryptoError(f"handshake message of {size} bytes is over {MAX_MESSAGE}")
        out.append(sym.encrypt_and_hash(payload))
        self._sym = sym
        self._turn += 1
        return b"".join(out)

    def read_message(self, message: bytes) -> bytes:
        if self.complete:
            raise CryptoError("handshake already complete")
        if self._my_turn_to_write():
            raise CryptoError("not our turn to read a handshake message")
        if len(message) > MAX_MESSAGE:
            raise CryptoError(f"handshake message of {len(message)} bytes is over {MAX_MESSAGE}")
        sym = self._sym.copy()
        re, rs = self._re, self._rs
        view = bytes(message)
        pos = 0
        for token in self._messages[self._turn]:
            if token in ("e", "s"):
                size = DH_LEN + (TAG_LEN if token == "s" and sym.has_key else 0)
                if len(view) - pos < size:
                    raise CryptoError(f"handshake message too short for token {token}")
                chunk = view[pos : pos + size]
                pos += size
                if token == "e":
                    re = chunk
                    sym.mix_hash(chunk)
                else:
                    rs = sym.decrypt_and_hash(chunk)
            else:
                self._dh(sym, token, re, rs)
        if sym.has_key and len(view) - pos < TAG_LEN:
            raise CryptoError("handshake message too short for its payload tag")
        payload = sym.decrypt_and_hash(view[pos:])
        self._sym, self._re, self._rs = sym, re, rs
        self._turn += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) transport ciphers for this side; only once, only when complete."""
        if not self.complete:
            raise CryptoError("handshake not complete")
        if self._split_done:
            raise CryptoError("transport keys were already handed out")
        self._split_done = True
        k1, k2 = _hkdf2(self._sym.ck, b"")
        self._sym.ck = b""  # nothing may derive from it again
        c1, c2 = CipherState(k1), CipherState(k2)
        return (c1, c2) if self._initiator else (c2, c1)
