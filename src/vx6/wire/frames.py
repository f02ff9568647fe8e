"""Link frames: what travels inside one Noise transport message on a node-to-node link.

On TCP every Noise message (handshake or transport) is prefixed by its length as a
2-byte big-endian integer, as the Noise spec suggests. The first handshake message also
carries one byte naming the pattern (XX or IK), so the responder knows which handshake
to run; that byte is part of the Noise prologue and so authenticated.

A transport message's plaintext is one frame: a type byte, then fixed fields, then (for
DATA) the payload up to the end of the message. DATA is the hot path: its header is 5
bytes and the payload is never copied by the codec beyond one slice.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from vx6.errors import DecodeError

MAX_NOISE_MESSAGE = 65535
AEAD_TAG = 16
MAX_FRAME = MAX_NOISE_MESSAGE - AEAD_TAG
DATA_HEADER = 5
MAX_DATA_PAYLOAD = MAX_FRAME - DATA_HEADER
MAX_STREAM_ID = 0xFFFFFFFF
MAX_REASON = 200
MAX_RECORD_BYTES = 1024
MAX_RECORDS_PER_FRAME = 60

# Each side announces its per-stream receive window in its handshake payload; the peer
# starts every stream with exactly that much credit.
MIN_STREAM_WINDOW = 4 * 1024
MAX_STREAM_CREDIT = 64 * 1024 * 1024

LINK_PROLOGUE = b"vx6-link-v1"
PATTERN_XX = 1
PATTERN_IK = 2
HANDSHAKE_VERSION = 1
HANDSHAKE_PAYLOAD_LEN = 1 + 32 + 64 + 4
# The largest handshake message is about 200 bytes (IK's first: pattern, e, s, payload);
# a length prefix above this before authentication is refused at once, so an
# unauthenticated peer cannot make the node buffer a 64 KiB message.
MAX_HANDSHAKE_MESSAGE = 1024


class FrameType(IntEnum):
    DATA = 1
    OPEN = 2
    OPEN_OK = 3
    OPEN_FAIL = 4
    CREDIT = 5
    FIN = 6
    RESET = 7
    PING = 8
    PONG = 9
    CLOSE = 10
    RECORDS = 11
    CELLS = 12  # one to three circuit cells, back to back (hot path, like DATA)


OPEN_FLAG_PROBE = 1  # check service, access and target, then close: used by `vx6 connect`
# On a link (never on a circuit): before answering, send your own node record and name
# claim in a RECORDS frame, once per link; how direct mode (`--via`) learns that the key
# at an endpoint holds the name, when the client knows no claim of it yet.
OPEN_FLAG_IDENTIFY = 2


@dataclass(frozen=True, slots=True)
class Open:
    stream_id: int
    service: str
    flags: int


@dataclass(frozen=True, slots=True)
class OpenOk:
    stream_id: int


@dataclass(frozen=True, slots=True)
class OpenFail:
    stream_id: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Credit:
    stream_id: int
    increment: int


@dataclass(frozen=True, slots=True)
class Fin:
    stream_id: int


@dataclass(frozen=True, slots=True)
class Reset:
    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class Ping:
    token: int


@dataclass(frozen=True, slots=True)
class Pong:
    token: int


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Records:
    records: tuple[bytes, ...]


ControlFrame = Open | OpenOk | OpenFail | Credit | Fin | Reset | Ping | Pong | Close | Records

_U32 = struct.Struct(">I")
_ID_U32 = struct.Struct(">II")
_ID_U8 = struct.Struct(">IB")
_U64 = struct.Struct(">Q")
_DATA_PREFIX = bytes([FrameType.DATA])


def length_prefix(n: int) -> bytes:
    return n.to_bytes(2, "big")


def data_header(stream_id: int) -> bytes:
    return _DATA_PREFIX + stream_id.to_bytes(4, "big")


def decode_data(plain: bytes) -> tuple[int, memoryview]:
    """A DATA frame's stream id and payload; the payload is a view of `plain`, not a copy."""
    if len(plain) < DATA_HEADER:
        raise DecodeError("DATA frame too short")
    return _U32.unpack_from(plain, 1)[0], memoryview(plain)[DATA_HEADER:]


def _text(raw: bytes | memoryview, what: str) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what} is not UTF-8") from exc


def short_text(text: str) -> bytes:
    raw = text.encode("utf-8")[:MAX_REASON]
    # Cutting may split a character; drop the broken tail so the peer can decode it.
    return raw.decode("utf-8", "ignore").encode("utf-8")


def encode_frame(frame: ControlFrame) -> bytes:
    """Encode every frame type except DATA (see `data_header`)."""
    match frame:
        case Open(stream_id, service, flags):
            name = service.encode("ascii")
            if len(name) > 255:
                raise ValueError("service name too long")
            return (
                bytes([FrameType.OPEN]) + _ID_U8.pack(stream_id, flags) + bytes([len(name)]) + name
            )
        case OpenOk(stream_id):
            return bytes([FrameType.OPEN_OK]) + _U32.pack(stream_id)
        case OpenFail(stream_id, code, reason):
            text = short_text(reason)
            return (
                bytes([FrameType.OPEN_FAIL])
                + _ID_U8.pack(stream_id, code)
                + bytes([len(text)])
                + text
            )
        case Credit(stream_id, increment):
            return bytes([FrameType.CREDIT]) + _ID_U32.pack(stream_id, increment)
        case Fin(stream_id):
            return bytes([FrameType.FIN]) + _U32.pack(stream_id)
        case Reset(stream_id, code):
            return bytes([FrameType.RESET]) + _ID_U8.pack(stream_id, code)
        case Ping(token):
            return bytes([FrameType.PING]) + _U64.pack(token)
        case Pong(token):
            return bytes([FrameType.PONG]) + _U64.pack(token)
        case Close(code, reason):
            text = short_text(reason)
            return bytes([FrameType.CLOSE, code, len(text)]) + text
        case Records(records):
            if len(records) > MAX_RECORDS_PER_FRAME:
                raise ValueError("too many records for one frame")
            parts = [bytes([FrameType.RECORDS, len(records)])]
            for rec in records:
                if len(rec) > MAX_RECORD_BYTES:
                    raise ValueError("record too large")
                parts.append(len(rec).to_bytes(2, "big") + rec)
            out = b"".join(parts)
            if len(out) > MAX_FRAME:
                raise ValueError("records frame too large")
            return out
    raise TypeError(f"not a frame: {frame!r}")


