"""DHT datagrams: one signed message per UDP payload, at most 1232 bytes.

Every message, all integers big-endian:

    version u8 = 1 | type u8 | txid u64 | sender key 32 | body | signature 64

The signature is Ed25519 by the sender's identity key over `SIGNING_DOMAIN` followed by
every byte before the signature, so no node can speak, answer or store under an id
(SHA-256 of "vx6-node-id\\0" + key) whose key it does not hold. This module does not
sign or verify: encoders take a `sign` callable, decoders return the signed bytes.

Bodies, by type:

    PING        padding (zero bytes, any number)
    PONG        observed endpoint of the requester (what its source address looked like)
    FIND_NODE   target 32 [| token 16 | padding]
    NODES       token 16 | count u8 (<= 20) | contacts
    FIND_VALUE  target 32 [| token 16 | padding]
    VALUES      token 16 | count u8 (>= 1) | records, each u16 length (1..1024) + bytes
    STORE       target 32 | token 16 | record (u16 length (1..1024) + bytes)
    STORED      status u8 | reason (u8 length <= 64, printable ASCII)

    endpoint = family u8 (4 or 6) | address 4 or 16 | port u16 (not 0)
    contact  = node id 32 | endpoint

Requests may be padded, and FIND_NODE / FIND_VALUE may echo the token the responder
gave this requester before: a responder answers a source that has not proved its
address with no more bytes than the request had (docs/dht.md, "Anti-amplification").
After the target of a FIND, either nothing, or a 16-byte token field (all zero = no
token) followed by zero padding; a token of all zeros is never issued.

One encoding per value (no trailing bytes, IPv4 only as family 4, no port 0, padding
all zeros), so `encode(decode(b)) == b` for every accepted `b`. Sizes are checked before parsing;
malformed input raises DecodeError, values with no encoding raise ValueError.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache

from vx6.errors import DecodeError
from vx6.wire.endpoint import pack_endpoint, parse_ip
from vx6.wire.reader import Reader

MAX_DATAGRAM = 1232
VERSION = 1
SIGNING_DOMAIN = b"vx6-dht-v1\x00"
KEY_LEN = 32
NODE_ID_LEN = 32
TOKEN_LEN = 16
SIGNATURE_LEN = 64
MAX_CONTACTS = 20
MAX_VALUE_LEN = 1024
MAX_REASON_LEN = 64

_HEADER = struct.Struct(">BBQ32s")
HEADER_LEN = _HEADER.size
OVERHEAD = HEADER_LEN + SIGNATURE_LEN
NO_TOKEN = bytes(TOKEN_LEN)
NODES_BASE = OVERHEAD + TOKEN_LEN + 1  # a NODES datagram without contacts
PONG_MAX = OVERHEAD + 1 + 16 + 2  # a PONG with an IPv6 endpoint
PING_PADDING = PONG_MAX - OVERHEAD  # a PING this long may always be answered
MAX_TXID = 2**64 - 1
_U16 = struct.Struct(">H")

Sign = Callable[[bytes], bytes]


class MessageType(IntEnum):
    PING = 1
    PONG = 2
    FIND_NODE = 3
    NODES = 4
    FIND_VALUE = 5
    VALUES = 6
    STORE = 7
    STORED = 8


class StoreStatus(IntEnum):
    OK = 0
    BAD_TOKEN = 1
    REFUSED = 2  # the record failed a record rule; the reason says which
    FULL = 3


@dataclass(frozen=True, slots=True)
class WireContact:
    node_id: bytes
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Ping:
    txid: int
    sender: bytes
    padding: int = 0


@dataclass(frozen=True, slots=True)
class Pong:
    txid: int
    sender: bytes
    observed_host: str
    observed_port: int


@dataclass(frozen=True, slots=True)
class FindNode:
    txid: int
    sender: bytes
    target: bytes
    token: bytes = b""  # the responder's token for us, echoed: proves our address
    padding: int = 0


@dataclass(frozen=True, slots=True)
class Nodes:
    txid: int
    sender: bytes
    token: bytes
    contacts: tuple[WireContact, ...]


@dataclass(frozen=True, slots=True)
class FindValue:
    txid: int
    sender: bytes
    target: bytes
    token: bytes = b""
    padding: int = 0


@dataclass(frozen=True, slots=True)
class Values:
    txid: int
    sender: bytes
    token: bytes
    records: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Store:
    txid: int
    sender: bytes
    target: bytes
    token: bytes
    record: bytes


@dataclass(frozen=True, slots=True)
class Stored:
    txid: int
    sender: bytes
    status: StoreStatus
    reason: str


Message = Ping | Pong | FindNode | Nodes | FindValue | Values | Store | Stored
Request = Ping | FindNode | FindValue | Store

_TYPE_OF: dict[type, MessageType] = {
    Ping: MessageType.PING,
    Pong: MessageType.PONG,
    FindNode: MessageType.FIND_NODE,
    Nodes: MessageType.NODES,
    FindValue: MessageType.FIND_VALUE,
    Values: MessageType.VALUES,
    Store: MessageType.STORE,
    Stored: MessageType.STORED,
}


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """A decoded message and what its signature must cover."""

    message: Message
    signed: bytes
    signature: bytes


# --- addresses ----------------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def _packed_host(host: str) -> tuple[int, bytes]:
    addr = parse_ip(host)
    if str(addr) != host:
        raise ValueError(f"host {host!r} is not in canonical form ({addr})")
    return addr.version, addr.packed


def can_encode_host(host: str) -> bool:
    """True if `host` is a canonical IP literal an endpoint can carry."""
    try:
        _packed_host(host)
    except ValueError:
        return False
    return True


def contact_size(host: str) -> int:
    """Bytes one contact with this host takes in NODES."""
    return NODE_ID_LEN + 3 + (16 if ":" in host else 4)


def _pack_endpoint(host: str, port: int) -> bytes:
    _packed_host(host)  # canonical text only: contacts are compared as text
    return pack_endpoint(host, port)


@lru_cache(maxsize=1 << 16)
def _pack_contact(node_id: bytes, host: str, port: int) -> bytes:
    # Cached: a node hands out the same few hundred contacts over and over.
    if len(node_id) != NODE_ID_LEN:
        raise ValueError(f"node id is {NODE_ID_LEN} bytes, got {len(node_id)}")
    return node_id + _pack_endpoint(host, port)


# --- encoding -----------------------------------------------------------------------


def _check_len(value: bytes, length: int, what: str) -> None:
    if len(value) != length:
        raise ValueError(f"{what} is {length} bytes, got {len(value)}")


def _pack_value(value: bytes) -> bytes:
    if not 1 <= len(value) <= MAX_VALUE_LEN:
        raise ValueError(f"a value is 1..{MAX_VALUE_LEN} bytes, got {len(value)}")
    return _U16.pack(len(value)) + bytes(value)


def _padding(count: int) -> bytes:
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"padding must be a non-negative integer, got {count!r}")
    return bytes(min(count, MAX_DATAGRAM))  # encode_message refuses what does not fit


def _pack_find(message: FindNode | FindValue) -> bytes:
    _check_len(message.target, NODE_ID_LEN, "target")
    target = bytes(message.target)
    if message.token:
        _check_len(message.token, TOKEN_LEN, "token")
        if message.token == NO_TOKEN:
            raise ValueError("an all-zero token means no token")
        return target + bytes(message.token) + _padding(message.padding)
    if 0 < message.padding < TOKEN_LEN:
        raise ValueError(f"padding without a token is 0 or at least {TOKEN_LEN} bytes")
    return target + _padding(message.padding)


def _pack_body(message: Message) -> bytes:
    if isinstance(message, Ping):
        return _padding(message.padding)
    if isinstance(message, Pong):
        return _pack_endpoint(message.observed_host, message.observed_port)
    if isinstance(message, FindNode | FindValue):
        return _pack_find(message)
    if isinstance(message, Nodes):
        _check_len(message.token, TOKEN_LEN, "token")
        if len(message.contacts) > MAX_CONTACTS:
            raise ValueError(f"at most {MAX_CONTACTS} contacts per message")
        parts = [bytes(message.token), bytes([len(message.contacts)])]
        for contact in message.contacts:
            parts.append(_pack_contact(bytes(contact.node_id), contact.host, contact.port))
        return b"".join(parts)
    if isinstance(message, Values):
        _check_len(message.token, TOKEN_LEN, "token")
        if not 1 <= len(message.records) <= 255:
            raise ValueError("VALUES carries 1..255 records")
        records = b"".join(_pack_value(r) for r in message.records)
        return bytes(message.token) + bytes([len(message.records)]) + records
    if isinstance(message, Store):
        _check_len(message.target, NODE_ID_LEN, "target")
        _check_len(message.token, TOKEN_LEN, "token")
        return bytes(message.target) + bytes(message.token) + _pack_value(message.record)
    if isinstance(message, Stored):
        text = message.reason
        if len(text) > MAX_REASON_LEN or not (text.isascii() and text.isprintable()):
            raise ValueError(f"reason must be <= {MAX_REASON_LEN} printable ASCII characters")
        reason = text.encode("ascii")
        return bytes([StoreStatus(message.status)]) + bytes([len(reason)]) + reason
    raise TypeError(f"not a DHT message: {message!r}")


def unsigned_bytes(message: Message) -> bytes:
    """The message's encoding up to (not including) the signature."""
    _check_len(message.sender, KEY_LEN, "sender key")
    if not isinstance(message.txid, int) or not 0 <= message.txid <= MAX_TXID:
        raise ValueError(f"txid must be an unsigned 64-bit integer, got {message.txid!r}")
    header = _HEADER.pack(VERSION, _TYPE_OF[type(message)], message.txid, bytes(message.sender))
    return header + _pack_body(message)


