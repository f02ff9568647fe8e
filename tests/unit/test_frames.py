"""Link frames (wire/frames.py): golden bytes, round trips, and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vx6.errors import DecodeError
from vx6.wire import frames as fr

# --- golden bytes -------------------------------------------------------------------

GOLDEN_FRAMES: list[tuple[fr.ControlFrame, str]] = [
    (fr.Open(1, "echo", 0), "02 00000001 00 04 6563686f"),
    (fr.Open(0x01020304, "ssh", fr.OPEN_FLAG_PROBE), "02 01020304 01 03 737368"),
    (fr.OpenOk(7), "03 00000007"),
    (fr.OpenFail(3, 1, "no"), "04 00000003 01 02 6e6f"),
    (fr.OpenFail(0xFFFFFFFF, 7, ""), "04 ffffffff 07 00"),
    (fr.Credit(5, 65536), "05 00000005 00010000"),
    (fr.Credit(2, 0xFFFFFFFF), "05 00000002 ffffffff"),
    (fr.Fin(9), "06 00000009"),
    (fr.Reset(2, 6), "07 00000002 06"),
    (fr.Ping(0x0102030405060708), "08 0102030405060708"),
    (fr.Pong(0xFFFFFFFFFFFFFFFF), "09 ffffffffffffffff"),
    (fr.Close(0, ""), "0a 00 00"),
    (fr.Close(1, "bad"), "0a 01 03 626164"),
    (fr.Close(4, "é"), "0a 04 02 c3a9"),
    (fr.Records(()), "0b 00"),
    (fr.Records((b"ab", b"")), "0b 02 0002 6162 0000"),
]


@pytest.mark.parametrize(("frame", "golden"), GOLDEN_FRAMES, ids=lambda x: repr(x)[:40])
def test_golden_control_frames(frame: fr.ControlFrame, golden: str) -> None:
    assert fr.encode_frame(frame) == bytes.fromhex(golden)
    assert fr.decode_control(bytes.fromhex(golden)) == frame


def test_every_control_frame_type_has_a_golden_vector() -> None:
    covered = {fr.encode_frame(frame)[0] for frame, _ in GOLDEN_FRAMES}
    hot_path = {fr.FrameType.DATA, fr.FrameType.CELLS}  # raw payload, no control codec
    assert covered == {t.value for t in fr.FrameType if t not in hot_path}


def test_frame_type_numbers_are_fixed() -> None:
    assert [(t.name, t.value) for t in fr.FrameType] == [
        ("DATA", 1),
        ("OPEN", 2),
        ("OPEN_OK", 3),
        ("OPEN_FAIL", 4),
        ("CREDIT", 5),
        ("FIN", 6),
        ("RESET", 7),
        ("PING", 8),
        ("PONG", 9),
        ("CLOSE", 10),
        ("RECORDS", 11),
        ("CELLS", 12),
    ]


def test_size_constants() -> None:
    assert fr.MAX_FRAME == 65535 - 16
    assert fr.MAX_DATA_PAYLOAD == 65535 - 16 - 5
    assert fr.DATA_HEADER == len(fr.data_header(0)) == 5
    assert fr.HANDSHAKE_PAYLOAD_LEN == 1 + 32 + 64 + 4
    assert (fr.MIN_STREAM_WINDOW, fr.MAX_STREAM_CREDIT) == (4 * 1024, 64 * 1024 * 1024)


def test_golden_data_header_and_length_prefix() -> None:
    assert fr.data_header(1).hex() == "0100000001"
    assert fr.data_header(0x0A0B0C0D).hex() == "010a0b0c0d"
    assert fr.data_header(0xFFFFFFFF).hex() == "01ffffffff"
    assert fr.length_prefix(0).hex() == "0000"
    assert fr.length_prefix(300).hex() == "012c"
    assert fr.length_prefix(65535).hex() == "ffff"


@given(st.integers(0, fr.MAX_STREAM_ID), st.binary(max_size=fr.MAX_DATA_PAYLOAD))
@settings(max_examples=50)
def test_data_frames_round_trip(stream_id: int, data: bytes) -> None:
    sid, payload = fr.decode_data(fr.data_header(stream_id) + data)
    assert (sid, bytes(payload)) == (stream_id, data)


def test_golden_data_frame_decodes() -> None:
    sid, payload = fr.decode_data(bytes.fromhex("010a0b0c0d6869"))
    assert (sid, bytes(payload)) == (0x0A0B0C0D, b"hi")


@pytest.mark.parametrize("raw", ["", "01", "01000000"])
def test_short_data_frame_raises_decode_error(raw: str) -> None:
    with pytest.raises(DecodeError, match="DATA frame too short"):
        fr.decode_data(bytes.fromhex(raw))


@pytest.mark.parametrize(
    ("window", "golden_window"), [(2 * 1024 * 1024, "00200000"), (4096, "00001000")]
)
def test_golden_handshake_payload(window: int, golden_window: str) -> None:
    payload = fr.HandshakePayload(b"\x11" * 32, b"\x22" * 64, window)
    golden = "01" + "11" * 32 + "22" * 64 + golden_window
    assert fr.encode_handshake_payload(payload).hex() == golden
    assert fr.decode_handshake_payload(bytes.fromhex(golden)) == payload


def test_golden_link_prologue_and_patterns() -> None:
    assert fr.LINK_PROLOGUE.hex() == "7678362d6c696e6b2d7631"  # "vx6-link-v1"
    assert (fr.PATTERN_XX, fr.PATTERN_IK, fr.HANDSHAKE_VERSION) == (1, 2, 1)


def test_reason_is_cut_to_max_reason_bytes_on_a_character_boundary() -> None:
    reason = "a" + "é" * 150  # 301 bytes; byte 200 falls inside an "é"
    encoded = fr.encode_frame(fr.Close(1, reason))
    assert encoded[:3].hex() == "0a01c7"  # 199 bytes: the broken character is dropped
    decoded = fr.decode_control(encoded)
    assert isinstance(decoded, fr.Close)
    assert decoded.reason == "a" + "é" * 99
    encoded = fr.encode_frame(fr.OpenFail(1, 2, "x" * 500))
    assert encoded[5:7].hex() == "02c8"  # code 2, 200 bytes


@pytest.mark.parametrize(
    "frame",
    [
        fr.Open(1, "x" * 256, 0),
        fr.Open(1, "é", 0),
        fr.Records(tuple(b"" for _ in range(fr.MAX_RECORDS_PER_FRAME + 1))),
        fr.Records((b"x" * (fr.MAX_RECORD_BYTES + 1),)),
    ],
    ids=["long-service", "non-ascii-service", "too-many-records", "record-too-big"],
)
def test_encoder_refuses_what_the_decoder_would_refuse(frame: fr.ControlFrame) -> None:
    with pytest.raises(ValueError):
        fr.encode_frame(frame)


@pytest.mark.parametrize(
    ("identity", "proof", "window"),
    [
        (b"\x11" * 31, b"\x22" * 64, 4096),
        (b"\x11" * 32, b"\x22" * 63, 4096),
        (b"\x11" * 32, b"\x22" * 64, 4095),
        (b"\x11" * 32, b"\x22" * 64, 64 * 1024 * 1024 + 1),
    ],
    ids=["short-identity", "short-proof", "small-window", "huge-window"],
)
def test_encode_handshake_payload_checks_sizes(identity: bytes, proof: bytes, window: int) -> None:
    with pytest.raises(ValueError):
        fr.encode_handshake_payload(fr.HandshakePayload(identity, proof, window))


# --- hostile input: fixed cases -----------------------------------------------------

BAD_CONTROL = [
    "",  # empty
    "00",  # type 0
    "01 00000001",  # DATA is not a control frame
    "0c",  # unknown type 12
    "ff 00000000",
    "02 00000001 00 00",  # OPEN with an empty service name
    "02 00000001 00 01 ff",  # OPEN with a non-ASCII service name
    "02 00000001 00 05 6563686f",  # OPEN name length beyond the frame
    "04 00000001 01 02 c328",  # OPEN_FAIL reason not UTF-8
    "0a 00 02 ffff",  # CLOSE reason not UTF-8
    "0a 00",  # CLOSE without length
    "0b",  # RECORDS without count
    "0b 3d",  # RECORDS count 61 > 60
    "0b 01 0401" + "00" * 1025,  # record of 1025 bytes
    "0b 01 0003 6162",  # record truncated
    "0b 01 00",  # record length truncated
    "0b 00 00",  # trailing byte after RECORDS
]


@pytest.mark.parametrize("raw", BAD_CONTROL)
def test_malformed_control_frames_raise_decode_error(raw: str) -> None:
    with pytest.raises(DecodeError):
        fr.decode_control(bytes.fromhex(raw))


GOOD_PAYLOAD_HEAD = "01" + "11" * 32 + "22" * 64


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        bytes.fromhex(GOOD_PAYLOAD_HEAD + "001000"),  # window field cut short
        bytes.fromhex(GOOD_PAYLOAD_HEAD + "00001000" + "00"),  # trailing byte
        bytes.fromhex("02" + GOOD_PAYLOAD_HEAD[2:] + "00001000"),  # version 2
        bytes.fromhex(GOOD_PAYLOAD_HEAD + "00000fff"),  # window below the minimum
        bytes.fromhex(GOOD_PAYLOAD_HEAD + "04000001"),  # window above the maximum
        bytes.fromhex(GOOD_PAYLOAD_HEAD + "ffffffff"),
    ],
    ids=["empty", "short", "long", "version-2", "window-small", "window-big", "window-max"],
)
def test_bad_handshake_payload_raises_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        fr.decode_handshake_payload(raw)


# --- properties ---------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
# At most 4 bytes per character, so 50 characters always fit in MAX_REASON bytes.
reasons = st.text(max_size=50)
services = st.text(alphabet=st.characters(max_codepoint=127), min_size=1, max_size=255)
records = st.lists(st.binary(max_size=fr.MAX_RECORD_BYTES), max_size=8).map(tuple)

control_frames: st.SearchStrategy[fr.ControlFrame] = st.one_of(
    st.builds(fr.Open, u32, services, u8),
    st.builds(fr.OpenOk, u32),
    st.builds(fr.OpenFail, u32, u8, reasons),
    st.builds(fr.Credit, u32, u32),
    st.builds(fr.Fin, u32),
    st.builds(fr.Reset, u32, u8),
    st.builds(fr.Ping, u64),
    st.builds(fr.Pong, u64),
    st.builds(fr.Close, u8, reasons),
    st.builds(fr.Records, records),
)


@given(control_frames)
def test_control_frames_round_trip(frame: fr.ControlFrame) -> None:
    encoded = fr.encode_frame(frame)
    assert len(encoded) <= fr.MAX_FRAME
    assert encoded[0] != fr.FrameType.DATA
    assert fr.decode_control(encoded) == frame


@given(control_frames, st.data())
def test_every_truncation_or_extension_raises_only_decode_error(
    frame: fr.ControlFrame, data: st.DataObject
) -> None:
    encoded = fr.encode_frame(frame)
    cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
    with pytest.raises(DecodeError):
        fr.decode_control(encoded[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=8), label="extra")
    with pytest.raises(DecodeError):
        fr.decode_control(encoded + extra)


@given(st.integers(0, 0xFF), st.text(max_size=300))
def test_any_reason_encodes_to_a_decodable_prefix(code: int, reason: str) -> None:
    decoded = fr.decode_control(fr.encode_frame(fr.Close(code, reason)))
    assert isinstance(decoded, fr.Close)
    assert reason.startswith(decoded.reason)
    assert len(decoded.reason.encode()) <= fr.MAX_REASON


def _check_random_control_bytes(raw: bytes) -> None:
    try:
        frame = fr.decode_control(raw)
    except DecodeError:
        return
    # Whatever decodes re-encodes to the same bytes, except that the decoder tolerates
    # reasons longer than the encoder ever writes (it cuts them to MAX_REASON).
    reason = getattr(frame, "reason", "")
    if len(reason.encode()) <= fr.MAX_REASON:
        assert fr.encode_frame(frame) == raw


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_error(raw: bytes) -> None:
    _check_random_control_bytes(raw)


@settings(max_examples=300)
@given(st.integers(0, 13), st.binary(max_size=40))
def test_random_bodies_after_each_type_byte_raise_only_decode_error(kind: int, body: bytes) -> None:
    _check_random_control_bytes(bytes([kind]) + body)


@given(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=64, max_size=64),
    st.integers(fr.MIN_STREAM_WINDOW, fr.MAX_STREAM_CREDIT),
)
def test_handshake_payload_round_trips(identity: bytes, proof: bytes, window: int) -> None:
    payload = fr.HandshakePayload(identity, proof, window)
    encoded = fr.encode_handshake_payload(payload)
    assert len(encoded) == fr.HANDSHAKE_PAYLOAD_LEN
    assert fr.decode_handshake_payload(encoded) == payload


@given(st.binary(max_size=200))
def test_random_handshake_payload_raises_only_decode_error(raw: bytes) -> None:
    try:
        payload = fr.decode_handshake_payload(raw)
    except DecodeError:
        return
    assert fr.encode_handshake_payload(payload) == raw
