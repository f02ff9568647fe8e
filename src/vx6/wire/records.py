"""Signed records: one envelope for every kind, one canonical binary encoding.

Every record (node, name claim, service, rotation, hidden-service descriptor) travels in
the same envelope, all integers big-endian:

    magic "VX6R" | version u8 | kind u8 | signer 32 | seq u64 | issued u64 | expires u64
    | body length u16 | body | signature 64

The signature covers `SIGNING_DOMAIN` followed by every byte before the signature.

Bodies, by kind:

    NODE        link key 32 | onion key 32 | capabilities u16 | count u8 | endpoints
                endpoint = family u8 (4 or 6) | address 4 or 16 | port u16
    NAME_CLAIM  name (label) | pow nonce u64
    SERVICE     service (label) | modes u8 | public u8 (0 or 1)
    HIDDEN_DESCRIPTOR  exactly DESCRIPTOR_BODY_SIZE (896) opaque bytes, so the record is
                exactly MAX_RECORD_SIZE; signed by the period's blinded key (docs/hidden.md
                section 3); only crypto/hidden_desc.py reads inside
    ROTATION    name (label) | new key 32
    label = length u8 (1..32) | ASCII bytes matching LABEL_PATTERN

There is exactly one encoding of each value, so `encode(decode(b)) == b` for every
accepted `b`: no optional fields, no trailing bytes, booleans only 0 or 1, labels only in
lowercase, IPv4 addresses only as family 4 (never IPv4-mapped IPv6). Unknown capability
and mode bits are carried as they are, so a newer node's flags do not make its record
unreadable to older nodes.

This module only packs and checks bytes; signing and verifying live in
`vx6.crypto.records`, the acceptance rules in `vx6.core.records`. Decoders raise
`DecodeError` on anything malformed; encoders raise `ValueError` for values that have no
encoding (a local programming error, never the peer's).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from vx6.errors import DecodeError
from vx6.wire.endpoint import pack_endpoint, parse_ip
from vx6.wire.reader import Reader

MAGIC = b"VX6R"
VERSION = 1
SIGNING_DOMAIN = b"vx6-record-v1\x00"
# A DHT datagram carries one record plus its own header in <= 1232 bytes.
MAX_RECORD_SIZE = 1024
SIGNER_LEN = 32
SIGNATURE_LEN = 64
X25519_KEY_LEN = 32
MAX_ADDRESSES = 8
MAX_LABEL_LEN = 32
MAX_U64 = 2**64 - 1

_HEADER = struct.Struct(">4sBB32sQQQH")
HEADER_LEN = _HEADER.size
MIN_RECORD_SIZE = HEADER_LEN + SIGNATURE_LEN
MAX_BODY_SIZE = MAX_RECORD_SIZE - MIN_RECORD_SIZE
# Every descriptor fills a record exactly, so its size says nothing about what it holds.
DESCRIPTOR_BODY_SIZE = MAX_BODY_SIZE

LABEL_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?"
_LABEL = re.compile(LABEL_PATTERN)
_LABEL_BYTES = re.compile(LABEL_PATTERN.encode("ascii"))

_NODE_FIXED = struct.Struct(">32s32sHB")
_U64 = struct.Struct(">Q")


class Kind(IntEnum):
    NODE = 1
    NAME_CLAIM = 2
    SERVICE = 3
    HIDDEN_DESCRIPTOR = 4  # signed by a hidden service's blinded key (docs/hidden.md)
    ROTATION = 5  # "my name moves to this new key", signed by the old key


class Capability(IntFlag):
    RELAY = 1
    DHT = 2


class Mode(IntFlag):
    """Ways of reaching a service that its owner allows."""

    DIRECT = 1
    RELAY = 2


def is_label(text: str) -> bool:
    """True if `text` is a canonical (lowercase) label: [a-z0-9][a-z0-9-]{0,31}, no
    trailing hyphen."""
    return _LABEL.fullmatch(text) is not None


@dataclass(frozen=True)
class Endpoint:
    """An IP literal (IPv4 or IPv6, no brackets, no zone) and a port.

    The host is normalised to its canonical text on construction, so two endpoints that
    encode to the same bytes compare equal. Raises ValueError for anything else.
    """

    host: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", str(_parse_host(self.host)))
        if not isinstance(self.port, int) or not 1 <= self.port <= 0xFFFF:
            raise ValueError(f"port must be 1..65535, got {self.port!r}")


_parse_host = parse_ip


@dataclass(frozen=True)
class NodeBody:
    link_key: bytes
    onion_key: bytes
    addresses: tuple[Endpoint, ...]
    capabilities: int


@dataclass(frozen=True)
class NameClaimBody:
    name: str
    pow_nonce: int = 0


@dataclass(frozen=True)
class ServiceBody:
    service: str
    modes: int
    public: bool


@dataclass(frozen=True)
class RotationBody:
    name: str
    new_key: bytes


@dataclass(frozen=True)
class HiddenDescriptorBody:
    """The opaque body of a hidden-service descriptor: `salt 16 | outer ciphertext`."""

    blob: bytes


Body = NodeBody | NameClaimBody | ServiceBody | RotationBody | HiddenDescriptorBody


@dataclass(frozen=True)
class Record:
    kind: Kind
    signer: bytes
    seq: int
    issued: int
    expires: int
    body: bytes
    signature: bytes

    def parsed_body(self) -> Body:
        """The body decoded for this record's kind; DecodeError if it does not parse."""
        return decode_body(self.kind, self.body)

    @property
    def subject(self) -> str:
        """What the record is about within its signer's records: "" for a node record
        and a descriptor (one per blinded key), the claimed name for a name claim and a
        rotation, the service name for a service record."""
        body = self.parsed_body()
        if isinstance(body, NameClaimBody):
            return body.name
        if isinstance(body, ServiceBody):
            return body.service
        if isinstance(body, RotationBody):
            return body.name
        return ""


