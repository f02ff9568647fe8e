"""When a relay's onion keys rotate, sans-IO: the caller brings `now` and the time the
current key was made, and gets back what to do and when to look again.

Theory of operation. A node holds at most two onion keys (DESIGN.md section 3): the
current one, published in its node record, and the previous one, which CREATE cells may
still name for one more lifetime, because a client plans a circuit from whatever node
record it holds and a fresh record takes a while to reach everyone. So every key lives
two lifetimes at most:

* age < lifetime: the key is current. Nothing to do until `made + lifetime`.
* lifetime <= age < 2 x lifetime: rotate. The current key becomes the previous one (the
  old previous key, whose extra lifetime ends now, is dropped) and a fresh key becomes
  current; the node republishes its record with it.
* age >= 2 x lifetime (the node was down past the key's grace period too): both keys
  are dropped and a fresh one is made. A key that old has not been published in a
  record anyone still holds, and keeping it would only lengthen the time a stolen onion
  key could open recorded handshakes.

The store (store/home.py) applies the step to the key files; the node (node/
onion_rotation.py) sleeps until `due` and hands the new keys to the router and the
publisher.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

ONION_KEY_LIFETIME = 7 * 24 * 3600.0  # weekly, like DESIGN.md asks; `onion_key_lifetime`


class OnionKeyAction(Enum):
    KEEP = "keep"  # the current key is young enough: nothing changes
    MAKE = "make"  # there is no current key (first start, or a crash mid-rotation)
    ROTATE = "rotate"  # current -> previous (the old previous is dropped), fresh current
    RENEW = "renew"  # both keys are past their grace: drop them, fresh current


@dataclass(frozen=True)
class OnionKeyStep:
    action: OnionKeyAction
    due: float  # when the next rotation is due (the previous key is dropped then too)


def onion_key_step(now: float, current_made: float | None, lifetime: float) -> OnionKeyStep:
    """What to do with the onion keys at `now`, given when the current key was made
    (None: there is none) and the configured lifetime in seconds."""
    if lifetime <= 0:
        raise ValueError("an onion key lifetime is a positive number of seconds")
    if current_made is None:
        return OnionKeyStep(OnionKeyAction.MAKE, now + lifetime)
    # A key "made" in the future (the clock went back) counts as made now: it rotates
    # one lifetime from here rather than never or at once.
    age = max(0.0, now - current_made)
    if age < lifetime:
        return OnionKeyStep(OnionKeyAction.KEEP, now - age + lifetime)
    if age < 2 * lifetime:
        return OnionKeyStep(OnionKeyAction.ROTATE, now + lifetime)
    return OnionKeyStep(OnionKeyAction.RENEW, now + lifetime)
