"""Store tokens and per-source rate limits: the DHT's defences against spoofed and
flooding sources.

Tokens: a node answering FIND_NODE / FIND_VALUE hands the requester a token, a keyed
hash of the requester's IP address under a secret that rotates every
`token_rotation` seconds; a STORE is accepted only with a token for its own source
address under the current or the previous secret. Someone who spoofs a victim's address
never sees the victim's token, so it cannot make us store (and later send) on the
victim's behalf. Secrets come from the caller's randomness.

Proven sources: a source has proved its address when it answered a request we sent to
it (the answer matched a random txid only that address received) or echoed a token we
issued to its address. `ProvenSources` remembers that per IP for `lifetime` seconds;
an unproved source gets answers no larger than its request (anti-amplification, see
endpoint.py). `PeerTokens` keeps the token each responder gave us, so our requests to it
carry the proof. Both tables are bounded; a forgotten entry only costs a round trip.

Rate limits: one token bucket per source IP address (core/budget.py `SourceLimiter`:
refill `rate` per second up to `burst`), checked before any parsing or signature work.
The table of sources is bounded: when full, the source heard from least recently is
forgotten (a forgotten source starts again with a full bucket, the generous direction).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from vx6.wire.dht import TOKEN_LEN


class TokenIssuer:
    def __init__(self, entropy: Callable[[int], bytes], rotation: float, now: float) -> None:
        self._entropy = entropy
        self._rotation = rotation
        self._current = entropy(32)
        self._previous = self._current
        self._rotated_at = now

    def _mac(self, secret: bytes, host: str) -> bytes:
        return hashlib.blake2b(host.encode("ascii"), key=secret, digest_size=TOKEN_LEN).digest()

    def maybe_rotate(self, now: float) -> None:
        if now - self._rotated_at >= self._rotation:
            self._previous, self._current = self._current, self._entropy(32)
            self._rotated_at = now

    def issue(self, host: str) -> bytes:
        return self._mac(self._current, host)

    def valid(self, host: str, token: bytes) -> bool:
        return token in (self._mac(self._current, host), self._mac(self._previous, host))


class BoundedTable:
    """A dict of at most `size` entries; the one written least recently goes first."""

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._items: dict[object, object] = {}

    def put(self, key: object, value: object) -> None:
        self._items.pop(key, None)
        self._items[key] = value
        if len(self._items) > self._size:
            del self._items[next(iter(self._items))]

    def get(self, key: object) -> object:
        return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)


class ProvenSources:
    def __init__(self, lifetime: float, size: int) -> None:
        self._lifetime = lifetime
        self._until = BoundedTable(size)  # host -> proved until

    def prove(self, host: str, now: float) -> None:
        self._until.put(host, now + self._lifetime)

    def proven(self, host: str, now: float) -> bool:
        until = self._until.get(host)
        return isinstance(until, float) and now < until

    def __len__(self) -> int:
        return len(self._until)


class PeerTokens:
    def __init__(self, size: int) -> None:
        self._tokens = BoundedTable(size)  # (host, port) -> the token it gave us

    def remember(self, address: tuple[str, int], token: bytes) -> None:
        self._tokens.put(address, token)

    def token_for(self, address: tuple[str, int]) -> bytes:
        token = self._tokens.get(address)
        return token if isinstance(token, bytes) else b""