def _need(data: bytes, n: int, what: str) -> None:
    if len(data) != n:
        raise DecodeError(f"{what} frame must be {n} bytes, got {len(data)}")


def decode_control(data: bytes) -> ControlFrame:
    """Decode any non-DATA frame; every malformation raises DecodeError."""
    if not data:
        raise DecodeError("empty frame")
    kind = data[0]
    if kind == FrameType.OPEN:
        if len(data) < 7:
            raise DecodeError("OPEN frame too short")
        sid, flags = _ID_U8.unpack_from(data, 1)
        _need(data, 7 + data[6], "OPEN")
        raw = data[7:]
        if not raw or not raw.isascii():
            raise DecodeError("OPEN service name must be non-empty ASCII")
        return Open(sid, raw.decode("ascii"), flags)
    if kind == FrameType.OPEN_OK:
        _need(data, 5, "OPEN_OK")
        return OpenOk(_U32.unpack_from(data, 1)[0])
    if kind == FrameType.OPEN_FAIL:
        if len(data) < 7:
            raise DecodeError("OPEN_FAIL frame too short")
        sid, code = _ID_U8.unpack_from(data, 1)
        _need(data, 7 + data[6], "OPEN_FAIL")
        return OpenFail(sid, code, _text(data[7:], "OPEN_FAIL reason"))
    if kind == FrameType.CREDIT:
        _need(data, 9, "CREDIT")
        sid, inc = _ID_U32.unpack_from(data, 1)
        return Credit(sid, inc)
    if kind == FrameType.FIN:
        _need(data, 5, "FIN")
        return Fin(_U32.unpack_from(data, 1)[0])
    if kind == FrameType.RESET:
        _need(data, 6, "RESET")
        sid, code = _ID_U8.unpack_from(data, 1)
        return Reset(sid, code)
    if kind in (FrameType.PING, FrameType.PONG):
        _need(data, 9, "PING/PONG")
        token = _U64.unpack_from(data, 1)[0]
        return Ping(token) if kind == FrameType.PING else Pong(token)
    if kind == FrameType.CLOSE:
        if len(data) < 3:
            raise DecodeError("CLOSE frame too short")
        _need(data, 3 + data[2], "CLOSE")
        return Close(data[1], _text(data[3:], "CLOSE reason"))
    if kind == FrameType.RECORDS:
        return _decode_records(data)
    raise DecodeError(f"unknown frame type {kind}")


def _decode_records(data: bytes) -> Records:
    if len(data) < 2:
        raise DecodeError("RECORDS frame too short")
    count = data[1]
    if count > MAX_RECORDS_PER_FRAME:
        raise DecodeError("RECORDS frame holds too many records")
    pos, out = 2, []
    for _ in range(count):
        if pos + 2 > len(data):
            raise DecodeError("RECORDS frame truncated")
        n = int.from_bytes(data[pos : pos + 2], "big")
        if n > MAX_RECORD_BYTES:
            raise DecodeError("record in RECORDS frame too large")
        pos += 2
        if pos + n > len(data):
            raise DecodeError("RECORDS frame truncated")
        out.append(data[pos : pos + n])
        pos += n
    if pos != len(data):
        raise DecodeError("trailing bytes after RECORDS")
    return Records(tuple(out))


@dataclass(frozen=True, slots=True)
class HandshakePayload:
    """What each side says inside the Noise handshake: its identity key, a signature by
    it over its Noise static (link) key, and the per-stream window it grants."""

    identity: bytes
    link_proof: bytes
    window: int


def encode_handshake_payload(p: HandshakePayload) -> bytes:
    if len(p.identity) != 32 or len(p.link_proof) != 64:
        raise ValueError("identity is 32 bytes and proof 64")
    if not MIN_STREAM_WINDOW <= p.window <= MAX_STREAM_CREDIT:
        raise ValueError("window out of range")
    return bytes([HANDSHAKE_VERSION]) + p.identity + p.link_proof + _U32.pack(p.window)


def decode_handshake_payload(data: bytes) -> HandshakePayload:
    if len(data) != HANDSHAKE_PAYLOAD_LEN:
        raise DecodeError(f"handshake payload must be {HANDSHAKE_PAYLOAD_LEN} bytes")
    if data[0] != HANDSHAKE_VERSION:
        raise DecodeError(f"unsupported link version {data[0]}")
    window = _U32.unpack_from(data, 97)[0]
    if not MIN_STREAM_WINDOW <= window <= MAX_STREAM_CREDIT:
        raise DecodeError(f"stream window {window} out of range")
    return HandshakePayload(bytes(data[1:33]), bytes(data[33:97]), window)
