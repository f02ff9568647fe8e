"""The plaintexts inside a hidden-service descriptor body (docs/hidden.md section 3).

    body (DESCRIPTOR_BODY_SIZE 896) = salt 16 | outer ciphertext (OUTER_SIZE + 16)
    outer plaintext (864) = version u8 (1) | auth u8 (0 public, 1 allow-list)
                            | ephemeral X25519 key E 32
                            | 12 client entries x (client id 8 | encrypted cookie 32)
                            | inner ciphertext (INNER_SIZE + 16) | zero padding 14
    inner plaintext (320) = count u8 (1..3) | flags u8 (bit 0: clients prove their key)
                            | count x intro (relay identity 32 | auth key 32 | enc key 32)
                            | zero padding

Both sizes are fixed, so a descriptor says nothing by its length. Decoders take the
plaintext a layer opened and raise DecodeError on anything malformed (wrong size,
unknown version or flag bits, a bad count, padding that is not zero); encoders raise
ValueError for values that have no encoding (a local programming error). The layers'
cryptography is in crypto/hidden_desc.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from vx6.errors import DecodeError
from vx6.wire.reader import Reader

DESCRIPTOR_BODY_SIZE = 896
SALT_LEN = 16
AEAD_TAG_LEN = 16
OUTER_SIZE = DESCRIPTOR_BODY_SIZE - SALT_LEN - AEAD_TAG_LEN  # 864
INNER_SIZE = 320
INNER_CIPHERTEXT_SIZE = INNER_SIZE + AEAD_TAG_LEN
MAX_INTROS = 3
MAX_DESCRIPTOR_CLIENTS = 12
CLIENT_ENTRY_LEN = 40
KEY_LEN = 32
DESCRIPTOR_VERSION = 1
FLAG_PROOF_REQUIRED = 0x01
INTRO_ENTRY_LEN = 3 * KEY_LEN

_OUTER_USED = 2 + KEY_LEN + MAX_DESCRIPTOR_CLIENTS * CLIENT_ENTRY_LEN + INNER_CIPHERTEXT_SIZE
_OUTER_PADDING = OUTER_SIZE - _OUTER_USED  # 14
assert _OUTER_PADDING == 14


def _zeros_or_fail(padding: bytes, what: str) -> None:
    if any(padding):
        raise DecodeError(f"{what}: padding is not zero")


@dataclass(frozen=True, slots=True)
class IntroEntry:
    """One introduction point: its relay's identity key and the intro's own keys."""

    relay: bytes
    auth_key: bytes
    enc_key: bytes

    def __post_init__(self) -> None:
        if not (len(self.relay) == len(self.auth_key) == len(self.enc_key) == KEY_LEN):
            raise ValueError("an intro's relay, auth and enc keys are 32 bytes each")


@dataclass(frozen=True, slots=True)
class InnerPlaintext:
    intros: tuple[IntroEntry, ...]
    proof_required: bool

    def __post_init__(self) -> None:
        if not 1 <= len(self.intros) <= MAX_INTROS:
            raise ValueError(f"a descriptor names 1..{MAX_INTROS} intros")


@dataclass(frozen=True, slots=True)
class OuterPlaintext:
    auth: bool
    ephemeral: bytes
    entries: tuple[bytes, ...]
    inner_ciphertext: bytes

    def __post_init__(self) -> None:
        if len(self.ephemeral) != KEY_LEN:
            raise ValueError("the ephemeral key is 32 bytes")
        if len(self.entries) != MAX_DESCRIPTOR_CLIENTS or any(
            len(e) != CLIENT_ENTRY_LEN for e in self.entries
        ):
            raise ValueError(f"a descriptor holds exactly {MAX_DESCRIPTOR_CLIENTS} 40-byte entries")
        if len(self.inner_ciphertext) != INNER_CIPHERTEXT_SIZE:
            raise ValueError(f"the inner ciphertext is {INNER_CIPHERTEXT_SIZE} bytes")


def encode_inner(inner: InnerPlaintext) -> bytes:
    flags = FLAG_PROOF_REQUIRED if inner.proof_required else 0
    out = bytearray([len(inner.intros), flags])
    for intro in inner.intros:
        out += intro.relay + intro.auth_key + intro.enc_key
    return bytes(out) + bytes(INNER_SIZE - len(out))


def decode_inner(data: bytes) -> InnerPlaintext:
    if len(data) != INNER_SIZE:
        raise DecodeError(f"an inner descriptor plaintext is {INNER_SIZE} bytes")
    reader = Reader(data, "inner descriptor plaintext")
    count = reader.u8()
    if not 1 <= count <= MAX_INTROS:
        raise DecodeError(f"a descriptor names 1..{MAX_INTROS} intros, not {count}")
    flags = reader.u8()
    if flags & ~FLAG_PROOF_REQUIRED:
        raise DecodeError(f"unknown inner descriptor flags {flags:#04x}")
    intros = tuple(
        IntroEntry(reader.take(KEY_LEN), reader.take(KEY_LEN), reader.take(KEY_LEN))
        for _ in range(count)
    )
    _zeros_or_fail(reader.take(reader.left()), "inner descriptor plaintext")
    return InnerPlaintext(intros, bool(flags & FLAG_PROOF_REQUIRED))


def encode_outer(outer: OuterPlaintext) -> bytes:
    out = (
        bytes([DESCRIPTOR_VERSION, 1 if outer.auth else 0])
        + outer.ephemeral
        + b"".join(outer.entries)
        + outer.inner_ciphertext
    )
    return out + bytes(_OUTER_PADDING)


def decode_outer(data: bytes) -> OuterPlaintext:
    if len(data) != OUTER_SIZE:
        raise DecodeError(f"an outer descriptor plaintext is {OUTER_SIZE} bytes")
    reader = Reader(data, "outer descriptor plaintext")
    version = reader.u8()
    if version != DESCRIPTOR_VERSION:
        raise DecodeError(f"unknown descriptor version {version}")
    auth = reader.u8()
    if auth not in (0, 1):
        raise DecodeError(f"descriptor auth is 0 or 1, not {auth}")
    ephemeral = reader.take(KEY_LEN)
    entries = tuple(reader.take(CLIENT_ENTRY_LEN) for _ in range(MAX_DESCRIPTOR_CLIENTS))
    inner_ciphertext = reader.take(INNER_CIPHERTEXT_SIZE)
    _zeros_or_fail(reader.take(reader.left()), "outer descriptor plaintext")
    return OuterPlaintext(auth == 1, ephemeral, entries, inner_ciphertext)
