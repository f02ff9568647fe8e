"""Hidden-service relay messages (docs/hidden.md sections 4 and 5): the data of relay
commands 12..24, all on stream 0, and the 320-byte introduction plaintext.

    ESTABLISH_INTRO        auth key 32 | rate u16 (1..1000) | burst u16 (1..10000) | signature 64
    INTRO_ESTABLISHED      (none)
    INTRODUCE1/2           auth key 32 | X 32 | ciphertext (INTRO_PLAINTEXT_SIZE + 16)
    INTRODUCE_ACK          status u8 (IntroduceStatus)
    ESTABLISH_RENDEZVOUS   cookie 32
    RENDEZVOUS_ESTABLISHED (none)
    RENDEZVOUS1            cookie 32 | handshake reply 64
    RENDEZVOUS2            handshake reply 64
    DHT_STORE              one raw record (1..MAX_RECORD_SIZE)
    DHT_STORED             stored u16 (how many storers accepted it)
    DHT_FETCH              blinded key 32
    DHT_FETCHED            count u8 (0..8) | count x (length u16 (1..MAX_RECORD_SIZE) | record)

    introduction plaintext (320) = cookie 32 | rendezvous identity 32
        | rendezvous onion key 32 | count u8 (1..4) | endpoints x count
        | proof u8 (0 or 1) | [client identity 32 | signature 64] | zero padding

Every message has exactly one encoding: exact sizes, no trailing bytes, padding all
zeros, so `encode(decode(b)) == b` for every accepted `b`. Malformed input raises
DecodeError; values the format cannot carry raise ValueError. This module does not sign
or verify: it builds the bytes that are signed (`establish_intro_signed_bytes`,
`client_proof_signed_bytes`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from vx6.errors import DecodeError
from vx6.wire.cells import Endpoint
from vx6.wire.endpoint import pack_endpoint, unpack_endpoint
from vx6.wire.records import MAX_RECORD_SIZE

KEY_LEN = 32
SIGNATURE_LEN = 64
COOKIE_LEN = 32
BINDING_LEN = 32  # the circuit binding (docs/circuits.md, "The owner authenticates ...")
HANDSHAKE_REPLY_LEN = 64  # Y 32 | AUTH 32
AEAD_TAG_LEN = 16
INTRO_PLAINTEXT_SIZE = 320
INTRO_CIPHERTEXT_SIZE = INTRO_PLAINTEXT_SIZE + AEAD_TAG_LEN
MAX_INTRO_RATE = 1000
MAX_INTRO_BURST = 10000
MAX_INTRO_ENDPOINTS = 4
MAX_FETCHED_RECORDS = 8

ESTABLISH_INTRO_DOMAIN = b"vx6-hs-establish-intro-v1\x00"
CLIENT_PROOF_DOMAIN = b"vx6-hs-client-proof-v1\x00"

_RATE_BURST = struct.Struct(">HH")
ESTABLISH_INTRO_LEN = KEY_LEN + _RATE_BURST.size + SIGNATURE_LEN
INTRODUCE1_LEN = KEY_LEN + KEY_LEN + INTRO_CIPHERTEXT_SIZE
RENDEZVOUS1_LEN = COOKIE_LEN + HANDSHAKE_REPLY_LEN
_PLAINTEXT_FIXED = COOKIE_LEN + KEY_LEN + KEY_LEN  # cookie, rendezvous identity, onion key
_ZEROS = bytes(INTRO_PLAINTEXT_SIZE)


class IntroduceStatus(IntEnum):
    SENT_ON = 0
    UNKNOWN_INTRO = 1
    RATE_LIMITED = 2


@dataclass(frozen=True, slots=True)
class EstablishIntro:
    auth_key: bytes
    rate: int  # introductions per second the service asks for; the intro point clamps it
    burst: int
    signature: bytes  # by auth_key over establish_intro_signed_bytes(...)


@dataclass(frozen=True, slots=True)
class IntroEstablished:
    pass


@dataclass(frozen=True, slots=True)
class Introduce1:
    auth_key: bytes
    client_key: bytes  # X, the client's fresh X25519 key
    ciphertext: bytes  # the sealed IntroducePlaintext (INTRO_CIPHERTEXT_SIZE bytes)


@dataclass(frozen=True, slots=True)
class IntroduceAck:
    status: IntroduceStatus


@dataclass(frozen=True, slots=True)
class EstablishRendezvous:
    cookie: bytes


@dataclass(frozen=True, slots=True)
class RendezvousEstablished:
    pass


@dataclass(frozen=True, slots=True)
class Rendezvous1:
    cookie: bytes
    reply: bytes  # the service's handshake reply Y | AUTH


@dataclass(frozen=True, slots=True)
class Rendezvous2:
    reply: bytes


@dataclass(frozen=True, slots=True)
class IntroducePlaintext:
    cookie: bytes
    rendezvous_identity: bytes
    rendezvous_onion_key: bytes
    endpoints: tuple[Endpoint, ...]  # 1..4: where the rendezvous point listens
    client_identity: bytes | None  # both set (the client proves its key) or both None
    client_signature: bytes | None


def _need(value: bytes, length: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{what} is {length} bytes")


def _exact(data: bytes | memoryview, length: int, what: str) -> bytes:
    if len(data) != length:
        raise DecodeError(f"{what} is {length} bytes, got {len(data)}")
    return bytes(data)


def establish_intro_signed_bytes(binding: bytes, auth_key: bytes, rate: int, burst: int) -> bytes:
    """What the auth key signs: the circuit binding ties it to one circuit."""
    _need(binding, BINDING_LEN, "a circuit binding")
    _need(auth_key, KEY_LEN, "an auth key")
    return ESTABLISH_INTRO_DOMAIN + binding + auth_key + _pack_rate_burst(rate, burst)


def _pack_rate_burst(rate: int, burst: int) -> bytes:
    if not 1 <= rate <= MAX_INTRO_RATE:
        raise ValueError(f"rate must be 1..{MAX_INTRO_RATE}, got {rate}")
    if not 1 <= burst <= MAX_INTRO_BURST:
        raise ValueError(f"burst must be 1..{MAX_INTRO_BURST}, got {burst}")
    return _RATE_BURST.pack(rate, burst)


def encode_establish_intro(message: EstablishIntro) -> bytes:
    _need(message.auth_key, KEY_LEN, "an auth key")
    _need(message.signature, SIGNATURE_LEN, "a signature")
    rate_burst = _pack_rate_burst(message.rate, message.burst)
    return message.auth_key + rate_burst + message.signature


def decode_establish_intro(data: bytes | memoryview) -> EstablishIntro:
    raw = _exact(data, ESTABLISH_INTRO_LEN, "ESTABLISH_INTRO")
    rate, burst = _RATE_BURST.unpack_from(raw, KEY_LEN)
    if not 1 <= rate <= MAX_INTRO_RATE:
        raise DecodeError(f"ESTABLISH_INTRO rate {rate} outside 1..{MAX_INTRO_RATE}")
    if not 1 <= burst <= MAX_INTRO_BURST:
        raise DecodeError(f"ESTABLISH_INTRO burst {burst} outside 1..{MAX_INTRO_BURST}")
    return EstablishIntro(raw[:KEY_LEN], rate, burst, raw[KEY_LEN + _RATE_BURST.size :])


def encode_intro_established(message: IntroEstablished) -> bytes:
    return b""


def decode_intro_established(data: bytes | memoryview) -> IntroEstablished:
    _exact(data, 0, "INTRO_ESTABLISHED")
    return IntroEstablished()


def encode_introduce1(message: Introduce1) -> bytes:
    _need(message.auth_key, KEY_LEN, "an auth key")
    _need(message.client_key, KEY_LEN, "a client key")
    _need(message.ciphertext, INTRO_CIPHERTEXT_SIZE, "an introduction ciphertext")
    return message.auth_key + message.client_key + message.ciphertext


def decode_introduce1(data: bytes | memoryview) -> Introduce1:
    """INTRODUCE1 (and INTRODUCE2, which carries the same bytes)."""
    raw = _exact(data, INTRODUCE1_LEN, "INTRODUCE1")
    return Introduce1(raw[:KEY_LEN], raw[KEY_LEN : 2 * KEY_LEN], raw[2 * KEY_LEN :])


def encode_introduce_ack(message: IntroduceAck) -> bytes:
    return bytes([IntroduceStatus(message.status)])


def decode_introduce_ack(data: bytes | memoryview) -> IntroduceAck:
    raw = _exact(data, 1, "INTRODUCE_ACK")
    try:
        return IntroduceAck(IntroduceStatus(raw[0]))
    except ValueError:
        raise DecodeError(f"unknown INTRODUCE_ACK status {raw[0]}") from None


def encode_establish_rendezvous(message: EstablishRendezvous) -> bytes:
    _need(message.cookie, COOKIE_LEN, "a rendezvous cookie")
    return message.cookie


def decode_establish_rendezvous(data: bytes | memoryview) -> EstablishRendezvous:
    return EstablishRendezvous(_exact(data, COOKIE_LEN, "ESTABLISH_RENDEZVOUS"))


def encode_rendezvous_established(message: RendezvousEstablished) -> bytes:
    return b""


def decode_rendezvous_established(data: bytes | memoryview) -> RendezvousEstablished:
    _exact(data, 0, "RENDEZVOUS_ESTABLISHED")
    return RendezvousEstablished()


def encode_rendezvous1(message: Rendezvous1) -> bytes:
    _need(message.cookie, COOKIE_LEN, "a rendezvous cookie")
    _need(message.reply, HANDSHAKE_REPLY_LEN, "a handshake reply")
    return message.cookie + message.reply


def decode_rendezvous1(data: bytes | memoryview) -> Rendezvous1:
    raw = _exact(data, RENDEZVOUS1_LEN, "RENDEZVOUS1")
    return Rendezvous1(raw[:COOKIE_LEN], raw[COOKIE_LEN:])


def encode_rendezvous2(message: Rendezvous2) -> bytes:
    _need(message.reply, HANDSHAKE_REPLY_LEN, "a handshake reply")
    return message.reply


def decode_rendezvous2(data: bytes | memoryview) -> Rendezvous2:
    return Rendezvous2(_exact(data, HANDSHAKE_REPLY_LEN, "RENDEZVOUS2"))


def client_proof_signed_bytes(auth_key: bytes, client_key: bytes, cookie: bytes) -> bytes:
    """What a client that proves its identity signs: tied to this intro, this
    introduction (X) and this rendezvous (cookie)."""
    _need(auth_key, KEY_LEN, "an auth key")
    _need(client_key, KEY_LEN, "a client key")
    _need(cookie, COOKIE_LEN, "a rendezvous cookie")
    return CLIENT_PROOF_DOMAIN + auth_key + client_key + cookie


def encode_introduce_plaintext(plaintext: IntroducePlaintext) -> bytes:
    """Exactly INTRO_PLAINTEXT_SIZE bytes."""
    _need(plaintext.cookie, COOKIE_LEN, "a rendezvous cookie")
    _need(plaintext.rendezvous_identity, KEY_LEN, "a rendezvous identity")
    _need(plaintext.rendezvous_onion_key, KEY_LEN, "a rendezvous onion key")
    count = len(plaintext.endpoints)
    if not 1 <= count <= MAX_INTRO_ENDPOINTS:
        raise ValueError(f"1..{MAX_INTRO_ENDPOINTS} rendezvous endpoints, got {count}")
    out = [plaintext.cookie, plaintext.rendezvous_identity, plaintext.rendezvous_onion_key]
    out.append(bytes([count]))
    out += [pack_endpoint(endpoint.host, endpoint.port) for endpoint in plaintext.endpoints]
    identity, signature = plaintext.client_identity, plaintext.client_signature
    if identity is None and signature is None:
        out.append(b"\x00")
    elif identity is not None and signature is not None:
        _need(identity, KEY_LEN, "a client identity")
        _need(signature, SIGNATURE_LEN, "a client signature")
        out += [b"\x01", identity, signature]
    else:
        raise ValueError("a client proof is an identity and a signature, or neither")
    fields = b"".join(out)
    # Cannot overflow: the largest (four IPv6 endpoints and a proof) is 270 bytes.
    return fields + _ZEROS[: INTRO_PLAINTEXT_SIZE - len(fields)]


def decode_introduce_plaintext(data: bytes | memoryview) -> IntroducePlaintext:
    raw = _exact(data, INTRO_PLAINTEXT_SIZE, "an introduction plaintext")
    cookie = raw[:COOKIE_LEN]
    identity = raw[COOKIE_LEN : COOKIE_LEN + KEY_LEN]
    onion_key = raw[COOKIE_LEN + KEY_LEN : _PLAINTEXT_FIXED]
    count = raw[_PLAINTEXT_FIXED]
    if not 1 <= count <= MAX_INTRO_ENDPOINTS:
        raise DecodeError(f"introduction names {count} endpoints, 1..{MAX_INTRO_ENDPOINTS}")
    pos = _PLAINTEXT_FIXED + 1
    endpoints: list[Endpoint] = []
    for _ in range(count):
        host, port, pos = unpack_endpoint(raw, pos)
        endpoints.append(Endpoint(host, port))
    proof = raw[pos]  # in range: four IPv6 endpoints end at byte 173 of 320
    pos += 1
    client_identity: bytes | None = None
    client_signature: bytes | None = None
    if proof == 1:
        client_identity = raw[pos : pos + KEY_LEN]
        client_signature = raw[pos + KEY_LEN : pos + KEY_LEN + SIGNATURE_LEN]
        pos += KEY_LEN + SIGNATURE_LEN
    elif proof != 0:
        raise DecodeError(f"introduction proof flag {proof}, not 0 or 1")
    if raw[pos:] != _ZEROS[: INTRO_PLAINTEXT_SIZE - pos]:
        raise DecodeError("introduction plaintext has non-zero padding")
    return IntroducePlaintext(
        cookie, identity, onion_key, tuple(endpoints), client_identity, client_signature
    )


# ---------------------------------------------------------------- the directory proxy
@dataclass(frozen=True, slots=True)
class DhtStore:
    record: bytes  # one signed record, as the DHT stores it


@dataclass(frozen=True, slots=True)
class DhtStored:
    stored: int  # how many storers acknowledged it, over both replica keys


@dataclass(frozen=True, slots=True)
class DhtFetch:
    blinded_key: bytes


@dataclass(frozen=True, slots=True)
class DhtFetched:
    records: tuple[bytes, ...]  # at most MAX_FETCHED_RECORDS raw records


_U16 = struct.Struct(">H")


def _record_size_ok(record: bytes | memoryview) -> bool:
    return 0 < len(record) <= MAX_RECORD_SIZE


def encode_dht_store(message: DhtStore) -> bytes:
    if not isinstance(message.record, bytes) or not _record_size_ok(message.record):
        raise ValueError(f"a record is 1..{MAX_RECORD_SIZE} bytes")
    return message.record


def decode_dht_store(data: bytes | memoryview) -> DhtStore:
    if not _record_size_ok(data):
        raise DecodeError(f"a DHT_STORE record is 1..{MAX_RECORD_SIZE} bytes, got {len(data)}")
    return DhtStore(bytes(data))


def encode_dht_stored(message: DhtStored) -> bytes:
    if not 0 <= message.stored <= 0xFFFF:
        raise ValueError("stored is a u16")
    return _U16.pack(message.stored)


def decode_dht_stored(data: bytes | memoryview) -> DhtStored:
    return DhtStored(_U16.unpack(_exact(data, _U16.size, "DHT_STORED"))[0])


def encode_dht_fetch(message: DhtFetch) -> bytes:
    _need(message.blinded_key, KEY_LEN, "a blinded key")
    return message.blinded_key


def decode_dht_fetch(data: bytes | memoryview) -> DhtFetch:
    return DhtFetch(_exact(data, KEY_LEN, "DHT_FETCH"))


def encode_dht_fetched(message: DhtFetched) -> bytes:
    if len(message.records) > MAX_FETCHED_RECORDS:
        raise ValueError(f"at most {MAX_FETCHED_RECORDS} records")
    out = [bytes([len(message.records)])]
    for record in message.records:
        if not isinstance(record, bytes) or not _record_size_ok(record):
            raise ValueError(f"a record is 1..{MAX_RECORD_SIZE} bytes")
        out += [_U16.pack(len(record)), record]
    return b"".join(out)


def decode_dht_fetched(data: bytes | memoryview) -> DhtFetched:
    view = memoryview(data)
    if not view or view[0] > MAX_FETCHED_RECORDS:
        raise DecodeError(f"DHT_FETCHED carries 0..{MAX_FETCHED_RECORDS} records")
    records, at = [], 1
    for _ in range(view[0]):
        if len(view) < at + _U16.size:
            raise DecodeError("DHT_FETCHED ends inside a length")
        (length,) = _U16.unpack_from(view, at)
        at += _U16.size
        if not 0 < length <= MAX_RECORD_SIZE or len(view) < at + length:
            raise DecodeError(f"DHT_FETCHED record length {length} does not fit")
        records.append(bytes(view[at : at + length]))
        at += length
    if at != len(view):
        raise DecodeError("DHT_FETCHED has trailing bytes")
    return DhtFetched(tuple(records))
