"""Sealing and opening a hidden-service descriptor body (docs/hidden.md sections 2-3).

Theory of operation. `seal_descriptor_body` is what the service publishes for one
period and revision: the inner plaintext (its intros) sealed under the descriptor
cookie, the client entries (listed clients at random slots, random bytes in the
others) and the ephemeral key around it in the outer plaintext, sealed under the
blinded key and the subcredential; `salt | outer ciphertext` is always
DESCRIPTOR_BODY_SIZE bytes. `open_descriptor_body` is the client's inverse, and says
exactly what went wrong: DecodeError for bytes of the wrong shape (size, padding,
version), CryptoError for a layer that does not open (tampered, or another period or
revision), NotAuthorized for an allow-list descriptor with no entry for this client.
Randomness comes in as a callable, time as `now`; nothing here keeps state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from vx6.crypto.hidden import (
    AliasKey,
    blind_public,
    blinding_factor,
    ed25519_public_to_x25519,
    ed25519_seed_to_x25519_private,
)
from vx6.crypto.hidden_desc import (
    COOKIE_LEN,
    client_auth_entry,
    find_cookie,
    open_inner,
    open_outer,
    seal_inner,
    seal_outer,
    subcredential,
)
from vx6.crypto.keys import StaticKey
from vx6.errors import CryptoError, DecodeError, NotAuthorized, UsageError
from vx6.wire.hidden_desc import (
    CLIENT_ENTRY_LEN,
    DESCRIPTOR_BODY_SIZE,
    MAX_DESCRIPTOR_CLIENTS,
    SALT_LEN,
    InnerPlaintext,
    OuterPlaintext,
    decode_inner,
    decode_outer,
    encode_inner,
    encode_outer,
)

PERIOD_LENGTH = 86400
PERIOD_OFFSET = 43200
DESCRIPTOR_LIFETIME = 3 * 3600  # storers refuse more than 6 h (core/records.py)
# Near a period change both sides of it matter: the service publishes for the next
# period this long before it starts, and accepts introductions made with the previous
# period's descriptor this long after it ended (clocks and caches lag).
PERIOD_OVERLAP = 3600
_NO_COOKIE = b""  # a public descriptor's inner layer is keyed by the alias alone

RandomBytes = Callable[[int], bytes]


def time_period(now: float) -> int:
    """The period `now` (Unix seconds) falls in; periods change at 12:00 UTC."""
    return (math.floor(now) - PERIOD_OFFSET) // PERIOD_LENGTH


def publish_periods(now: float, *, include_previous: bool = False) -> list[int]:
    """The periods whose descriptors matter at `now`: the current one, the next one in
    the last PERIOD_OVERLAP seconds before it starts, and with `include_previous` the
    previous one in the first PERIOD_OVERLAP seconds after it ended."""
    current = time_period(now)
    periods = [current]
    if time_period(now + PERIOD_OVERLAP) != current:
        periods.append(current + 1)
    if include_previous and time_period(now - PERIOD_OVERLAP) != current:
        periods.append(current - 1)
    return periods


def blinded_key_for(alias_public: bytes, period: int) -> bytes:
    """A' of the alias for the period: what the descriptor is signed with and stored
    under. CryptoError if the alias key is not a valid point."""
    return blind_public(alias_public, blinding_factor(alias_public, period, PERIOD_LENGTH))


def _random_index(random: RandomBytes, bound: int) -> int:
    """A uniform integer in [0, bound) from random bytes (rejection sampling)."""
    limit = 256 - 256 % bound
    while True:
        byte = random(1)[0]
        if byte < limit:
            return byte % bound


def _random_slots(random: RandomBytes, count: int) -> list[int]:
    """`count` distinct slots of the MAX_DESCRIPTOR_CLIENTS, uniformly (Fisher-Yates)."""
    slots = list(range(MAX_DESCRIPTOR_CLIENTS))
    for i in range(MAX_DESCRIPTOR_CLIENTS - 1, 0, -1):
        j = _random_index(random, i + 1)
        slots[i], slots[j] = slots[j], slots[i]
    return slots[:count]


def seal_descriptor_body(
    alias: AliasKey | bytes,
    period: int,
    revision: int,
    contents: InnerPlaintext,
    clients: Sequence[bytes],
    random: RandomBytes,
) -> bytes:
    """The DESCRIPTOR_BODY_SIZE body for `period` and `revision`. `clients` are the
    Ed25519 identity keys of an allow-list (empty: a public descriptor). UsageError for
    more than MAX_DESCRIPTOR_CLIENTS clients or a client key that is not a valid key."""
    alias_public = alias.public if isinstance(alias, AliasKey) else alias
    if len(clients) > MAX_DESCRIPTOR_CLIENTS:
        raise UsageError(
            f"a descriptor lists at most {MAX_DESCRIPTOR_CLIENTS} clients, not {len(clients)}"
        )
    try:
        client_keys = [ed25519_public_to_x25519(c) for c in clients]
    except CryptoError as exc:
        raise UsageError(f"an allowed client key is not a valid Ed25519 key: {exc}") from None
    blinded = blinded_key_for(alias_public, period)
    subcred = subcredential(alias_public, blinded)
    salt = random(SALT_LEN)
    e_private = random(32)
    ephemeral = StaticKey(e_private).public
    entries = [random(CLIENT_ENTRY_LEN) for _ in range(MAX_DESCRIPTOR_CLIENTS)]
    cookie = _NO_COOKIE
    if client_keys:
        cookie = random(COOKIE_LEN)
        for slot, client_x in zip(
            _random_slots(random, len(client_keys)), client_keys, strict=True
        ):
            entries[slot] = client_auth_entry(e_private, ephemeral, client_x, subcred, cookie)
    inner_ct = seal_inner(blinded, subcred, revision, salt, cookie, encode_inner(contents))
    outer = OuterPlaintext(bool(client_keys), ephemeral, tuple(entries), inner_ct)
    body = salt + seal_outer(blinded, subcred, revision, salt, encode_outer(outer))
    assert len(body) == DESCRIPTOR_BODY_SIZE
    return body


def open_descriptor_body(
    body: bytes,
    alias_public: bytes,
    period: int,
    revision: int,
    client_seed: bytes | None,
) -> InnerPlaintext:
    """The intros of a descriptor body. `client_seed` is this node's identity seed (for
    an allow-list descriptor; None: this client cannot be listed)."""
    if len(body) != DESCRIPTOR_BODY_SIZE:
        raise DecodeError(f"a descriptor body is {DESCRIPTOR_BODY_SIZE} bytes, not {len(body)}")
    blinded = blinded_key_for(alias_public, period)
    subcred = subcredential(alias_public, blinded)
    salt, outer_ct = body[:SALT_LEN], body[SALT_LEN:]
    outer = decode_outer(open_outer(blinded, subcred, revision, salt, outer_ct))
    cookie = _NO_COOKIE
    if outer.auth:
        if client_seed is None:
            raise NotAuthorized("the descriptor lists its clients and this node has no key")
        client_x = ed25519_seed_to_x25519_private(client_seed)
        found = find_cookie(outer.entries, client_x, outer.ephemeral, subcred)
        if found is None:
            raise NotAuthorized("the descriptor has no entry for this node's key")
        cookie = found
    inner = open_inner(blinded, subcred, revision, salt, cookie, outer.inner_ciphertext)
    return decode_inner(inner)
