"""The service's memories against replayed introductions (docs/hidden.md section 7).

Theory of operation. An intro point forwards whatever INTRODUCE1 it gets, so a relay (or
anyone who saw one) could send the same introduction again and make the service build
circuits to a rendezvous point of its choice. Two memories stop that:

* `ReplayCache`, one per intro: every client key X seen on that intro. An intro serves
  at most its introduction cap before it rotates, plus the introductions that arrive
  while its replacement is built and during its grace period; the cache holds the cap
  plus an eighth for those, and when full the intro takes no more (the caller refuses
  and counts). It is dropped with the intro, whose auth key is never used again, so an
  old X cannot come back.
* `CookieMemory`, one per service: every rendezvous cookie the service answered, for
  `memory` seconds (a rendezvous point forgets a pending cookie after 30 s, so 120 s
  covers it), at most `capacity`. Entries expire in insertion order (all live equally
  long), so pruning pops from the front. When full of live cookies it refuses to
  remember more, and the caller refuses the introduction: memory stays bounded and the
  refusal is counted.
"""

from __future__ import annotations

from collections import OrderedDict


def replay_capacity(introductions_cap: int) -> int:
    """The replay cache size for an intro that rotates after `introductions_cap`."""
    return introductions_cap + introductions_cap // 8


class ReplayCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, client_key: bytes) -> bool:
        return client_key in self._seen

    @property
    def full(self) -> bool:
        return len(self._seen) >= self.capacity

    def add(self, client_key: bytes) -> None:
        if self.full:
            raise OverflowError("replay cache full")  # the caller checks `full` first
        self._seen.add(client_key)


class CookieMemory:
    def __init__(self, memory: float, capacity: int) -> None:
        self.memory = memory
        self.capacity = capacity
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def prune(self, now: float) -> None:
        while self._expiry:
            cookie, expires = next(iter(self._expiry.items()))
            if expires > now:
                return
            del self._expiry[cookie]

    def used(self, cookie: bytes, now: float) -> bool:
        self.prune(now)
        return cookie in self._expiry

    def full(self, now: float) -> bool:
        self.prune(now)
        return len(self._expiry) >= self.capacity

    def remember(self, cookie: bytes, now: float) -> None:
        if self.full(now):
            raise OverflowError("cookie memory full")  # the caller checks `full` first
        self._expiry[cookie] = now + self.memory