def kind_of_body(body: Body) -> Kind:
    if isinstance(body, NodeBody):
        return Kind.NODE
    if isinstance(body, NameClaimBody):
        return Kind.NAME_CLAIM
    if isinstance(body, ServiceBody):
        return Kind.SERVICE
    if isinstance(body, RotationBody):
        return Kind.ROTATION
    if isinstance(body, HiddenDescriptorBody):
        return Kind.HIDDEN_DESCRIPTOR
    raise TypeError(f"not a record body: {body!r}")


# --- encoding ---------------------------------------------------------------------


def _check_u64(value: int, what: str) -> None:
    if not isinstance(value, int) or not 0 <= value <= MAX_U64:
        raise ValueError(f"{what} must be an unsigned 64-bit integer, got {value!r}")


def _pack_label(text: str, what: str) -> bytes:
    if not isinstance(text, str) or not is_label(text):
        raise ValueError(f"{what} is not a canonical label: {text!r}")
    raw = text.encode("ascii")
    return bytes([len(raw)]) + raw


def _pack_endpoint(endpoint: Endpoint) -> bytes:
    return pack_endpoint(endpoint.host, endpoint.port)


def encode_body(body: Body) -> bytes:
    if isinstance(body, NodeBody):
        if len(body.link_key) != X25519_KEY_LEN or len(body.onion_key) != X25519_KEY_LEN:
            raise ValueError("link and onion keys are 32 bytes")
        if len(body.addresses) > MAX_ADDRESSES:
            raise ValueError(f"a node record holds at most {MAX_ADDRESSES} addresses")
        if not isinstance(body.capabilities, int) or not 0 <= body.capabilities <= 0xFFFF:
            raise ValueError("capabilities must fit in 16 bits")
        fixed = _NODE_FIXED.pack(
            body.link_key, body.onion_key, body.capabilities, len(body.addresses)
        )
        return fixed + b"".join(_pack_endpoint(ep) for ep in body.addresses)
    if isinstance(body, NameClaimBody):
        _check_u64(body.pow_nonce, "pow_nonce")
        return _pack_label(body.name, "name") + _U64.pack(body.pow_nonce)
    if isinstance(body, ServiceBody):
        if not isinstance(body.modes, int) or not 0 <= body.modes <= 0xFF:
            raise ValueError("modes must fit in 8 bits")
        return _pack_label(body.service, "service") + bytes([body.modes, int(bool(body.public))])
    if isinstance(body, RotationBody):
        if len(body.new_key) != SIGNER_LEN:
            raise ValueError("new_key is a 32-byte Ed25519 public key")
        return _pack_label(body.name, "name") + bytes(body.new_key)
    if isinstance(body, HiddenDescriptorBody):
        if len(body.blob) != DESCRIPTOR_BODY_SIZE:
            raise ValueError(f"a descriptor body is exactly {DESCRIPTOR_BODY_SIZE} bytes")
        return bytes(body.blob)
    raise TypeError(f"not a record body: {body!r}")


def _pack_unsigned(
    kind: Kind, signer: bytes, seq: int, issued: int, expires: int, body: bytes
) -> bytes:
    if kind not in tuple(Kind):
        raise ValueError(f"unknown record kind {kind!r}")
    if len(signer) != SIGNER_LEN:
        raise ValueError("signer is a 32-byte Ed25519 public key")
    _check_u64(seq, "seq")
    _check_u64(issued, "issued")
    _check_u64(expires, "expires")
    if len(body) > MAX_BODY_SIZE:
        raise ValueError(f"record body of {len(body)} bytes exceeds {MAX_BODY_SIZE}")
    try:
        decode_body(kind, body)
    except DecodeError as exc:
        raise ValueError(f"body does not fit its kind: {exc}") from None
    header = _HEADER.pack(MAGIC, VERSION, int(kind), bytes(signer), seq, issued, expires, len(body))
    return header + bytes(body)


