"""The control socket against hostile local input: the decoder raises only DecodeError
(never RecursionError or ValueError), every op's fields are type-checked, and a real
node answers a clean error and keeps answering `status`."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vx6.app.localnet import LocalNet, LocalNode
from vx6.errors import DecodeError
from vx6.net.control import read_line
from vx6.wire.control import (
    MAX_CONTROL_LINE,
    MAX_NESTING,
    check_request,
    decode_message,
    nesting_depth,
)

DEEP = b"[" * 60_000
HUGE_INT = b'{"op": "status", "n": ' + b"7" * 60_000 + b"}"


def test_deep_nesting_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="nests deeper"):
        decode_message(DEEP)
    with pytest.raises(DecodeError, match="nests deeper"):
        decode_message(b'{"a": ' + b'{"b": ' * 40 + b"1" + b"}" * 41)


def test_huge_integer_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="digits"):
        decode_message(HUGE_INT)
    with pytest.raises(DecodeError, match="not JSON"):
        decode_message(b'{"a": NaN}')


def test_brackets_inside_strings_do_not_count() -> None:
    line = json.dumps({"op": "status", "s": "[" * 1000 + '\\"{' * 100}).encode()
    assert decode_message(line)["op"] == "status"
    inside = MAX_NESTING - 1  # the object around them is one level
    assert decode_message(b'{"a": ' + b"[" * inside + b"]" * inside + b"}")["a"]


@given(depth=st.integers(0, 200), inner=st.sampled_from([b"1", b'"x"', b"{}", b"[]"]))
def test_nesting_property(depth: int, inner: bytes) -> None:
    line = b'{"a": ' + b"[" * depth + inner + b"]" * depth + b"}"
    deepest = 1 + depth + (1 if inner in (b"{}", b"[]") else 0)
    if deepest > MAX_NESTING:
        with pytest.raises(DecodeError):
            decode_message(line)
    else:
        assert nesting_depth(line, limit=10**6) in (0, deepest)
        assert isinstance(decode_message(line)["a"], list | int | str | dict)


@given(st.binary(max_size=2000))
def test_decoder_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_message(data)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"op": "expose", "name": "ssh", "target": "127.0.0.1:22", "allow": "abc"}, "allow"),
        ({"op": "expose", "name": "ssh", "allow": ["ok", 3]}, "allow"),
        ({"op": "expose", "name": ["ssh"]}, "name"),
        ({"op": "expose", "public": "yes"}, "public"),
        ({"op": "connect", "hops": True}, "hops"),
        ({"op": "connect", "via": 5}, "via"),
        ({"op": "ping", "count": "3"}, "count"),
        ({"op": "nc", "target": {}}, "target"),
    ],
)
def test_wrong_field_types_are_refused(request_: dict[str, Any], field: str) -> None:
    with pytest.raises(DecodeError, match=repr(field)):
        check_request(request_)


def test_right_field_types_pass() -> None:
    check_request({"op": "connect", "service": "a.b", "name": None, "via": None, "hops": 2})
    check_request({"op": "expose", "name": "x", "allow": [], "public": True})
    check_request({"op": "status", "anything": [1, 2]})


def _raw(path: Path, line: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(line + b"\n")
        return json.loads(read_line(s))


@pytest.fixture(scope="module")
def node() -> Any:
    with LocalNet() as net:
        yield net.start("solo")


def test_node_answers_hostile_lines_and_keeps_serving(node: LocalNode) -> None:
    assert len(DEEP) < MAX_CONTROL_LINE and len(HUGE_INT) < MAX_CONTROL_LINE
    for line, error in ((DEEP, "nests deeper"), (HUGE_INT, "digits")):
        reply = _raw(node.control, line)
        assert reply["ok"] is False and error in reply["error"]
        assert node.call("status")["ok"] is True
    reply = node.try_call("expose", name="ssh", target="127.0.0.1:22", allow="abc")
    assert reply["ok"] is False and "'allow' must be a list of strings" in reply["error"]
    assert node.call("services")["services"] == []
    assert node.call("status")["ok"] is True