def encode_message(message: Message, sign: Sign) -> bytes:
    """Encode and sign; ValueError if the result would exceed MAX_DATAGRAM."""
    unsigned = unsigned_bytes(message)
    if len(unsigned) + SIGNATURE_LEN > MAX_DATAGRAM:
        raise ValueError(f"message of {len(unsigned) + SIGNATURE_LEN} bytes exceeds {MAX_DATAGRAM}")
    signature = sign(SIGNING_DOMAIN + unsigned)
    _check_len(signature, SIGNATURE_LEN, "signature")
    return unsigned + signature


# --- decoding -----------------------------------------------------------------------


class _Reader(Reader):
    """The DHT's fields on the shared cursor (wire/reader.py)."""

    __slots__ = ()

    def contact(self) -> WireContact:
        node_id = self.take(NODE_ID_LEN)
        host, port = self.endpoint()
        return WireContact(node_id, host, port)

    def value(self) -> bytes:
        length = self.u16()
        if not 1 <= length <= MAX_VALUE_LEN:
            raise DecodeError(f"value length {length} is outside 1..{MAX_VALUE_LEN}")
        return self.take(length)

    def padding(self) -> int:
        """The rest of the body, which must be zero bytes; returns its length."""
        rest = self.take(self.left())
        if rest.count(0) != len(rest):
            raise DecodeError("padding in DHT message is not zero")
        return len(rest)

    def find_extension(self) -> tuple[bytes, int]:
        """(token, padding) after a FIND's target."""
        if self.left() == 0:
            return b"", 0
        if self.left() < TOKEN_LEN:
            raise DecodeError("FIND extension shorter than a token")
        token = self.take(TOKEN_LEN)
        padding = self.padding()
        if token == NO_TOKEN:
            return b"", padding + TOKEN_LEN
        return token, padding


