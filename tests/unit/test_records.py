"""Signed records: golden bytes, canonical codec properties, acceptance rules."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vx6.core.records import (
    MAX_CLOCK_SKEW,
    MAX_DESCRIPTOR_LIFETIME,
    MAX_LIFETIME,
    check_record,
    make_record,
    record_slot,
)
from vx6.crypto.keys import Identity, verify
from vx6.crypto.records import sign_record, verify_record
from vx6.errors import DecodeError, RecordRejected
from vx6.wire.records import (
    DESCRIPTOR_BODY_SIZE,
    HEADER_LEN,
    MAX_BODY_SIZE,
    MAX_RECORD_SIZE,
    SIGNING_DOMAIN,
    Body,
    Capability,
    Endpoint,
    HiddenDescriptorBody,
    Kind,
    Mode,
    NameClaimBody,
    NodeBody,
    Record,
    RotationBody,
    ServiceBody,
    decode_body,
    decode_record,
    encode_body,
    encode_record,
    kind_of_body,
    signing_bytes,
)

GOLDEN = json.loads((Path(__file__).parent / "vectors" / "records_golden.json").read_text())
SEED = bytes(range(32))
ALICE = Identity(SEED)
MALLORY = Identity(bytes(range(100, 132)))
NOW = 1_700_000_000
DAY = 86400


def golden_body(vector: dict[str, Any]) -> Body:
    fields = vector["body"]
    kind = Kind[vector["kind"]]
    if kind == Kind.NODE:
        return NodeBody(
            bytes.fromhex(fields["link_key"]),
            bytes.fromhex(fields["onion_key"]),
            tuple(Endpoint(host, port) for host, port in fields["addresses"]),
            fields["capabilities"],
        )
    if kind == Kind.NAME_CLAIM:
        return NameClaimBody(fields["name"], fields["pow_nonce"])
    if kind == Kind.ROTATION:
        return RotationBody(fields["name"], bytes.fromhex(fields["new_key"]))
    if kind == Kind.HIDDEN_DESCRIPTOR:
        return HiddenDescriptorBody(bytes.fromhex(fields["blob"]))
    return ServiceBody(fields["service"], fields["modes"], fields["public"])


# --- golden bytes -------------------------------------------------------------------


def test_golden_identity() -> None:
    assert bytes.fromhex(GOLDEN["identity_seed"]) == SEED
    assert ALICE.public.hex() == GOLDEN["signer"]
    assert {v["kind"] for v in GOLDEN["vectors"]} == {k.name for k in Kind}


@pytest.mark.parametrize("vector", GOLDEN["vectors"], ids=lambda v: v["kind"])
def test_golden_encoding(vector: dict[str, Any]) -> None:
    body = golden_body(vector)
    kind = Kind[vector["kind"]]
    assert kind_of_body(body) == kind
    assert encode_body(body).hex() == vector["body_hex"]
    record = sign_record(
        ALICE, kind, vector["seq"], vector["issued"], vector["expires"], encode_body(body)
    )
    assert record.signature.hex() == vector["signature"]
    assert encode_record(record).hex() == vector["record_hex"]


@pytest.mark.parametrize("vector", GOLDEN["vectors"], ids=lambda v: v["kind"])
def test_golden_decoding(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["record_hex"])
    record = decode_record(raw)
    assert record.kind == Kind[vector["kind"]]
    assert record.signer == ALICE.public
    assert (record.seq, record.issued, record.expires) == (
        vector["seq"],
        vector["issued"],
        vector["expires"],
    )
    assert record.body.hex() == vector["body_hex"]
    assert record.signature.hex() == vector["signature"]
    assert record.parsed_body() == golden_body(vector)
    assert verify_record(record)
    assert check_record(raw, NOW, vector["seq"] - 1) == record


def test_golden_layout_assembled_by_hand() -> None:
    """The envelope layout, spelled out field by field, independent of the codec."""
    vector = next(v for v in GOLDEN["vectors"] if v["kind"] == "SERVICE")
    body = b"\x03ssh" + b"\x03" + b"\x00"  # label, modes DIRECT|RELAY, public=0
    assert body.hex() == vector["body_hex"]
    unsigned = (
        b"VX6R"
        + b"\x01"  # version
        + b"\x03"  # kind SERVICE
        + ALICE.public
        + (3).to_bytes(8, "big")
        + NOW.to_bytes(8, "big")
        + (NOW + DAY).to_bytes(8, "big")
        + len(body).to_bytes(2, "big")
        + body
    )
    signature = bytes.fromhex(vector["signature"])
    assert (unsigned + signature).hex() == vector["record_hex"]
    assert verify(ALICE.public, b"vx6-record-v1\x00" + unsigned, signature)
    assert signing_bytes(Kind.SERVICE, ALICE.public, 3, NOW, NOW + DAY, body) == (
        SIGNING_DOMAIN + unsigned
    )


def test_subject_per_kind() -> None:
    subjects = {
        v["kind"]: decode_record(bytes.fromhex(v["record_hex"])).subject for v in GOLDEN["vectors"]
    }
    assert subjects == {
        "NODE": "",
        "NAME_CLAIM": "alice",
        "SERVICE": "ssh",
        "ROTATION": "alice",
        "HIDDEN_DESCRIPTOR": "",
    }
    record = decode_record(bytes.fromhex(GOLDEN["vectors"][1]["record_hex"]))
    assert record_slot(record) == (Kind.NAME_CLAIM, ALICE.public, "alice")


# --- strategies ---------------------------------------------------------------------

labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?", fullmatch=True)
keys32 = st.binary(min_size=32, max_size=32)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
ports = st.integers(min_value=1, max_value=65535)


def _has_one_encoding(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not isinstance(addr, ipaddress.IPv6Address) or addr.ipv4_mapped is None


hosts = st.ip_addresses().filter(_has_one_encoding).map(str)
endpoints = st.builds(Endpoint, hosts, ports)
node_bodies = st.builds(
    NodeBody,
    keys32,
    keys32,
    st.lists(endpoints, max_size=8).map(tuple),
    st.integers(min_value=0, max_value=0xFFFF),
)
claim_bodies = st.builds(NameClaimBody, labels, u64)
service_bodies = st.builds(
    ServiceBody, labels, st.integers(min_value=0, max_value=255), st.booleans()
)
rotation_bodies = st.builds(RotationBody, labels, keys32)
descriptor_bodies = st.builds(
    HiddenDescriptorBody,
    st.binary(min_size=DESCRIPTOR_BODY_SIZE, max_size=DESCRIPTOR_BODY_SIZE),
)
bodies: st.SearchStrategy[Body] = st.one_of(
    node_bodies, claim_bodies, service_bodies, rotation_bodies, descriptor_bodies
)


@st.composite
def records(draw: st.DrawFn) -> Record:
    body = draw(bodies)
    return Record(
        kind_of_body(body),
        draw(keys32),
        draw(u64),
        draw(u64),
        draw(u64),
        encode_body(body),
        draw(st.binary(min_size=64, max_size=64)),
    )


@st.composite
def signed_raw(draw: st.DrawFn) -> bytes:
    """A record that check_record accepts at NOW with nothing held."""
    body = draw(bodies)
    descriptor = isinstance(body, HiddenDescriptorBody)
    longest = MAX_DESCRIPTOR_LIFETIME if descriptor else MAX_LIFETIME
    issued = draw(st.integers(min_value=NOW - (3600 if descriptor else DAY), max_value=NOW))
    lifetime = draw(st.integers(min_value=NOW - issued + 1, max_value=longest))
    record = sign_record(
        ALICE, kind_of_body(body), draw(u64), issued, issued + lifetime, encode_body(body)
    )
    return encode_record(record)


# --- codec properties ---------------------------------------------------------------


@given(bodies)
def test_body_round_trip(body: Body) -> None:
    raw = encode_body(body)
    assert decode_body(kind_of_body(body), raw) == body
    assert encode_body(decode_body(kind_of_body(body), raw)) == raw


@given(records())
def test_record_round_trip(record: Record) -> None:
    raw = encode_record(record)
    assert len(raw) <= MAX_RECORD_SIZE
    assert decode_record(raw) == record
    assert encode_record(decode_record(raw)) == raw
    assert (
        signing_bytes(
            record.kind, record.signer, record.seq, record.issued, record.expires, record.body
        )
        == SIGNING_DOMAIN + raw[:-64]
    )


@given(records())
def test_every_truncation_is_a_decode_error(record: Record) -> None:
    raw = encode_record(record)
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            decode_record(raw[:cut])


@given(records(), st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_a_decode_error(record: Record, extra: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_record(encode_record(record) + extra)


@given(bodies, st.binary(min_size=1, max_size=4))
def test_body_trailing_bytes_are_a_decode_error(body: Body, extra: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_body(kind_of_body(body), encode_body(body) + extra)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(signed_raw(), st.data())
def test_single_byte_mutation_is_refused(raw: bytes, data: st.DataObject) -> None:
    pos = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    delta = data.draw(st.integers(min_value=1, max_value=255))
    mutated = bytearray(raw)
    mutated[pos] ^= delta
    with pytest.raises((DecodeError, RecordRejected)):
        check_record(bytes(mutated), NOW, None)
    assert check_record(raw, NOW, None) == decode_record(raw)


random_inputs = st.one_of(
    st.binary(max_size=MAX_RECORD_SIZE + 64),
    # past the magic and version, so the fuzzing reaches the fields behind them
    st.tuples(st.integers(min_value=0, max_value=5), st.binary(max_size=400)).map(
        lambda t: b"VX6R\x01" + bytes([t[0]]) + t[1]
    ),
)


@given(random_inputs)
def test_random_bytes_raise_only_typed_errors(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_record(raw)
    with contextlib.suppress(DecodeError, RecordRejected):
        check_record(raw, NOW, None)


@given(st.sampled_from(list(Kind)), st.binary(max_size=80))
def test_random_bodies_raise_only_decode_error(kind: Kind, raw: bytes) -> None:
    try:
        body = decode_body(kind, raw)
    except DecodeError:
        return
    assert encode_body(body) == raw  # anything accepted is canonical


@given(records(), st.binary(max_size=80))
def test_random_body_in_valid_envelope(record: Record, raw_body: bytes) -> None:
    """Garbage bodies behind a well-formed header never escape as other exceptions."""
    raw = encode_record(record)
    header = bytearray(raw[:HEADER_LEN])
    header[-2:] = len(raw_body).to_bytes(2, "big")
    try:
        decoded = decode_record(bytes(header) + raw_body + record.signature)
    except DecodeError:
        return
    assert encode_body(decoded.parsed_body()) == raw_body


# --- specific malformations -----------------------------------------------------------


def golden_raw(kind: str) -> bytes:
    return bytes.fromhex(next(v for v in GOLDEN["vectors"] if v["kind"] == kind)["record_hex"])


def patched(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"VX6X", "magic"),
        (4, b"\x02", "version"),
        (5, b"\x04", "descriptor body"),  # a NODE body read as a descriptor
        (5, b"\x06", "kind"),
        (5, b"\x00", "kind"),
        (5, b"\x02", "label"),  # a NODE body read as a NAME_CLAIM
    ],
)
def test_header_malformations(offset: int, value: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_record(patched(golden_raw("NODE"), offset, value))


def service_record(body: bytes) -> bytes:
    header = struct.pack(">4sBB32sQQQH", b"VX6R", 1, 3, ALICE.public, 1, NOW, NOW + DAY, len(body))
    return header + body + bytes(64)


@pytest.mark.parametrize(
    "body",
    [
        b"\x03SSH\x01\x00",  # uppercase is not canonical on the wire
        b"\x04ssh-\x01\x00",  # trailing hyphen
        b"\x04-ssh\x01\x00",
        b"\x00\x01\x00",  # empty label
        b"\x21" + b"a" * 33 + b"\x01\x00",  # 33 characters
        b"\x03s\xe9h\x01\x00",  # not ASCII
        b"\x03ssh\x01\x02",  # boolean must be 0 or 1
        b"\x03ssh\x01",  # truncated
        b"\x03ssh\x01\x00\x00",  # trailing
    ],
)
def test_bad_service_bodies(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_record(service_record(body))


def node_body(count: int, endpoints: bytes) -> bytes:
    return bytes(64) + b"\x00\x01" + bytes([count]) + endpoints


@pytest.mark.parametrize(
    "body",
    [
        node_body(1, b"\x05" + bytes(4) + b"\x00\x16"),  # unknown family
        node_body(1, b"\x04" + bytes([10, 0, 0, 1]) + b"\x00\x00"),  # port 0
        node_body(1, b"\x06" + bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]) + b"\x00\x16"),
        node_body(9, (b"\x04" + bytes([10, 0, 0, 1]) + b"\x00\x16") * 9),  # too many
        node_body(2, b"\x04" + bytes([10, 0, 0, 1]) + b"\x00\x16"),  # count too high
        bytes(63),
    ],
)
def test_bad_node_bodies(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_body(Kind.NODE, body)


def test_endpoint_normalises_and_refuses() -> None:
    assert Endpoint("2001:DB8:0::5", 22).host == "2001:db8::5"
    for host in ["[::1]", "fe80::1%eth0", "::ffff:10.0.0.1", "localhost", "1.2.3"]:
        with pytest.raises(ValueError):
            Endpoint(host, 22)
    for port in [0, 65536, -1]:
        with pytest.raises(ValueError):
            Endpoint("::1", port)


def test_encoders_refuse_unencodable_values() -> None:
    with pytest.raises(ValueError):
        encode_body(NameClaimBody("Alice"))
    with pytest.raises(ValueError):
        encode_body(NameClaimBody("alice", 2**64))
    with pytest.raises(ValueError):
        encode_body(NodeBody(bytes(31), bytes(32), (), 0))
    with pytest.raises(ValueError):
        encode_body(NodeBody(bytes(32), bytes(32), (Endpoint("::1", 1),) * 9, 0))
    with pytest.raises(ValueError):
        sign_record(ALICE, Kind.SERVICE, 1, NOW, NOW + DAY, b"\x03ssh")  # body not canonical
    with pytest.raises(ValueError):
        sign_record(
            ALICE, Kind.NODE, -1, NOW, NOW + DAY, encode_body(golden_body(GOLDEN["vectors"][0]))
        )
    big = Record(Kind.SERVICE, ALICE.public, 1, NOW, NOW + 1, bytes(MAX_BODY_SIZE + 1), bytes(64))
    with pytest.raises(ValueError):
        encode_record(big)
    assert not verify_record(big)


def test_flags_are_int_flags() -> None:
    assert Capability.RELAY | Capability.DHT == 3
    assert Mode.DIRECT | Mode.RELAY == 3


# --- acceptance rules ---------------------------------------------------------------


def claim(seq: int, issued: float = NOW, lifetime: int = DAY, who: Identity = ALICE) -> bytes:
    return make_record(who, NameClaimBody("alice"), seq, issued, lifetime)[1]


def rejected(raw: bytes, now: float = NOW, held: int | None = None) -> str:
    with pytest.raises(RecordRejected) as info:
        check_record(raw, now, held)
    return info.value.reason


def test_fresh_record_accepted() -> None:
    record, raw = make_record(ALICE, ServiceBody("ssh", Mode.DIRECT, False), 7, NOW + 0.9, DAY)
    assert (record.issued, record.expires) == (NOW, NOW + DAY)
    assert check_record(raw, NOW, None) == record
    assert check_record(raw, NOW, 6) == record


def test_sequence_rules() -> None:
    assert rejected(claim(5), held=6) == "stale-sequence"  # replayed older record
    assert rejected(claim(5), held=5) == "stale-sequence"  # same record again
    assert check_record(claim(6), NOW, 5).seq == 6


def test_tampered_body_is_a_bad_signature() -> None:
    record = decode_record(claim(1))
    forged = Record(
        record.kind,
        record.signer,
        record.seq,
        record.issued,
        record.expires,
        encode_body(NameClaimBody("alicf")),
        record.signature,
    )
    assert rejected(encode_record(forged)) == "bad-signature"


def test_signature_by_another_key_is_refused() -> None:
    theft = decode_record(claim(1, who=MALLORY))
    relabelled = Record(
        theft.kind,
        ALICE.public,
        theft.seq,
        theft.issued,
        theft.expires,
        theft.body,
        theft.signature,
    )
    assert rejected(encode_record(relabelled)) == "bad-signature"


def test_expected_signer() -> None:
    raw = claim(1, who=MALLORY)
    with pytest.raises(RecordRejected, match="wrong-signer"):
        check_record(raw, NOW, None, expected_signer=ALICE.public)
    assert check_record(raw, NOW, None, expected_signer=MALLORY.public).signer == MALLORY.public


def test_time_window() -> None:
    raw = claim(1, issued=NOW, lifetime=DAY)
    assert rejected(raw, now=NOW + DAY) == "expired"
    assert check_record(raw, NOW + DAY - 0.5, None).seq == 1
    assert rejected(raw, now=NOW - MAX_CLOCK_SKEW - 1) == "not-yet-valid"
    assert check_record(raw, NOW - MAX_CLOCK_SKEW, None).seq == 1


def signed_window(issued: int, expires: int) -> bytes:
    body = encode_body(NameClaimBody("alice"))
    return encode_record(sign_record(ALICE, Kind.NAME_CLAIM, 1, issued, expires, body))


def test_lifetime_rules() -> None:
    assert rejected(signed_window(NOW, NOW + MAX_LIFETIME + 1)) == "lifetime-too-long"
    assert check_record(signed_window(NOW, NOW + MAX_LIFETIME), NOW, None).seq == 1
    # expires <= issued while issued is within the skew allowance
    assert rejected(signed_window(NOW + 200, NOW + 100)) == "bad-lifetime"
    with pytest.raises(ValueError):
        make_record(ALICE, NameClaimBody("alice"), 1, NOW, MAX_LIFETIME + 1)
    with pytest.raises(ValueError):
        make_record(ALICE, NameClaimBody("alice"), 1, NOW, 0)


def test_oversize_refused_before_parsing() -> None:
    assert rejected(b"\xff" * (MAX_RECORD_SIZE + 1)) == "too-large"
    assert rejected(claim(1) + bytes(MAX_RECORD_SIZE)) == "too-large"
    with pytest.raises(DecodeError):
        decode_record(b"\xff" * (MAX_RECORD_SIZE + 1))


def test_time_checks_come_before_sequence_and_signature() -> None:
    record = decode_record(claim(1))
    forged = Record(
        record.kind, record.signer, 1, record.issued, record.expires, record.body, bytes(64)
    )
    raw = encode_record(forged)
    assert rejected(raw, now=NOW + 2 * DAY, held=9) == "expired"
    assert rejected(raw, held=9) == "stale-sequence"
    assert rejected(raw) == "bad-signature"


def test_make_record_for_every_kind() -> None:
    body = NodeBody(
        bytes(32),
        bytes(range(32)),
        (Endpoint("fd76:7836::1", 4242), Endpoint("198.18.0.1", 4242)),
        Capability.RELAY,
    )
    for item in (body, NameClaimBody("bob-2", 42), ServiceBody("web", Mode.RELAY, True)):
        record, raw = make_record(ALICE, item, 1, NOW, 3600)
        assert check_record(raw, NOW, None) == record
        assert record.parsed_body() == item
