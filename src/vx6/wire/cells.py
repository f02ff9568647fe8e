"""Circuit cells: fixed-size units that travel along an onion circuit.

Every cell is exactly CELL_SIZE bytes on the wire, whatever it carries, so a cell's size
says nothing about its content or about where the sender sits on the circuit:

    circuit id u32 | command u8 | body (BODY_SIZE bytes)

Circuit id 0 is reserved (never a circuit). Control bodies (CREATE, CREATED, DESTROY)
are their fields followed by zero padding, and the padding is checked so that each
value has exactly one encoding. A RELAY body is opaque here: it is onion-layered
ciphertext (`vx6.crypto.onion`); only after the last layer is removed does it become a
relay message:

    relay command u8 | stream id u32 | length u16 | data (length bytes) | zero padding

EXTEND and EXTENDED are relay commands, not cell commands: they travel inside the
layers, so the relays before the one being extended do not learn the next hop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from vx6.errors import DecodeError, DestroyReason
from vx6.wire import frames as fr
from vx6.wire.endpoint import pack_endpoint, unpack_endpoint

CELL_SIZE = 16 * 1024
CELL_HEADER = 5
CELLS_PER_FRAME = (fr.MAX_FRAME - 1) // CELL_SIZE  # a CELLS link frame: its type byte, then cells
BODY_SIZE = CELL_SIZE - CELL_HEADER
MAX_CIRCUIT_ID = 0xFFFFFFFF
MAX_STREAM_ID = 0xFFFFFFFF
ONIONSKIN_LEN = 96  # node id 32 | onion key 32 | client ephemeral 32
REPLY_LEN = 64  # relay ephemeral 32 | AUTH 32
KEY_LEN = 32
RELAY_HEADER = 7
MAX_ENDPOINTS = 4

_HEADER = struct.Struct(">IB")
_RELAY = struct.Struct(">BIH")
_ZEROS = bytes(CELL_SIZE)  # padding is compared against this


class CellCommand(IntEnum):
    CREATE = 1
    CREATED = 2
    RELAY = 3
    DESTROY = 4


class RelayCommand(IntEnum):
    EXTEND = 1
    EXTENDED = 2
    # Stream commands mirror the link's stream frames one for one (see `stream_message`),
    # so the same stream state machine and flow control run over a link or a circuit.
    BEGIN = 3  # OPEN: flags u8 | service (ASCII)
    CONNECTED = 4  # OPEN_OK
    DATA = 5
    END = 6  # FIN (half-close)
    CREDIT = 7  # increment u32
    REFUSED = 8  # OPEN_FAIL: code u8 | reason (UTF-8)
    RESET = 9  # code u8
    AUTH = 10  # circuit-level (stream 0): client identity 32 | proof 64
    # Circuit-level (stream 0, no data), to the exit: "still here". Every hop on the way
    # sees a cell, so an idle client circuit is not expired or evicted as idle; the exit
    # drops it (docs/circuits.md, "Idle circuits").
    KEEPALIVE = 11
    # Hidden services (docs/hidden.md section 4), all circuit-level (stream 0).
    ESTABLISH_INTRO = 12  # service -> intro point
    INTRO_ESTABLISHED = 13  # intro point -> service
    INTRODUCE1 = 14  # client -> intro point
    INTRODUCE2 = 15  # intro point -> service
    INTRODUCE_ACK = 16  # intro point -> client
    ESTABLISH_RENDEZVOUS = 17  # client -> rendezvous point
    RENDEZVOUS_ESTABLISHED = 18  # rendezvous point -> client
    RENDEZVOUS1 = 19  # service -> rendezvous point
    RENDEZVOUS2 = 20  # rendezvous point -> client
    # Descriptors through a directory proxy (docs/hidden.md section 3), stream 0.
    DHT_STORE = 21  # service -> last relay: store this descriptor in the DHT
    DHT_STORED = 22  # last relay -> service
    DHT_FETCH = 23  # service or client -> last relay: look this blinded key up
    DHT_FETCHED = 24  # last relay -> service or client


def destroy_reason(code: int) -> DestroyReason:
    """A DESTROY's reason; a code this version does not know counts as a protocol error."""
    try:
        return DestroyReason(code)
    except ValueError:
        return DestroyReason.PROTOCOL_ERROR


def cell_circuit_id(cell: bytes | bytearray | memoryview) -> int:
    """The circuit id of an encoded cell, without decoding the rest."""
    return int(_HEADER.unpack_from(cell)[0])


@dataclass(frozen=True, slots=True)
class Create:
    circuit_id: int
    depth: int  # 1-based position of the receiver on the circuit; see docs/circuits.md
    onionskin: bytes


@dataclass(frozen=True, slots=True)
class Created:
    circuit_id: int
    reply: bytes


