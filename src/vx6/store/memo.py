"""A memo of answers derived from the node's registry, dropped when the registry changes.

Theory of operation. Opening a stream asks the registry the same questions every time:
the client resolves the owner's name (claims, rotations, pin: several SQLite queries and
record decodes), the owner resolves every name on the service's allow-list. Between
changes to the registry the answers are the same, so they are kept here against the
registry's `generation` (which moves on every stored or purged record, every pin, and
every commit by another process) and the time its first record expires.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Generic, TypeVar

from vx6.store.registry import Registry

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RegistryMemo(Generic[K, V]):
    """Answers computed from the registry (a name's key, a service's allowed keys), kept
    so that every new stream does not repeat the same SQLite queries.

    Obviously correct rather than clever: every entry is dropped as soon as the
    registry's `generation` moves or the first of its records expires (resolution only
    counts unexpired records, so an expiry can change an answer too). An answer is kept
    only if the registry did not change while it was computed (a resolution may re-pin).
    Bounded: cleared when full.
    """

    def __init__(self, registry: Registry, max_entries: int = 1024) -> None:
        self._registry = registry
        self._max = max_entries
        self._entries: dict[K, V] = {}
        self._generation: tuple[int, int] | None = None
        self._since = math.inf  # the entries hold for self._since <= now < self._until
        self._until = -math.inf

    def get(self, key: K, now: float) -> V | None:
        generation = self._registry.generation
        if generation != self._generation or not self._since <= now < self._until:
            self._entries.clear()
            self._generation = generation
            self._since = now  # a clock set back could revive expired records
            self._until = self._registry.next_expiry(now)
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        """Keep `value`, computed from the registry as it was at the last `get`."""
        if self._registry.generation != self._generation:
            return  # changed under the computation: the next get starts afresh
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = value

    def __len__(self) -> int:
        return len(self._entries)
