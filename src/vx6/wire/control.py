"""Control-socket messages: one JSON object per line, both directions.

The control socket is local (a Unix socket only the node's user can open), so JSON is
plenty; the bounds still apply because a buggy or hostile local client must not be
able to make the daemon allocate without bound or raise out of the decoder:

* a line is at most `MAX_CONTROL_LINE` bytes;
* brackets nest at most `MAX_NESTING` deep (checked by a scan before json.loads, whose
  recursion would otherwise raise RecursionError);
* an integer has at most `MAX_INT_DIGITS` digits (Python refuses to convert more than
  4300 with ValueError, and a long one costs quadratic time before that); NaN and
  Infinity are refused;
* every op's fields have the types its `OP_FIELDS` entry names (`check_fields`): an
  `allow` of "abc" is refused, never iterated into the list a, b, c.

Anything else is a DecodeError with a message the control socket sends back as
`{"ok": false, "error": ...}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vx6.errors import DecodeError

MAX_CONTROL_LINE = 64 * 1024
MAX_NESTING = 32
MAX_INT_DIGITS = 64

# Field kinds: "str", "int" (not bool), "bool", "str-list"; a trailing "?" allows null.
OP_FIELDS: dict[str, dict[str, str]] = {
    "expose": {
        "name": "str",
        "target": "str",
        "allow": "str-list",
        "public": "bool",
        "allow_remote_target": "bool",
    },
    "unexpose": {"name": "str"},
    "connect": {
        "service": "str",
        "name": "str?",
        "local": "str",
        "via": "str?",
        "hops": "int",
        "relay_fallback": "int",
        "profile": "str?",
    },
    "disconnect": {"name": "str"},
    "resolve": {"address": "str"},
    "ping": {"address": "str", "count": "int"},
    "rotate": {"to": "str"},
    "unpin": {"name": "str"},
    "build_circuit": {"hops": "int", "owner": "str"},
    "nc": {"target": "str", "hops": "int", "profile": "str?"},
}


def encode_message(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode("utf-8") + b"\n"


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise DecodeError(f"control message has an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_constant(text: str) -> float:
    raise DecodeError(f"control message has {text}, which is not JSON")


def nesting_depth(line: bytes, limit: int = MAX_NESTING) -> int:
    """How deep brackets nest outside strings, counted up to `limit` + 1 (then it stops)."""
    if line.count(b"[") + line.count(b"{") <= limit:
        return 0  # cannot be deeper than the number of brackets: no scan needed
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def decode_message(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_CONTROL_LINE:
        raise DecodeError("control message too large")
    if nesting_depth(line) > MAX_NESTING:
        raise DecodeError(f"control message nests deeper than {MAX_NESTING}")
    try:
        value = json.loads(line, parse_int=_parse_int, parse_constant=_parse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"control message is not JSON: {exc}") from exc
    except (RecursionError, ValueError) as exc:  # the checks above should make these unreachable
        raise DecodeError(f"control message refused: {type(exc).__name__}") from exc
    if not isinstance(value, dict):
        raise DecodeError("control message must be a JSON object")
    return value


def _kind_ok(value: object, kind: str) -> bool:
    if kind.endswith("?"):
        return value is None or _kind_ok(value, kind[:-1])
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str-list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    raise ValueError(f"unknown field kind {kind!r}")


_KIND_TEXT = {
    "str": "a string",
    "int": "an integer",
    "bool": "true or false",
    "str-list": "a list of strings",
}


def check_fields(request: Mapping[str, Any], fields: Mapping[str, str]) -> None:
    """DecodeError naming the first field present with the wrong type. Fields that are
    absent are left to the op's defaults; fields the op does not know are ignored."""
    for name, kind in fields.items():
        if name in request and not _kind_ok(request[name], kind):
            wanted = _KIND_TEXT[kind.rstrip("?")] + (" or null" if kind.endswith("?") else "")
            raise DecodeError(f"{name!r} must be {wanted}, not {type(request[name]).__name__}")


def check_request(request: Mapping[str, Any]) -> None:
    """The types of every field of a known op (`OP_FIELDS`); DecodeError if one is wrong."""
    op = request.get("op")
    if not isinstance(op, str):
        raise DecodeError("control message needs an 'op' string")
    fields = OP_FIELDS.get(op)
    if fields is not None:
        check_fields(request, fields)