@dataclass(frozen=True, slots=True)
class Relay:
    circuit_id: int
    body: bytes | memoryview  # decoded from a view: a view into the link's frame


@dataclass(frozen=True, slots=True)
class Destroy:
    circuit_id: int
    reason: int


Cell = Create | Created | Relay | Destroy


@dataclass(frozen=True, slots=True)
class RelayMessage:
    command: int
    stream_id: int
    data: bytes | memoryview  # a view into the cell for received DATA


class RelayMessageFields(Protocol):
    """Anything that carries a relay message's fields (a RelayMessage, or the event that
    delivers one), so a message received is not copied into a new object per cell."""

    @property
    def command(self) -> int: ...

    @property
    def stream_id(self) -> int: ...

    @property
    def data(self) -> bytes | memoryview: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str  # an IPv4 or IPv6 address literal
    port: int


@dataclass(frozen=True, slots=True)
class Extend:
    identity: bytes  # the next hop's Ed25519 identity key (its node id is derived)
    onionskin: bytes
    endpoints: tuple[Endpoint, ...]


def _check_circuit_id(circuit_id: int) -> None:
    if not 0 < circuit_id <= MAX_CIRCUIT_ID:
        raise ValueError(f"circuit id {circuit_id} outside 1..{MAX_CIRCUIT_ID}")


def _padded(fields: bytes) -> bytes:
    if len(fields) > BODY_SIZE:
        raise ValueError("cell fields exceed the body")
    return fields + bytes(BODY_SIZE - len(fields))


def encode_cell(cell: Cell) -> bytes:
    """Exactly CELL_SIZE bytes. ValueError on values the format cannot carry."""
    _check_circuit_id(cell.circuit_id)
    match cell:
        case Relay(circuit_id, body):
            if len(body) != BODY_SIZE:
                raise ValueError(f"a relay body is {BODY_SIZE} bytes, not {len(body)}")
            return _HEADER.pack(circuit_id, CellCommand.RELAY) + body
        case Create(circuit_id, depth, onionskin):
            if not 0 <= depth <= 255 or len(onionskin) != ONIONSKIN_LEN:
                raise ValueError("bad CREATE fields")
            fields = bytes([depth]) + onionskin
            return _HEADER.pack(circuit_id, CellCommand.CREATE) + _padded(fields)
        case Created(circuit_id, reply):
            if len(reply) != REPLY_LEN:
                raise ValueError("bad CREATED reply length")
            return _HEADER.pack(circuit_id, CellCommand.CREATED) + _padded(reply)
        case Destroy(circuit_id, reason):
            if not 0 <= reason <= 255:
                raise ValueError("bad DESTROY reason")
            return _HEADER.pack(circuit_id, CellCommand.DESTROY) + _padded(bytes([reason]))
    raise TypeError(f"not a cell: {cell!r}")


def _check_padding(body: bytes, used: int, what: str) -> None:
    if body[used:] != _ZEROS[: BODY_SIZE - used]:
        raise DecodeError(f"{what} cell has non-zero padding")


def decode_cell(data: bytes | memoryview) -> Cell:
    """Parse one cell; DecodeError on anything that is not exactly one valid cell."""
    if len(data) != CELL_SIZE:
        raise DecodeError(f"a cell is {CELL_SIZE} bytes, got {len(data)}")
    circuit_id, command = _HEADER.unpack_from(data)
    if circuit_id == 0:
        raise DecodeError("circuit id 0 is reserved")
    if command == CellCommand.RELAY:
        return Relay(circuit_id, data[CELL_HEADER:])  # no copy: the body is read once
    body = bytes(data[CELL_HEADER:])
    if command == CellCommand.CREATE:
        _check_padding(body, 1 + ONIONSKIN_LEN, "CREATE")
        return Create(circuit_id, body[0], body[1 : 1 + ONIONSKIN_LEN])
    if command == CellCommand.CREATED:
        _check_padding(body, REPLY_LEN, "CREATED")
        return Created(circuit_id, body[:REPLY_LEN])
    if command == CellCommand.DESTROY:
        _check_padding(body, 1, "DESTROY")
        return Destroy(circuit_id, body[0])
    raise DecodeError(f"unknown cell command {command}")


def relay_header(circuit_id: int) -> bytes:
    """The CELL_HEADER bytes that start every RELAY cell of this circuit id: a relay works
    them out once per circuit and direction, not once per cell."""
    _check_circuit_id(circuit_id)
    return _HEADER.pack(circuit_id, CellCommand.RELAY)


def write_cell_header(cell: bytearray | memoryview, circuit_id: int, command: int) -> None:
    """Write a cell's header into the first CELL_HEADER bytes of a cell buffer."""
    _check_circuit_id(circuit_id)
    _HEADER.pack_into(cell, 0, circuit_id, command)


