"""Rotating the onion keys while the node runs.

Theory of operation. The schedule is core/circuit/onion_schedule.py and the key files are
the home's (store/home.py `onion_key_state`). This loop sleeps until the next rotation is
due, applies the schedule to the files and, when the current key changed, hands the new
key list (current first, then the previous one, which CREATE cells may still name) to
`rotated`: the node gives it to the circuit router and republishes its node record.
Circuits already built keep working across a rotation: their hop keys were derived when
they were created and do not depend on the onion key any more.

The sleep is capped at MAX_SLEEP, so a wall clock that jumps (the files carry wall-clock
times) is noticed within that long. A home that cannot be written (disk full, read-only)
leaves the keys as they are and is retried after RETRY_AFTER, with one warning per failure
at most that often; the node keeps running on its current keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from vx6.crypto.keys import StaticKey
from vx6.net.ports import SYSTEM_CLOCK, Clock
from vx6.store.home import HomeError

log = logging.getLogger("vx6.onion")

MAX_SLEEP = 600.0
MIN_SLEEP = 0.05  # a due time a hair in the past (mtime resolution) must not spin
RETRY_AFTER = 60.0


class OnionKeyFiles(Protocol):
    """Where the keys live (store/home.py `Home`)."""

    def onion_key_state(self, now: float, lifetime: float) -> tuple[list[StaticKey], float]: ...


async def onion_key_loop(
    home: OnionKeyFiles,
    lifetime: float,
    keys: list[StaticKey],
    rotated: Callable[[list[StaticKey]], None],
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Run for the node's lifetime (a task in its task group); `keys` are the ones the
    node started with."""
    due = clock.wall()  # look at once: the node may have taken a while to start
    while True:
        # A periodic timer, not synchronisation: wake when the rotation is due.
        await clock.sleep(min(max(due - clock.wall(), MIN_SLEEP), MAX_SLEEP))
        try:
            fresh, due = home.onion_key_state(clock.wall(), lifetime)
        except HomeError as exc:
            log.warning("onion key rotation failed, keeping the current keys: %s", exc)
            due = clock.wall() + min(RETRY_AFTER, lifetime)
            continue
        if [k.public for k in fresh] != [k.public for k in keys]:
            keys = fresh
            log.info("onion key rotated (%d key(s) accepted)", len(keys))
            rotated(keys)