def _decode_body(kind: int, txid: int, sender: bytes, reader: _Reader) -> Message:
    if kind == MessageType.PING:
        return Ping(txid, sender, reader.padding())
    if kind == MessageType.PONG:
        host, port = reader.endpoint()
        return Pong(txid, sender, host, port)
    if kind == MessageType.FIND_NODE:
        return FindNode(txid, sender, reader.take(NODE_ID_LEN), *reader.find_extension())
    if kind == MessageType.FIND_VALUE:
        return FindValue(txid, sender, reader.take(NODE_ID_LEN), *reader.find_extension())
    if kind == MessageType.NODES:
        token = reader.take(TOKEN_LEN)
        count = reader.u8()
        if count > MAX_CONTACTS:
            raise DecodeError(f"NODES lists {count} contacts, more than {MAX_CONTACTS}")
        contacts = [reader.contact() for _ in range(count)]
        return Nodes(txid, sender, token, tuple(contacts))
    if kind == MessageType.VALUES:
        token = reader.take(TOKEN_LEN)
        count = reader.u8()
        if count == 0:
            raise DecodeError("VALUES without a value")
        return Values(txid, sender, token, tuple(reader.value() for _ in range(count)))
    if kind == MessageType.STORE:
        target = reader.take(NODE_ID_LEN)
        token = reader.take(TOKEN_LEN)
        return Store(txid, sender, target, token, reader.value())
    if kind == MessageType.STORED:
        status_code = reader.u8()
        try:
            status = StoreStatus(status_code)
        except ValueError:
            raise DecodeError(f"unknown store status {status_code}") from None
        raw = reader.take(reader.u8())
        if len(raw) > MAX_REASON_LEN or not all(0x20 <= b < 0x7F for b in raw):
            raise DecodeError("STORED reason is not printable ASCII")
        return Stored(txid, sender, status, raw.decode("ascii"))
    raise DecodeError(f"unknown DHT message type {kind}")


def decode_message(data: bytes) -> SignedMessage:
    """Parse one datagram; the caller verifies `signature` over `signed` by the sender."""
    size = len(data)
    if size > MAX_DATAGRAM:
        raise DecodeError(f"DHT datagram of {size} bytes exceeds {MAX_DATAGRAM}")
    if size < OVERHEAD:
        raise DecodeError(f"DHT datagram of {size} bytes is shorter than the minimum")
    data = bytes(data)
    version, kind, txid, sender = _HEADER.unpack_from(data, 0)
    if version != VERSION:
        raise DecodeError(f"unsupported DHT version {version}")
    body_end = size - SIGNATURE_LEN
    reader = _Reader(data, "DHT message", HEADER_LEN, body_end)
    message = _decode_body(kind, txid, sender, reader)
    reader.finish()
    return SignedMessage(message, SIGNING_DOMAIN + data[:body_end], data[body_end:])
