"""Stream frames over circuits: the link's stream control frames as relay messages.

A stream reached through a circuit speaks the same protocol as one on a direct link
(OPEN, OPEN_OK, OPEN_FAIL, CREDIT, FIN, RESET); each of those frames travels as one relay
message, and DATA as RELAY DATA. This module is that mapping, both ways:

    OPEN      <-> BEGIN      flags u8 | service name (ASCII, 1..255 bytes)
    OPEN_OK   <-> CONNECTED  (empty)
    OPEN_FAIL <-> REFUSED    code u8 | reason (UTF-8, at most MAX_REASON bytes)
    CREDIT    <-> CREDIT     increment u32
    FIN       <-> END        (empty)
    RESET     <-> RESET      code u8

Stream id 0 is the circuit itself, never a stream.
"""

from __future__ import annotations

from vx6.errors import DecodeError
from vx6.wire import frames as fr
from vx6.wire.cells import RelayCommand, RelayMessage, RelayMessageFields

_STREAM_COMMANDS = frozenset(
    {
        RelayCommand.BEGIN,
        RelayCommand.CONNECTED,
        RelayCommand.END,
        RelayCommand.CREDIT,
        RelayCommand.REFUSED,
        RelayCommand.RESET,
    }
)


def is_stream_control(command: int) -> bool:
    return command in _STREAM_COMMANDS


def stream_message(frame: fr.ControlFrame) -> RelayMessage:
    """A link stream frame as the relay message that carries it over a circuit."""
    match frame:
        case fr.Open(sid, service, flags):
            name = service.encode("ascii")
            if not 0 < len(name) <= 255:
                raise ValueError("service name must be 1..255 bytes")
            return RelayMessage(RelayCommand.BEGIN, sid, bytes([flags]) + name)
        case fr.OpenOk(sid):
            return RelayMessage(RelayCommand.CONNECTED, sid, b"")
        case fr.OpenFail(sid, code, reason):
            text = fr.short_text(reason)
            return RelayMessage(RelayCommand.REFUSED, sid, bytes([code]) + text)
        case fr.Credit(sid, increment):
            return RelayMessage(RelayCommand.CREDIT, sid, increment.to_bytes(4, "big"))
        case fr.Fin(sid):
            return RelayMessage(RelayCommand.END, sid, b"")
        case fr.Reset(sid, code):
            return RelayMessage(RelayCommand.RESET, sid, bytes([code]))
    raise ValueError(f"not a stream frame: {frame!r}")


def stream_frame(message: RelayMessageFields) -> fr.ControlFrame:
    """The inverse of `stream_message`; DecodeError on anything malformed."""
    command, sid, data = message.command, message.stream_id, bytes(message.data)
    if sid == 0:
        raise DecodeError("stream id 0 is reserved for the circuit")
    if command == RelayCommand.BEGIN:
        if len(data) < 2 or not data[1:].isascii():
            raise DecodeError("BEGIN needs flags and an ASCII service name")
        return fr.Open(sid, data[1:].decode("ascii"), data[0])
    if command == RelayCommand.CONNECTED:
        _exact(data, 0, "CONNECTED")
        return fr.OpenOk(sid)
    if command == RelayCommand.REFUSED:
        if not 1 <= len(data) <= 1 + fr.MAX_REASON:
            raise DecodeError("REFUSED needs a code and at most a short reason")
        try:
            reason = data[1:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("REFUSED reason is not UTF-8") from exc
        return fr.OpenFail(sid, data[0], reason)
    if command == RelayCommand.CREDIT:
        _exact(data, 4, "CREDIT")
        return fr.Credit(sid, int.from_bytes(data, "big"))
    if command == RelayCommand.END:
        _exact(data, 0, "END")
        return fr.Fin(sid)
    if command == RelayCommand.RESET:
        _exact(data, 1, "RESET")
        return fr.Reset(sid, data[0])
    raise DecodeError(f"relay command {command} is not a stream command")


def _exact(data: bytes, n: int, what: str) -> None:
    if len(data) != n:
        raise DecodeError(f"{what} carries {n} bytes, got {len(data)}")