def signing_bytes(
    kind: Kind, signer: bytes, seq: int, issued: int, expires: int, body: bytes
) -> bytes:
    """What the signer signs: a domain prefix and the record's encoding up to (not
    including) the signature."""
    return SIGNING_DOMAIN + _pack_unsigned(kind, signer, seq, issued, expires, body)


def encode_record(record: Record) -> bytes:
    if len(record.signature) != SIGNATURE_LEN:
        raise ValueError("signature is 64 bytes")
    unsigned = _pack_unsigned(
        record.kind, record.signer, record.seq, record.issued, record.expires, record.body
    )
    return unsigned + bytes(record.signature)


# --- decoding ---------------------------------------------------------------------


def decode_record(data: bytes) -> Record:
    """Parse an envelope and check that its body parses for its kind."""
    size = len(data)
    if size > MAX_RECORD_SIZE:
        raise DecodeError(f"record of {size} bytes exceeds {MAX_RECORD_SIZE}")
    if size < MIN_RECORD_SIZE:
        raise DecodeError(f"record of {size} bytes is shorter than the minimum")
    magic, version, kind_code, signer, seq, issued, expires, body_len = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise DecodeError("not a VX6 record (bad magic)")
    if version != VERSION:
        raise DecodeError(f"unsupported record version {version}")
    try:
        kind = Kind(kind_code)
    except ValueError:
        raise DecodeError(f"unknown record kind {kind_code}") from None
    if HEADER_LEN + body_len + SIGNATURE_LEN != size:
        raise DecodeError("record length does not match its body length")
    body = bytes(data[HEADER_LEN : HEADER_LEN + body_len])
    decode_body(kind, body)
    signature = bytes(data[HEADER_LEN + body_len :])
    return Record(kind, bytes(signer), seq, issued, expires, body, signature)


class _Reader(Reader):
    """The records' fields on the shared cursor (wire/reader.py)."""

    __slots__ = ()

    def label(self, what: str) -> str:
        length = self.u8()
        if not 1 <= length <= MAX_LABEL_LEN:
            raise DecodeError(f"{what} length {length} is outside 1..{MAX_LABEL_LEN}")
        raw = self.take(length)
        if _LABEL_BYTES.fullmatch(raw) is None:
            raise DecodeError(f"{what} is not a canonical label")
        return raw.decode("ascii")

    def endpoint_field(self) -> Endpoint:
        host, port = self.endpoint()
        return Endpoint(host, port)


def decode_body(kind: Kind, data: bytes) -> Body:
    if len(data) > MAX_BODY_SIZE:
        raise DecodeError(f"record body of {len(data)} bytes exceeds {MAX_BODY_SIZE}")
    if kind == Kind.NODE:
        reader = _Reader(data, "node record body")
        link_key = reader.take(X25519_KEY_LEN)
        onion_key = reader.take(X25519_KEY_LEN)
        capabilities = reader.u16()
        count = reader.u8()
        if count > MAX_ADDRESSES:
            raise DecodeError(f"node record lists {count} addresses, more than {MAX_ADDRESSES}")
        addresses = tuple(reader.endpoint_field() for _ in range(count))
        reader.finish()
        return NodeBody(link_key, onion_key, addresses, capabilities)
    if kind == Kind.NAME_CLAIM:
        reader = _Reader(data, "name claim body")
        name = reader.label("name")
        nonce = reader.u64()
        reader.finish()
        return NameClaimBody(name, nonce)
    if kind == Kind.SERVICE:
        reader = _Reader(data, "service record body")
        service = reader.label("service name")
        modes = reader.u8()
        public = reader.u8()
        if public > 1:
            raise DecodeError("service 'public' flag must be 0 or 1")
        reader.finish()
        return ServiceBody(service, modes, public == 1)
    if kind == Kind.ROTATION:
        reader = _Reader(data, "rotation body")
        name = reader.label("name")
        new_key = reader.take(SIGNER_LEN)
        reader.finish()
        return RotationBody(name, new_key)
    if kind == Kind.HIDDEN_DESCRIPTOR:
        if len(data) != DESCRIPTOR_BODY_SIZE:
            raise DecodeError(
                f"descriptor body of {len(data)} bytes, not exactly {DESCRIPTOR_BODY_SIZE}"
            )
        return HiddenDescriptorBody(bytes(data))
    raise DecodeError(f"unknown record kind {kind!r}")
