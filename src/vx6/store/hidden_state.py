"""A hidden service's state file, `HOME/hidden/NAME/state.json` (docs/hidden.md 3, 6).

Theory of operation. The file holds what a service must remember across restarts and
nothing it could recompute: its guards (section 6: chosen once, kept), the last
descriptor revision it published (section 3: each new one must be above it) and when.

    {"version": 1,
     "guards": [{"identity": KEY_TEXT, "chosen_at": 1767000000.0, "down_since": null}],
     "last_revision": 1767000000123, "last_published": 1767000000.5}

Decoding is strict: any other shape is a `HiddenStateError` naming what is wrong, never
another exception. `vx6.store.home.Home` writes the file atomically (temporary file,
fsync, rename; 0600), reads a missing file as a fresh state, and moves a malformed one
aside (logged) and starts afresh: a lost guard choice costs a new choice, and a lost
revision is repaired by the wall-clock revision rule.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from vx6.core.hidden.target import GUARD_COUNT
from vx6.core.names import KEY_TEXT_LEN
from vx6.crypto.keys import key_from_text, key_to_text
from vx6.errors import UsageError

STATE_VERSION = 1
MAX_STATE_BYTES = 64 * 1024
_MAX_REVISION = 2**63 - 1


class HiddenStateError(UsageError):
    """A state file that is not what this VX6 writes."""


@dataclass(frozen=True)
class GuardState:
    identity: bytes  # the relay's identity key
    chosen_at: float
    down_since: float | None = None


@dataclass(frozen=True)
class HiddenState:
    guards: tuple[GuardState, ...] = ()
    last_revision: int = 0
    last_published: float | None = None

    def __post_init__(self) -> None:
        if len(self.guards) > GUARD_COUNT:
            raise ValueError(f"a service keeps at most {GUARD_COUNT} guards")


def encode_state(state: HiddenState) -> bytes:
    guards = [
        {"identity": key_to_text(g.identity), "chosen_at": g.chosen_at, "down_since": g.down_since}
        for g in state.guards
    ]
    doc = {
        "version": STATE_VERSION,
        "guards": guards,
        "last_revision": state.last_revision,
        "last_published": state.last_published,
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def _time(value: Any, what: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HiddenStateError(
            f"{what} must be a time in seconds" + (" or null" if optional else "")
        )
    if value < 0:
        raise HiddenStateError(f"{what} must not be negative")
    return float(value)


def _guard(value: Any, index: int) -> GuardState:
    what = f"guards[{index}]"
    if not isinstance(value, dict) or set(value) != {"identity", "chosen_at", "down_since"}:
        raise HiddenStateError(f"{what} must have exactly identity, chosen_at and down_since")
    text = value["identity"]
    if not isinstance(text, str) or len(text) != KEY_TEXT_LEN:
        raise HiddenStateError(f"{what}.identity must be a {KEY_TEXT_LEN}-character key")
    try:
        key = key_from_text(text)
    except ValueError:
        raise HiddenStateError(f"{what}.identity is not a key") from None
    if key_to_text(key) != text:
        raise HiddenStateError(f"{what}.identity is not in canonical form")
    chosen = _time(value["chosen_at"], f"{what}.chosen_at")
    assert chosen is not None
    return GuardState(key, chosen, _time(value["down_since"], f"{what}.down_since", True))


def decode_state(raw: bytes) -> HiddenState:
    """The state in `raw`; HiddenStateError saying what is wrong otherwise."""
    if len(raw) > MAX_STATE_BYTES:
        raise HiddenStateError(f"larger than {MAX_STATE_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError: ValueError
        raise HiddenStateError(f"not JSON: {exc}") from None
    expected = {"version", "guards", "last_revision", "last_published"}
    if not isinstance(doc, dict) or set(doc) != expected:
        raise HiddenStateError("must be an object with " + ", ".join(sorted(expected)))
    if doc["version"] != STATE_VERSION or isinstance(doc["version"], bool):
        raise HiddenStateError(f"version {doc['version']!r} is not {STATE_VERSION}")
    guards = doc["guards"]
    if not isinstance(guards, list) or len(guards) > GUARD_COUNT:
        raise HiddenStateError(f"guards must be a list of at most {GUARD_COUNT}")
    revision = doc["last_revision"]
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise HiddenStateError("last_revision must be an integer")
    if not 0 <= revision <= _MAX_REVISION:
        raise HiddenStateError("last_revision must be from 0 to 2**63-1")
    return HiddenState(
        guards=tuple(_guard(g, i) for i, g in enumerate(guards)),
        last_revision=revision,
        last_published=_time(doc["last_published"], "last_published", True),
    )
