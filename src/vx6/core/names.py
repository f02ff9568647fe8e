"""Service addresses and the rule that turns an owner name into an owner key.

Address forms (case-insensitive on input, printed in lowercase):

    alice.ssh               owner by name
    alice#FINGERPRINT.ssh   owner by name, restricted to the key with that fingerprint
                            (16 base32 characters, as `vx6.crypto.keys.fingerprint` prints)
    KEY.ssh                 owner by key: the 52-character base32 key text; needs no
                            trust in anyone (KEY#FINGERPRINT.ssh is accepted if they match)

A label (owner name or service name) is 1..32 characters of [a-z0-9-], starting and
ending with a letter or digit. Uppercase ASCII is normalised to lowercase; nothing else
is (so no Unicode look-alike folds into an ASCII name).

Claim rule (`resolve_owner`), given the keys of the live, valid name-claim records the
node holds for the name, and the key the user pinned for it on first use, if any:

1. The address names a key: that key, whatever anyone claims. If the address also
   carries a fingerprint, the key must match it (else KEY_MISMATCH).
2. The address carries a fingerprint: the pinned key if it has that fingerprint, else
   the one claiming key with that fingerprint, else UNKNOWN_NAME. Typing a fingerprint
   is the user's explicit choice, so it selects a key even when another key is pinned.
3. A key is pinned: if a chain of rotation records ("name moves to key K", each signed
   by the key it moves away from) leads from the pinned key to a claiming key, that key
   (the pin moves there). Otherwise the pinned key, if it still claims the name or
   nobody does (a claim that lapsed must not lock the user out). If only other keys
   claim the name, refuse loudly with KEY_MISMATCH: a name that changed hands without
   the old key's signature is a theft as far as we can tell.
4. Nothing pinned: keys that rotated the name away do not count; exactly one claiming
   key wins. No claim is UNKNOWN_NAME. Several
   distinct claiming keys is UNKNOWN_NAME "ambiguous", listing their fingerprints so
   the user can pick one with alice#FINGERPRINT.ssh. A thief that claims a held name
   therefore never takes it over: pinned clients ignore it, new clients are asked.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from vx6.crypto.keys import fingerprint, key_from_text, key_to_text
from vx6.errors import StreamError, StreamFailed, UsageError
from vx6.wire.records import MAX_LABEL_LEN, is_label

KEY_TEXT_LEN = 52
FINGERPRINT_LEN = 16
MAX_ADDRESS_LEN = KEY_TEXT_LEN + 1 + FINGERPRINT_LEN + 1 + MAX_LABEL_LEN
_BASE32 = re.compile(r"[a-z2-7]+")
MAX_ROTATIONS = 8  # longest chain of re-keys followed from a pin
NAME_POW_BITS = 16  # leading zero bits: ~65k SHA-256 per (name, key), once
_POW_DOMAIN = b"vx6-name-pow-v1\x00"
_EXAMPLE = "expected NAME.SERVICE, NAME#FINGERPRINT.SERVICE or KEY.SERVICE (e.g. alice.ssh)"


def _shown(text: str) -> str:
    """Quote user input for a one-line message, escaped and bounded."""
    return repr(text if len(text) <= 60 else text[:60] + "...")


def validate_label(text: str, what: str) -> str:
    """Return `text` as a canonical lowercase label, or raise UsageError saying why."""
    if not text:
        raise UsageError(f"{what} is empty")
    if len(text) > MAX_LABEL_LEN:
        raise UsageError(f"{what} {_shown(text)} is longer than {MAX_LABEL_LEN} characters")
    if not text.isascii():
        raise UsageError(f"{what} {_shown(text)} must use only a-z, 0-9 and '-'")
    label = text.lower()
    if is_label(label):
        return label
    if label.startswith("-") or label.endswith("-"):
        raise UsageError(f"{what} {_shown(text)} must not start or end with '-'")
    raise UsageError(f"{what} {_shown(text)} must use only a-z, 0-9 and '-'")


def _validate_fingerprint(text: str) -> str:
    fp = text.lower()
    if len(fp) != FINGERPRINT_LEN or not text.isascii() or _BASE32.fullmatch(fp) is None:
        raise UsageError(
            f"fingerprint {_shown(text)} must be {FINGERPRINT_LEN} base32 characters (a-z, 2-7)"
        )
    return fp


def _parse_key_text(text: str) -> bytes:
    key_text = text.lower()
    if _BASE32.fullmatch(key_text) is None:
        raise UsageError(f"key {_shown(text)} must be {KEY_TEXT_LEN} base32 characters (a-z, 2-7)")
    try:
        key = key_from_text(key_text)
    except ValueError:
        raise UsageError(f"key {_shown(text)} is not a valid key") from None
    # 52 base32 characters hold 260 bits; the 4 spare bits must be zero so that each
    # key has exactly one text form.
    if key_to_text(key) != key_text:
        raise UsageError(f"key {_shown(text)} is not in canonical form")
    return key


@dataclass(frozen=True)
class ServiceAddress:
    """A parsed service address: exactly one of `owner_name` / `owner_key` is set."""

    service: str
    owner_name: str | None
    fingerprint: str | None
    owner_key: bytes | None

    def __post_init__(self) -> None:
        if (self.owner_name is None) == (self.owner_key is None):
            raise ValueError("a service address names its owner by name or by key, not both")

    def __str__(self) -> str:
        owner = self.owner_name or ""
        if self.owner_key is not None:
            owner = key_to_text(self.owner_key)
        if self.fingerprint is not None:
            owner += "#" + self.fingerprint
        return f"{owner}.{self.service}"


def parse_service_address(text: str) -> ServiceAddress:
    """Parse any address form; UsageError with a one-line message on bad input."""
    if len(text) > MAX_ADDRESS_LEN:
        raise UsageError(f"address {_shown(text)} is too long; {_EXAMPLE}")
    if not text.isascii() or not text.isprintable():
        raise UsageError(f"address {_shown(text)} has characters outside a-z, 0-9, '-', '#', '.'")
    if text.count(".") != 1:
        raise UsageError(f"address {_shown(text)}: {_EXAMPLE}")
    owner_part, _, service_part = text.partition(".")
    service = validate_label(service_part, "service name")
    owner_text, has_hash, fp_text = owner_part.partition("#")
    fp = _validate_fingerprint(fp_text) if has_hash else None
    if len(owner_text) == KEY_TEXT_LEN:
        key = _parse_key_text(owner_text)
        if fp is not None and fingerprint(key) != fp:
            raise UsageError(f"fingerprint {fp} does not match the key in {_shown(text)}")
        return ServiceAddress(service, None, fp, key)
    name = validate_label(owner_text, "owner name")
    return ServiceAddress(service, name, fp, None)


def validate_allow_entry(text: str) -> str:
    """An allow-list entry in canonical form: a KEY, a NAME or NAME#FINGERPRINT (the owner
    part of an address); UsageError naming the entry otherwise."""
    try:
        if not text.isascii() or not text.isprintable() or "." in text:
            raise UsageError("expected KEY, NAME or NAME#FINGERPRINT")
        owner_text, has_hash, fp_text = text.partition("#")
        fp = _validate_fingerprint(fp_text) if has_hash else None
        if len(owner_text) == KEY_TEXT_LEN:
            key = _parse_key_text(owner_text)
            if fp is not None and fingerprint(key) != fp:
                raise UsageError(f"fingerprint {fp} does not match the key")
            return key_to_text(key) + (f"#{fp}" if fp else "")
        name = validate_label(owner_text, "name")
        return name + (f"#{fp}" if fp else "")
    except UsageError as exc:
        whole = len(text) <= KEY_TEXT_LEN + 1 + FINGERPRINT_LEN  # a KEY#FP is shown whole
        shown = repr(text) if whole else _shown(text)
        raise UsageError(f"allow entry {shown}: {exc}") from None


def _distinct(keys: list[bytes]) -> list[bytes]:
    return list(dict.fromkeys(keys))


def name_pow_ok(name: str, key: bytes, nonce: int, bits: int = NAME_POW_BITS) -> bool:
    """The claim's proof of work: SHA-256(domain, name, key, nonce) starts with `bits`
    zero bits. It binds the name to the key, so it is solved once per (name, key) and
    costs a squatter that much per name and key it wants to hold."""
    digest = hashlib.sha256(
        _POW_DOMAIN + bytes([len(name)]) + name.encode("ascii") + key + nonce.to_bytes(8, "big")
    ).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - bits) == 0 if bits else True


def solve_name_pow(name: str, key: bytes, bits: int = NAME_POW_BITS) -> int:
    nonce = 0
    while not name_pow_ok(name, key, nonce, bits):
        nonce += 1
    return nonce


def follow_rotations(
    start: bytes, rotations: Mapping[bytes, bytes], wanted: set[bytes]
) -> bytes | None:
    """From `start`, follow old -> new rotations (at most MAX_ROTATIONS, no cycles) to a
    key in `wanted`; None if the chain does not get there."""
    key, seen = start, {start}
    for _ in range(MAX_ROTATIONS):
        nxt = rotations.get(key)
        if nxt is None or nxt in seen:
            return None
        if nxt in wanted:
            return nxt
        key = nxt
        seen.add(nxt)
    return None


def resolve_owner(
    address: ServiceAddress,
    claims: list[tuple[str, bytes]],
    pinned: bytes | None,
    rotations: Mapping[bytes, bytes] | None = None,
) -> bytes:
    """Apply the claim rule (module docstring) and return the owner's identity key.

    `claims` are (name, key) of the live, valid name-claim records held for the name;
    claims for other names are ignored. `pinned` is the key pinned for the name, if any.
    Raises StreamFailed(UNKNOWN_NAME or KEY_MISMATCH).
    """
    if address.owner_key is not None:
        if (
            address.fingerprint is not None
            and fingerprint(address.owner_key) != address.fingerprint
        ):
            raise StreamFailed(
                StreamError.KEY_MISMATCH,
                f"the key in {address} does not have fingerprint {address.fingerprint}",
            )
        return address.owner_key
    name = address.owner_name
    keys = _distinct([key for claimed, key in claims if claimed == name])
    if address.fingerprint is not None:
        wanted = address.fingerprint
        if pinned is not None and fingerprint(pinned) == wanted:
            return pinned
        matching = [key for key in keys if fingerprint(key) == wanted]
        if len(matching) == 1:
            return matching[0]
        if not matching:
            raise StreamFailed(
                StreamError.UNKNOWN_NAME, f"no live claim for {name!r} by key {wanted}"
            )
        raise StreamFailed(
            StreamError.UNKNOWN_NAME,
            f"several keys claiming {name!r} share fingerprint {wanted}; use KEY.{address.service}",
        )
    moved_away = rotations or {}
    if pinned is not None:
        # The old key's own signature saying "the name moved" outranks its old claim.
        rotated = follow_rotations(pinned, moved_away, set(keys))
        if rotated is not None:
            return rotated
        if not keys or pinned in keys:
            return pinned
        others = ", ".join(fingerprint(key) for key in keys)
        raise StreamFailed(
            StreamError.KEY_MISMATCH,
            f"{name!r} is pinned to {fingerprint(pinned)} but is now claimed only by {others}",
        )
    keys = [key for key in keys if key not in moved_away]  # it handed the name on
    if len(keys) == 1:
        return keys[0]
    if not keys:
        raise StreamFailed(StreamError.UNKNOWN_NAME, f"no live claim for {name!r}")
    listed = ", ".join(sorted(fingerprint(key) for key in keys))
    raise StreamFailed(
        StreamError.UNKNOWN_NAME,
        f"ambiguous: several keys claim {name!r} ({listed}); "
        f"use {name}#FINGERPRINT.{address.service}",
    )
