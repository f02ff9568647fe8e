"""Every exception class vx6 defines is a VX6Error, and the protocol errors say whose
fault they are (vx6/errors.py: the h11-style local/remote split)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import vx6
from vx6 import errors
from vx6.errors import (
    CircuitFailure,
    CloseCode,
    DecodeError,
    DestroyReason,
    LinkError,
    LocalProtocolError,
    RemoteProtocolError,
    TransitionError,
    VX6Error,
)


def _vx6_exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(vx6.__path__, "vx6."):
        if info.name in ("vx6.__main__",):
            continue  # runs the command line when imported
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("vx6"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def test_every_exception_defined_in_vx6_is_a_vx6_error() -> None:
    classes = _vx6_exception_classes()
    assert len(classes) >= 10, classes  # the walk found the package's modules
    outside = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, VX6Error)]
    assert outside == []


def test_the_walk_sees_classes_defined_outside_errors_py() -> None:
    names = {c.__qualname__ for c in _vx6_exception_classes()}
    assert {"HomeError", "RegistryError", "RegistryWriteError", "_Stopping"} <= names


def test_peer_input_errors_are_remote_and_carry_a_close_code() -> None:
    decode = DecodeError("truncated frame")
    assert isinstance(decode, RemoteProtocolError) and isinstance(decode, LinkError)
    assert decode.code is CloseCode.PROTOCOL_ERROR
    assert str(decode) == decode.reason == "truncated frame"  # quoted as it was
    remote = RemoteProtocolError(CloseCode.FLOW_CONTROL, "stream 3 exceeded its credit")
    assert remote.code is CloseCode.FLOW_CONTROL
    assert str(remote) == "FLOW_CONTROL: stream 3 exceeded its credit"


def test_local_misuse_is_not_a_remote_error() -> None:
    assert issubclass(TransitionError, LocalProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not issubclass(LinkError, RemoteProtocolError)  # outcomes: dial failed, closed
    assert not issubclass(CircuitFailure, LinkError)  # ends a circuit, not its link


def test_wire_codes_live_in_errors_and_keep_their_numbers() -> None:
    assert DestroyReason.__module__ == "vx6.errors"
    assert errors.CircuitFailure(DestroyReason.HOP_LIMIT, "x").reason is DestroyReason.HOP_LIMIT
    assert 2 not in {c.value for c in CloseCode}  # reserved: was FRAME_TOO_LARGE
    assert CloseCode.INTERNAL_ERROR == 11
    assert len({c.value for c in CloseCode}) == len(CloseCode)
