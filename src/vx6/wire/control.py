"""Control-socket messages: one JSON object per line, both directions.

The control socket is local (a Unix socket only the node's user can open), so JSON is
plenty; the size cap and the object check still apply because a buggy or hostile local
client must not be able to make the daemon allocate without bound.
"""

from __future__ import annotations

import json
from typing import Any

from vx6.errors import DecodeError

MAX_CONTROL_LINE = 64 * 1024


def encode_message(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode("utf-8") + b"\n"


def decode_message(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_CONTROL_LINE:
        raise DecodeError("control message too large")
    try:
        value = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"control message is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise DecodeError("control message must be a JSON object")
    return value
