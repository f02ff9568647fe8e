"""Which relays each side of a rendezvous may use (docs/hidden.md section 6).

The rendezvous cookie splits the relays in two halves. The client draws cookies until
every relay of its side is in half CLIENT_HALF; the service takes its middle relays from
SERVICE_HALF and prefers a guard there. So the two sides share no relay without either
end telling the other anything about its relays.
"""

from __future__ import annotations

import hashlib

CLIENT_HALF = 0
SERVICE_HALF = 1
_SIDE_DOMAIN = b"vx6-hs-side\x00"


def relay_half(cookie: bytes, relay_identity: bytes) -> int:
    """The half (0 or 1) a relay falls in for the rendezvous with this cookie."""
    return hashlib.sha3_256(_SIDE_DOMAIN + cookie + relay_identity).digest()[0] & 1
