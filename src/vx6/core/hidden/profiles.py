"""Path profiles of a hidden-service connection (docs/hidden.md section 6).

| profile  | client side | rendezvous | service side | intro circuits (before the intro) |
|----------|-------------|------------|--------------|-----------------------------------|
| fast     | 3 relays    | 1          | 3 relays     | 2 relays                          |
| balanced | 5 relays    | 1          | 5 relays     | 4 relays                          |
"""

from __future__ import annotations

from enum import Enum


class PathProfile(Enum):
    FAST = "fast"
    BALANCED = "balanced"

    @property
    def side_relays(self) -> int:
        """Relays on each side of the rendezvous point (the client's, the service's)."""
        return 3 if self is PathProfile.FAST else 5

    @property
    def intro_relays(self) -> int:
        """Relays on an intro circuit before the intro point itself."""
        return self.side_relays - 1