def cells_frame_body(plain: bytes) -> memoryview:
    """The cells of a CELLS link frame (type byte, then whole cells back to back), as a
    view of `plain`: at least one cell and at most CELLS_PER_FRAME."""
    count, rest = divmod(len(plain) - 1, CELL_SIZE)
    if not 0 < count <= CELLS_PER_FRAME or rest:
        raise DecodeError("CELLS frame is not whole cells")
    return memoryview(plain)[1:]


def cell_header(buf: bytes | memoryview, offset: int) -> tuple[int, int]:
    """(circuit id, command) of the cell at buf[offset:], without decoding the rest: the
    data path reads this much of every cell. Nothing is checked; `decode_cell` does."""
    circuit_id, command = _HEADER.unpack_from(buf, offset)
    return circuit_id, command


def write_relay_message(
    buf: memoryview, command: int, stream_id: int, data: bytes | memoryview
) -> None:
    """Write a relay message into `buf`, the innermost plaintext's place in a cell
    buffer, padding included: all of `buf` is written, whatever it held before."""
    if not 0 <= command <= 255 or not 0 <= stream_id <= MAX_STREAM_ID:
        raise ValueError("bad relay header fields")
    end = RELAY_HEADER + len(data)
    size = len(buf)
    if end > size:
        raise ValueError(f"relay data of {len(data)} bytes over {size - RELAY_HEADER}")
    _RELAY.pack_into(buf, 0, command, stream_id, len(data))
    buf[RELAY_HEADER:end] = data
    buf[end:] = _ZEROS[: size - end]


def encode_relay_message(message: RelayMessage, size: int) -> bytes:
    """The innermost plaintext of a RELAY cell, padded with zeros to `size` bytes."""
    buf = bytearray(size)
    write_relay_message(memoryview(buf), message.command, message.stream_id, message.data)
    return bytes(buf)


def decode_relay_message(plaintext: bytes | memoryview) -> RelayMessage:
    """Parse the innermost plaintext. DATA keeps a view into `plaintext` (no copy of
    the payload); every other command gets its own bytes."""
    if len(plaintext) < RELAY_HEADER:
        raise DecodeError("relay message shorter than its header")
    command, stream_id, length = _RELAY.unpack_from(plaintext)
    end = RELAY_HEADER + length
    size = len(plaintext)
    if end > size:
        raise DecodeError(f"relay length {length} runs past the cell")
    view = memoryview(plaintext)
    if view[end:].tobytes() != _ZEROS[: size - end]:  # one memcmp; bytes.count is slower
        raise DecodeError("relay message has non-zero padding")
    data = view[RELAY_HEADER:end]
    return RelayMessage(command, stream_id, data if command == RelayCommand.DATA else bytes(data))


def encode_extend(extend: Extend) -> bytes:
    """identity 32 | onionskin 96 | count u8 | count x (family u8 4|6, address, port u16)"""
    if len(extend.identity) != KEY_LEN or len(extend.onionskin) != ONIONSKIN_LEN:
        raise ValueError("bad EXTEND key or onionskin length")
    if len(extend.endpoints) > MAX_ENDPOINTS:
        raise ValueError(f"at most {MAX_ENDPOINTS} endpoints")
    out = [extend.identity, extend.onionskin, bytes([len(extend.endpoints)])]
    out += [pack_endpoint(endpoint.host, endpoint.port) for endpoint in extend.endpoints]
    return b"".join(out)


def decode_extend(data: bytes) -> Extend:
    fixed = KEY_LEN + ONIONSKIN_LEN + 1
    if len(data) < fixed:
        raise DecodeError("EXTEND shorter than its fixed fields")
    identity = data[:KEY_LEN]
    onionskin = data[KEY_LEN : KEY_LEN + ONIONSKIN_LEN]
    count = data[fixed - 1]
    if count > MAX_ENDPOINTS:
        raise DecodeError(f"EXTEND names {count} endpoints, at most {MAX_ENDPOINTS}")
    pos = fixed
    endpoints: list[Endpoint] = []
    for _ in range(count):
        host, port, pos = unpack_endpoint(data, pos)
        endpoints.append(Endpoint(host, port))
    if pos != len(data):
        raise DecodeError("trailing bytes after EXTEND")
    return Extend(identity, onionskin, tuple(endpoints))


AUTH_LEN = KEY_LEN + 64


def encode_auth(identity: bytes, proof: bytes) -> bytes:
    if len(identity) != KEY_LEN or len(proof) != 64:
        raise ValueError("AUTH is a 32-byte key and a 64-byte proof")
    return identity + proof


def decode_auth(data: bytes) -> tuple[bytes, bytes]:
    if len(data) != AUTH_LEN:
        raise DecodeError(f"AUTH is {AUTH_LEN} bytes, got {len(data)}")
    return data[:KEY_LEN], data[KEY_LEN:]
