"""DHT datagrams (wire/dht.py): golden bytes per message, round trips, hostile input."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vx6.errors import DecodeError
from vx6.wire import dht as w

KEY = bytes(range(32))
TARGET = bytes([0xAA]) * 32
TOKEN = bytes(range(0xF0, 0x100))
NODE_A = bytes([0x11]) * 32
TXID = 0x0102030405060708
HEADER = "01 {type:02x} 0102030405060708 " + KEY.hex()


def fake_sign(message: bytes) -> bytes:
    """Deterministic 64-byte stand-in: the golden bytes then also pin what is signed."""
    return hashlib.sha512(message).digest()


# --- golden bytes -------------------------------------------------------------------

GOLDEN: list[tuple[w.Message, str]] = [
    (w.Ping(TXID, KEY), HEADER.format(type=1)),
    (
        w.Pong(TXID, KEY, "2001:db8::5", 4242),
        HEADER.format(type=2) + " 06 20010db8000000000000000000000005 1092",
    ),
    (w.Pong(TXID, KEY, "192.0.2.7", 1), HEADER.format(type=2) + " 04 c0000207 0001"),
    (w.FindNode(TXID, KEY, TARGET), HEADER.format(type=3) + " " + TARGET.hex()),
    (w.Nodes(TXID, KEY, TOKEN, ()), HEADER.format(type=4) + " " + TOKEN.hex() + " 00"),
    (
        w.Nodes(
            TXID,
            KEY,
            TOKEN,
            (w.WireContact(NODE_A, "fd76:7836::1", 80), w.WireContact(TARGET, "198.18.0.1", 443)),
        ),
        HEADER.format(type=4)
        + f" {TOKEN.hex()} 02 {NODE_A.hex()} 06 fd767836000000000000000000000001 0050"
        + f" {TARGET.hex()} 04 c6120001 01bb",
    ),
    (w.FindValue(TXID, KEY, TARGET), HEADER.format(type=5) + " " + TARGET.hex()),
    (w.Ping(TXID, KEY, 3), HEADER.format(type=1) + " 000000"),
    (
        w.FindNode(TXID, KEY, TARGET, TOKEN, 2),
        HEADER.format(type=3) + f" {TARGET.hex()} {TOKEN.hex()} 0000",
    ),
    (
        w.FindValue(TXID, KEY, TARGET, b"", 17),
        HEADER.format(type=5) + f" {TARGET.hex()} " + "00" * 17,
    ),
    (
        w.Values(TXID, KEY, TOKEN, (b"rec", b"\x00")),
        HEADER.format(type=6) + f" {TOKEN.hex()} 02 0003 726563 0001 00",
    ),
    (
        w.Store(TXID, KEY, TARGET, TOKEN, b"abc"),
        HEADER.format(type=7) + f" {TARGET.hex()} {TOKEN.hex()} 0003 616263",
    ),
    (w.Stored(TXID, KEY, w.StoreStatus.OK, ""), HEADER.format(type=8) + " 00 00"),
    (
        w.Stored(TXID, KEY, w.StoreStatus.REFUSED, "wrong-key"),
        HEADER.format(type=8) + " 02 09 77726f6e672d6b6579",
    ),
]


@pytest.mark.parametrize(("message", "unsigned_hex"), GOLDEN, ids=lambda v: repr(v)[:40])
def test_golden_messages(message: w.Message, unsigned_hex: str) -> None:
    unsigned = bytes.fromhex(unsigned_hex)
    signature = hashlib.sha512(b"vx6-dht-v1\x00" + unsigned).digest()
    encoded = w.encode_message(message, fake_sign)
    assert encoded == unsigned + signature
    decoded = w.decode_message(encoded)
    assert decoded.message == message
    assert decoded.signed == w.SIGNING_DOMAIN + unsigned
    assert decoded.signature == signature


def test_every_message_type_has_a_golden_vector() -> None:
    covered = {w.encode_message(m, fake_sign)[1] for m, _ in GOLDEN}
    assert covered == {t.value for t in w.MessageType}


def test_type_numbers_and_constants_are_fixed() -> None:
    assert [(t.name, t.value) for t in w.MessageType] == [
        ("PING", 1),
        ("PONG", 2),
        ("FIND_NODE", 3),
        ("NODES", 4),
        ("FIND_VALUE", 5),
        ("VALUES", 6),
        ("STORE", 7),
        ("STORED", 8),
    ]
    assert w.MAX_DATAGRAM == 1232
    assert w.OVERHEAD == 106


# --- sizes --------------------------------------------------------------------------


def test_largest_messages_fit_in_one_datagram() -> None:
    full_nodes = w.Nodes(
        TXID,
        KEY,
        TOKEN,
        tuple(w.WireContact(bytes([i]) * 32, f"2001:db8::{i + 1:x}", 65535) for i in range(20)),
    )
    assert len(w.encode_message(full_nodes, fake_sign)) <= w.MAX_DATAGRAM
    biggest_store = w.Store(TXID, KEY, TARGET, TOKEN, bytes(w.MAX_VALUE_LEN))
    assert len(w.encode_message(biggest_store, fake_sign)) <= w.MAX_DATAGRAM
    one_record = w.Values(TXID, KEY, TOKEN, (bytes(w.MAX_VALUE_LEN),))
    assert len(w.encode_message(one_record, fake_sign)) <= w.MAX_DATAGRAM


def test_encoder_refuses_what_does_not_fit() -> None:
    two_big = w.Values(TXID, KEY, TOKEN, (bytes(1000), bytes(1000)))
    with pytest.raises(ValueError, match="exceeds"):
        w.encode_message(two_big, fake_sign)
    too_many = w.Nodes(TXID, KEY, TOKEN, (w.WireContact(NODE_A, "192.0.2.1", 1),) * 21)
    with pytest.raises(ValueError):
        w.encode_message(too_many, fake_sign)


@pytest.mark.parametrize(
    "message",
    [
        w.Ping(TXID, KEY[:31]),
        w.Ping(-1, KEY),
        w.Ping(2**64, KEY),
        w.FindNode(TXID, KEY, TARGET[:31]),
        w.FindNode(TXID, KEY, TARGET, w.NO_TOKEN),  # all-zero means none: not encodable
        w.FindNode(TXID, KEY, TARGET, TOKEN[:15]),
        w.FindNode(TXID, KEY, TARGET, b"", 5),  # padding without token: 0 or >= 16
        w.FindNode(TXID, KEY, TARGET, TOKEN, 2000),  # over the datagram size
        w.Ping(TXID, KEY, -1),
        w.Nodes(TXID, KEY, TOKEN[:15], ()),
        w.Nodes(TXID, KEY, TOKEN, (w.WireContact(NODE_A, "::ffff:1.2.3.4", 1),)),
        w.Nodes(TXID, KEY, TOKEN, (w.WireContact(NODE_A, "fe80::1%eth0", 1),)),
        w.Nodes(TXID, KEY, TOKEN, (w.WireContact(NODE_A, "2001:DB8::1", 1),)),
        w.Nodes(TXID, KEY, TOKEN, (w.WireContact(NODE_A, "example.com", 1),)),
        w.Nodes(TXID, KEY, TOKEN, (w.WireContact(NODE_A, "192.0.2.1", 0),)),
        w.Values(TXID, KEY, TOKEN, ()),
        w.Values(TXID, KEY, TOKEN, (b"",)),
        w.Store(TXID, KEY, TARGET, TOKEN, bytes(1025)),
        w.Stored(TXID, KEY, w.StoreStatus.OK, "é"),
        w.Stored(TXID, KEY, w.StoreStatus.OK, "x" * 65),
        w.Stored(TXID, KEY, w.StoreStatus.OK, "a\nb"),
    ],
    ids=lambda m: repr(m)[:50],
)
def test_values_without_an_encoding_are_refused(message: w.Message) -> None:
    with pytest.raises(ValueError):
        w.encode_message(message, fake_sign)


def test_size_is_checked_before_parsing() -> None:
    valid = w.encode_message(w.Ping(TXID, KEY), fake_sign)
    with pytest.raises(DecodeError, match="exceeds 1232"):
        w.decode_message(valid + bytes(1233 - len(valid)))
    with pytest.raises(DecodeError, match="shorter"):
        w.decode_message(valid[:-1][: w.OVERHEAD - 1])


@pytest.mark.parametrize(
    ("unsigned_hex", "why"),
    [
        ("02" + HEADER.format(type=1)[2:], "version"),
        (HEADER.format(type=9), "unknown DHT message type"),
        (HEADER.format(type=0), "unknown DHT message type"),
        (HEADER.format(type=1) + " 01", "not zero"),  # a PING may be padded, with zeros
        (HEADER.format(type=2) + " 04 c0000207 0001 00", "trailing"),
        (HEADER.format(type=3) + " " + TARGET.hex()[:-2], "truncated"),
        (HEADER.format(type=2) + " 05 c0000207 0001", "family"),
        (HEADER.format(type=2) + " 04 c0000207 0000", "port 0"),
        (HEADER.format(type=2) + " 06 00000000000000000000ffffc0000207 0001", "IPv4-mapped"),
        (HEADER.format(type=4) + f" {TOKEN.hex()} 15", "more than 20"),
        (HEADER.format(type=4) + f" {TOKEN.hex()} 01 {NODE_A.hex()} 04 c00002", "truncated"),
        (HEADER.format(type=6) + f" {TOKEN.hex()} 00", "without a value"),
        (HEADER.format(type=6) + f" {TOKEN.hex()} 01 0000", "value length 0"),
        (HEADER.format(type=6) + f" {TOKEN.hex()} 01 0401", "value length 1025"),
        (HEADER.format(type=8) + " 07 00", "store status"),
        (HEADER.format(type=8) + " 00 01 0a", "printable"),
        (HEADER.format(type=8) + " 00 41 " + "61" * 65, "printable"),
    ],
)
def test_malformed_messages_are_decode_errors(unsigned_hex: str, why: str) -> None:
    data = bytes.fromhex(unsigned_hex) + bytes(64)
    with pytest.raises(DecodeError, match=why):
        w.decode_message(data)


# --- properties ---------------------------------------------------------------------

keys = st.binary(min_size=32, max_size=32)
txids = st.integers(0, 2**64 - 1)
ports = st.integers(1, 65535)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str),
)
contacts = st.builds(w.WireContact, keys, hosts, ports)
values = st.binary(min_size=1, max_size=300)
find_tokens = st.binary(min_size=16, max_size=16).filter(lambda t: t != w.NO_TOKEN)
reasons = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64)
messages = st.one_of(
    st.builds(w.Ping, txids, keys, st.integers(0, 200)),
    st.builds(w.Pong, txids, keys, hosts, ports),
    st.builds(w.FindNode, txids, keys, keys),
    st.builds(w.FindValue, txids, keys, keys),
    st.builds(w.FindNode, txids, keys, keys, find_tokens, st.integers(0, 300)),
    st.builds(w.FindValue, txids, keys, keys, find_tokens, st.integers(0, 300)),
    st.builds(w.FindNode, txids, keys, keys, st.just(b""), st.integers(16, 300)),
    st.builds(
        w.Nodes,
        txids,
        keys,
        st.binary(min_size=16, max_size=16),
        st.lists(contacts, max_size=20).map(tuple),
    ),
    st.builds(
        w.Values,
        txids,
        keys,
        st.binary(min_size=16, max_size=16),
        st.lists(values, min_size=1, max_size=3).map(tuple),
    ),
    st.builds(w.Store, txids, keys, keys, st.binary(min_size=16, max_size=16), values),
    st.builds(w.Stored, txids, keys, st.sampled_from(w.StoreStatus), reasons),
)


@pytest.mark.parametrize(
    "body",
    [
        TARGET.hex() + " 0102",  # shorter than a token field
        TARGET.hex() + " " + TOKEN.hex() + " 0001",  # padding that is not zero
    ],
)
def test_bad_find_extensions_are_refused(body: str) -> None:
    unsigned = bytes.fromhex((HEADER.format(type=3) + " " + body).replace(" ", ""))
    with pytest.raises(DecodeError):
        w.decode_message(unsigned + fake_sign(unsigned))


def test_ping_with_nonzero_padding_is_refused() -> None:
    unsigned = bytes.fromhex((HEADER.format(type=1) + " 0001").replace(" ", ""))
    with pytest.raises(DecodeError):
        w.decode_message(unsigned + fake_sign(unsigned))


def test_size_constants() -> None:
    ping = w.encode_message(w.Ping(TXID, KEY, w.PING_PADDING), fake_sign)
    pong = w.encode_message(w.Pong(TXID, KEY, "2001:db8::5", 1), fake_sign)
    assert len(ping) == len(pong) == w.PONG_MAX
    empty = w.encode_message(w.Nodes(TXID, KEY, TOKEN, ()), fake_sign)
    assert len(empty) == w.NODES_BASE
    one = w.Nodes(TXID, KEY, TOKEN, (w.WireContact(NODE_A, "198.18.0.1", 1),))
    assert len(w.encode_message(one, fake_sign)) == w.NODES_BASE + w.contact_size("198.18.0.1")


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip_is_exact(message: w.Message) -> None:
    encoded = w.encode_message(message, fake_sign)
    assert len(encoded) <= w.MAX_DATAGRAM
    decoded = w.decode_message(encoded)
    assert decoded.message == message
    assert w.encode_message(decoded.message, fake_sign) == encoded
    assert decoded.signature == fake_sign(decoded.signed)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1400))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        decoded = w.decode_message(data)
    except DecodeError:
        return
    assert w.unsigned_bytes(decoded.message) + decoded.signature == data


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_mutated_messages_raise_only_decode_error_or_reencode_exactly(
    message: w.Message, data: st.DataObject
) -> None:
    encoded = bytearray(w.encode_message(message, fake_sign))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    mutated = bytes(encoded[:cut])
    try:
        decoded = w.decode_message(mutated)
    except DecodeError:
        return
    assert w.unsigned_bytes(decoded.message) + decoded.signature == mutated
