"""The sans-IO link core (core/link.py): two `Link`s pump bytes to each other in memory
under a virtual clock. No sockets, no sleeps.

The harness (`Peer`, `Wire`, `Net`) is the test kit's, tests/kit/links.py.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.links import (
    ID_A,
    ID_B,
    ID_C,
    KIB,
    LINK_A,
    LINK_B,
    LINK_C,
    MIB,
    Net,
    Peer,
    Splitter,
    make_net,
    pattern,
)
from vx6.core import events as ev
from vx6.core.link import Link
from vx6.core.link_config import LinkConfig
from vx6.core.streams import StreamState
from vx6.errors import CloseCode, IdentityMismatch, LinkError, StreamError
from vx6.wire import frames as fr


def pending_bytes(link: Link, sid: int) -> int:
    stream = link.streams.get(sid)
    assert stream is not None
    return stream.pending_bytes


# --- handshake ----------------------------------------------------------------------


@pytest.mark.parametrize("ik", [False, True], ids=["XX", "IK"])
def test_handshake_establishes_both_sides_with_the_right_peer(ik: bool) -> None:
    net = make_net(ik=ik)
    assert net.a.log == [ev.LinkEstablished(ID_B.public, LINK_B.public)]
    assert net.b.log == [ev.LinkEstablished(ID_A.public, LINK_A.public)]
    assert (net.a.link.peer_identity, net.a.link.peer_link_key) == (ID_B.public, LINK_B.public)
    assert (net.b.link.peer_identity, net.b.link.peer_link_key) == (ID_A.public, LINK_A.public)
    assert net.a.link._keys is not None and net.b.link._keys is not None
    assert net.a.link._keys.handshake_hash == net.b.link._keys.handshake_hash


def count_messages(raw: bytes) -> int:
    count = 0
    while raw:
        raw = raw[2 + int.from_bytes(raw[:2], "big") :]
        count += 1
    return count


@pytest.mark.parametrize(("ik", "pattern_byte", "flow"), [(False, 1, [1, 1, 1]), (True, 2, [1, 1])])
def test_handshake_message_flow(ik: bool, pattern_byte: int, flow: list[int]) -> None:
    net = make_net(ik=ik, handshake=False)
    net.settle()
    assert net.ab.buffer[2] == pattern_byte
    seen = []
    wire = net.ab
    while wire.buffer:
        seen.append(count_messages(bytes(wire.buffer)))
        wire.deliver(len(wire.buffer), 0.0)
        net.settle()
        wire = net.ba if wire is net.ab else net.ab
    assert seen == flow
    assert net.a.link.established and net.b.link.established


@pytest.mark.parametrize("ik", [False, True], ids=["XX", "IK"])
def test_streams_work_after_either_handshake(ik: bool) -> None:
    net = make_net(ik=ik)
    sid = net.a.link.open_stream("echo")
    net.a.link.send(sid, b"ping")
    net.a.link.finish(sid)
    net.pump()
    assert net.b.received[sid] == b"ping"
    net.b.link.send(sid, b"pong")
    net.b.link.finish(sid)
    net.pump()
    assert net.a.received[sid] == b"pong"
    assert ev.StreamClosed(sid) in net.a.log and ev.StreamClosed(sid) in net.b.log


@pytest.mark.parametrize("ik", [False, True], ids=["XX", "IK"])
def test_initiator_refuses_a_peer_that_is_not_the_expected_identity(ik: bool) -> None:
    net = make_net(ik=ik, expected_by_a=ID_C.public, handshake=False)
    net.pump()
    assert net.a.closed_with is not None
    assert net.a.closed_with.code == CloseCode.IDENTITY_MISMATCH
    assert not net.a.link.established
    assert net.a.of(ev.LinkEstablished) == []


@pytest.mark.parametrize("ik", [False, True], ids=["XX", "IK"])
def test_an_identity_mismatch_names_the_key_the_peer_proved(ik: bool) -> None:
    # Direct mode says whom it reached instead ("[::1]:4243 answered as ...").
    net = make_net(ik=ik, expected_by_a=ID_C.public, handshake=False)
    net.pump()
    failure = net.a.link.failure
    assert isinstance(failure, IdentityMismatch)
    assert failure.code == CloseCode.IDENTITY_MISMATCH and failure.presented == ID_B.public


def test_responder_refuses_an_unexpected_initiator() -> None:
    net = make_net(expected_by_b=ID_C.public, handshake=False)
    net.pump()
    assert net.b.closed_with == ev.LinkClosed(
        CloseCode.IDENTITY_MISMATCH, "peer is not the node we dialled", by_peer=False
    )


def test_expected_identity_that_matches_is_accepted() -> None:
    net = make_net(expected_by_a=ID_B.public, expected_by_b=ID_A.public)
    assert net.a.closed_with is None and net.b.closed_with is None


def test_ik_towards_the_wrong_link_key_fails_at_the_responder() -> None:
    net = make_net(remote_key=LINK_C.public, handshake=False)
    net.pump()
    assert net.b.closed_with is not None
    assert net.b.closed_with.code == CloseCode.HANDSHAKE_FAILED
    assert net.a.closed_with is None  # nothing came back: the initiator times out later
    net.tick(10.0)
    assert net.a.closed_with is not None
    assert net.a.closed_with.code == CloseCode.HANDSHAKE_FAILED


E_ZERO = bytes(32)  # a low-order X25519 point: the DH result is all zeros
GARBAGE_FIRST_MESSAGES = {
    "empty": b"",
    "bad-pattern-byte": b"\x00" + bytes(range(32)),
    "pattern-byte-only": b"\x01",
    "xx-short-ephemeral": b"\x01" + bytes(31),
    "xx-with-payload": b"\x01" + bytes(range(32)) + b"hello",
    "xx-low-order-ephemeral": b"\x01" + E_ZERO,
    "ik-truncated": b"\x02" + bytes(range(40)),
    "ik-random": b"\x02" + bytes(range(200)),
}


@pytest.mark.parametrize("message", GARBAGE_FIRST_MESSAGES.values(), ids=GARBAGE_FIRST_MESSAGES)
def test_garbage_first_message_closes_with_handshake_failed(message: bytes) -> None:
    net = make_net(handshake=False)
    net.b.link.receive(fr.length_prefix(len(message)) + message + b"trailing", 1.0)
    net.settle()
    assert net.b.closed_with is not None
    assert net.b.closed_with.code == CloseCode.HANDSHAKE_FAILED
    assert not net.b.closed_with.by_peer
    assert net.b.link.data_to_send() == [] and not net.ba.buffer  # no keys, no CLOSE frame
    assert net.b.link.next_deadline() is None
    net.b.link.receive(b"\x00\x01x", 2.0)  # ignored from now on
    assert net.b.link.events() == []


def test_damaged_responder_message_closes_the_initiator() -> None:
    net = make_net(handshake=False)
    net.settle()
    net.ab.deliver(len(net.ab.buffer), 0.0)
    net.settle()
    net.ba.buffer[-1] ^= 1
    net.ba.deliver(len(net.ba.buffer), 0.0)
    net.settle()
    assert net.a.closed_with is not None
    assert net.a.closed_with.code == CloseCode.HANDSHAKE_FAILED


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_random_handshake_bytes_never_raise(raw: bytes, to_initiator: bool) -> None:
    net = make_net(handshake=False)
    net.settle()
    target = net.a if to_initiator else net.b
    target.link.receive(raw, 0.0)
    target.collect()
    closed = target.closed_with
    assert closed is None or closed.code == CloseCode.HANDSHAKE_FAILED
    assert not target.link.established


def test_handshake_timeout_on_both_sides() -> None:
    config = LinkConfig(handshake_timeout=5.0)
    net = make_net(handshake=False, config_a=config, config_b=config, now=100.0)
    assert net.a.link.next_deadline() == net.b.link.next_deadline() == 105.0
    net.tick(104.9)
    assert net.a.closed_with is None and net.b.closed_with is None
    net.tick(105.0)
    for peer in (net.a, net.b):
        assert peer.closed_with == ev.LinkClosed(
            CloseCode.HANDSHAKE_FAILED, "handshake timed out", by_peer=False
        )
        assert peer.link.next_deadline() is None


# --- byte splits --------------------------------------------------------------------


def run_scenario(split: Splitter | None) -> tuple[list[ev.Event], list[ev.Event]]:
    """A small but complete conversation; returns both event logs with data as bytes."""
    config = LinkConfig(window=8 * KIB)
    net = make_net(handshake=False, config_a=config, config_b=config)
    net.pump(split)
    s1 = net.a.link.open_stream("echo")
    net.a.link.send(s1, pattern(1, 20 * KIB))  # beyond the window: needs credit
    s3 = net.a.link.open_stream("probe", fr.OPEN_FLAG_PROBE)
    net.a.link.finish(s3)
    net.pump(split)
    s2 = net.b.link.open_stream("back")
    net.b.link.send(s2, pattern(2, 3 * KIB))
    net.b.link.send(s1, b"reply")
    net.b.link.finish(s1)
    net.b.link.finish(s3)
    net.a.link.finish(s1)
    net.a.link.ping(0.0)
    net.b.link.send_records([b"r1", b"r2"])
    net.pump(split)
    net.a.link.reset(s2, StreamError.TARGET_REFUSED)
    net.a.link.close(CloseCode.SHUTDOWN, "bye")
    net.pump(split)

    def normal(log: list[ev.Event]) -> list[ev.Event]:
        return [
            ev.StreamDataReceived(e.stream_id, bytes(e.data))
            if isinstance(e, ev.StreamDataReceived)
            else e
            for e in log
        ]

    return normal(net.a.log), normal(net.b.log)


BASELINE = run_scenario(None)


def test_scenario_baseline_is_complete() -> None:
    log_a, log_b = BASELINE
    assert ev.LinkClosed(CloseCode.SHUTDOWN, "bye", by_peer=True) in log_b
    assert ev.StreamReset(2, StreamError.TARGET_REFUSED) in log_b
    assert ev.RecordsReceived((b"r1", b"r2")) in log_a
    assert ev.StreamClosed(1) in log_a and ev.StreamClosed(3) in log_b
    received = b"".join(e.data for e in log_b if isinstance(e, ev.StreamDataReceived))
    assert pattern(1, 20 * KIB) in received
    assert any(isinstance(e, ev.PongReceived) for e in log_a)


def test_bytes_fed_one_at_a_time_give_the_same_events() -> None:
    assert run_scenario(lambda n: [1] * n) == BASELINE


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 3 * fr.MAX_NOISE_MESSAGE), min_size=1, max_size=12))
def test_bytes_fed_in_random_splits_give_the_same_events(sizes: list[int]) -> None:
    """Each wire's bytes go out in pieces whose sizes cycle through `sizes`."""
    turn = 0

    def split(n: int) -> list[int]:
        nonlocal turn
        pieces = []
        while n > 0:
            piece = min(n, sizes[turn % len(sizes)])
            turn += 1
            pieces.append(piece)
            n -= piece
        return pieces

    assert run_scenario(split) == BASELINE


# --- data transfer ------------------------------------------------------------------


def test_multi_mib_transfer_on_many_interleaved_streams() -> None:
    """Twelve streams both ways, about 5 MiB, written in random chunks while honouring
    `send`'s back-pressure, delivered in random splits; everything arrives intact."""
    rnd = random.Random(7)
    config = LinkConfig(window=128 * KIB)
    net = make_net(config_a=config, config_b=config)
    payloads: dict[tuple[str, int], bytes] = {}
    offsets: dict[tuple[str, int], int] = {}
    for i in range(12):
        peer = net.a if i % 3 else net.b
        sid = peer.link.open_stream(f"svc{i}")
        payloads[(peer.name, sid)] = pattern(i, rnd.randint(64 * KIB, 1 * MIB))
        offsets[(peer.name, sid)] = 0
    peers = {"a": net.a, "b": net.b}
    blocked: set[tuple[str, int]] = set()
    scanned = {"a": 0, "b": 0}

    def split(n: int) -> list[int]:
        cut = rnd.randint(0, n)
        return [cut, n - cut]

    while offsets:
        for key in list(offsets):
            if key in blocked:
                continue
            name, sid = key
            data = payloads[key]
            start = offsets[key]
            chunk = data[start : start + rnd.randint(1, 96 * KIB)]
            offsets[key] = start + len(chunk)
            if not peers[name].link.send(sid, chunk):
                blocked.add(key)
            if offsets[key] == len(data):
                peers[name].link.finish(sid)
                del offsets[key]
                blocked.discard(key)
        net.settle()
        for wire in (net.ab, net.ba):
            for size in split(len(wire.buffer)):
                wire.deliver(size, 0.0)
                net.settle()
        for name, peer in peers.items():
            for event in peer.log[scanned[name] :]:
                if isinstance(event, ev.StreamWritable):
                    blocked.discard((name, event.stream_id))
            scanned[name] = len(peer.log)
        for (name, sid), data in payloads.items():
            stream = peers[name].link.streams.get(sid)
            if stream is not None:
                # back-pressure honoured: at most one chunk waits in the link
                assert stream.pending_bytes <= 96 * KIB
            other = net.b if name == "a" else net.a
            assert data.startswith(other.received[sid])
    for peer in peers.values():
        for event in peer.of(ev.StreamEnded):
            peer.link.finish(event.stream_id)
    net.pump()
    for (name, sid), data in payloads.items():
        other = net.b if name == "a" else net.a
        assert other.received[sid] == data
        assert ev.StreamClosed(sid) in net.a.log and ev.StreamClosed(sid) in net.b.log
    assert len(net.a.link.streams) == len(net.b.link.streams) == 0
    assert net.a.closed_with is None and net.b.closed_with is None


def test_data_beyond_max_frame_is_split_into_frames() -> None:
    net = make_net()
    net.tap()
    sid = net.a.link.open_stream("bulk")
    data = pattern(3, 3 * fr.MAX_DATA_PAYLOAD + 17)
    assert net.a.link.send(sid, memoryview(data))
    net.settle()
    messages = []
    raw = bytes(net.ab.buffer)
    while raw:
        size = int.from_bytes(raw[:2], "big")
        messages.append(size)
        raw = raw[2 + size :]
    assert messages[1:] == [65535, 65535, 65535, 17 + 5 + 16]  # after the OPEN frame
    net.pump()
    assert net.b.received[sid] == data


# --- half-close, reset, open failure ------------------------------------------------


def open_accepted(net: Net, service: str = "svc", opener: Peer | None = None) -> int:
    sid = (opener or net.a).link.open_stream(service)
    net.pump()
    return sid


def test_half_close_opener_first() -> None:
    net = make_net()
    sid = open_accepted(net)
    net.a.link.send(sid, b"request")
    net.a.link.finish(sid)
    net.pump()
    assert net.a.link.streams.get(sid).state is StreamState.LOCAL_DONE  # type: ignore[union-attr]
    assert net.b.link.streams.get(sid).state is StreamState.REMOTE_DONE  # type: ignore[union-attr]
    assert net.b.of(ev.StreamEnded) == [ev.StreamEnded(sid)]
    net.b.link.send(sid, b"response after the request ended")
    net.b.link.finish(sid)
    net.pump()
    assert net.a.received[sid] == b"response after the request ended"
    assert net.a.log[-2:] == [ev.StreamEnded(sid), ev.StreamClosed(sid)]
    assert net.b.log[-1] == ev.StreamClosed(sid)
    assert net.a.link.streams.get(sid) is None and net.b.link.streams.get(sid) is None


def test_half_close_acceptor_first() -> None:
    net = make_net()
    sid = open_accepted(net)
    net.b.link.send(sid, b"banner")
    net.b.link.finish(sid)
    net.pump()
    assert net.a.link.streams.get(sid).state is StreamState.REMOTE_DONE  # type: ignore[union-attr]
    net.a.link.send(sid, b"still talking")
    net.a.link.finish(sid)
    net.pump()
    assert net.b.received[sid] == b"still talking"
    assert ev.StreamClosed(sid) in net.a.log and ev.StreamClosed(sid) in net.b.log


def test_fin_before_open_ok() -> None:
    """0-RTT: the opener writes and half-closes before the acceptor has even seen OPEN."""
    net = make_net()
    net.b.auto_accept = False
    sid = net.a.link.open_stream("svc")
    net.a.link.send(sid, b"whole request")
    net.a.link.finish(sid)
    assert net.a.link.streams.get(sid).state is StreamState.OPENING  # type: ignore[union-attr]
    net.pump()
    assert [type(e) for e in net.b.log[1:]] == [
        ev.StreamOpenRequested,
        ev.StreamDataReceived,
        ev.StreamEnded,
    ]
    net.b.link.accept_stream(sid)
    assert net.b.link.streams.get(sid).state is StreamState.REMOTE_DONE  # type: ignore[union-attr]
    net.b.link.send(sid, b"answer")
    net.b.link.finish(sid)
    net.pump()
    assert net.b.log[-1] == ev.StreamClosed(sid)
    assert net.a.log[-4:] == [
        ev.StreamOpened(sid),
        net.a.log[-3],
        ev.StreamEnded(sid),
        ev.StreamClosed(sid),
    ]
    assert net.a.received[sid] == b"answer"


def test_simultaneous_finish() -> None:
    net = make_net()
    sid = open_accepted(net)
    net.a.link.finish(sid)
    net.b.link.finish(sid)
    net.pump()
    for peer in (net.a, net.b):
        assert peer.log[-2:] == [ev.StreamEnded(sid), ev.StreamClosed(sid)]
        assert len(peer.link.streams) == 0


def test_finish_waits_for_queued_data() -> None:
    net = make_net(config_a=LinkConfig(window=16 * KIB), config_b=LinkConfig(window=16 * KIB))
    net.b.auto_consume = False
    sid = open_accepted(net)
    data = pattern(5, 50 * KIB)
    assert not net.a.link.send(sid, data)
    net.a.link.finish(sid)
    net.pump()
    assert net.b.of(ev.StreamEnded) == []  # FIN waits behind the queued bytes
    assert len(net.b.received[sid]) == 16 * KIB
    net.b.auto_consume = True
    net.b.link.consumed(sid, 16 * KIB)
    net.pump()
    assert net.b.received[sid] == data
    assert net.b.of(ev.StreamEnded) == [ev.StreamEnded(sid)]


@pytest.mark.parametrize("by_opener", [True, False], ids=["opener", "acceptor"])
def test_reset_drops_the_stream_and_late_data_is_ignored(by_opener: bool) -> None:
    net = make_net()
    sid = open_accepted(net)
    resetter, other = (net.a, net.b) if by_opener else (net.b, net.a)
    other.link.send(sid, b"in flight when the reset goes out")
    other.link.finish(sid)
    net.settle()
    resetter.link.reset(sid, StreamError.TARGET_REFUSED)
    assert resetter.link.streams.get(sid) is None
    net.pump()
    assert other.of(ev.StreamReset) == [ev.StreamReset(sid, StreamError.TARGET_REFUSED)]
    assert other.link.streams.get(sid) is None
    assert resetter.received[sid] == b"" and resetter.of(ev.StreamEnded) == []
    assert not other.link.send(sid, b"after reset")
    assert net.a.closed_with is None and net.b.closed_with is None
    assert open_accepted(net) == sid + 2  # the link carries on


def test_open_fail_reaches_the_opener_and_crossing_data_is_ignored() -> None:
    net = make_net()
    net.b.auto_accept = False
    sid = net.a.link.open_stream("nope")
    net.pump()
    net.b.link.reject_stream(sid, StreamError.UNKNOWN_SERVICE, "no such service")
    net.a.link.send(sid, b"0-RTT bytes crossing the OPEN_FAIL")
    net.a.link.finish(sid)
    net.pump()
    assert net.a.of(ev.StreamOpenFailed) == [
        ev.StreamOpenFailed(sid, StreamError.UNKNOWN_SERVICE, "no such service")
    ]
    assert len(net.a.link.streams) == len(net.b.link.streams) == 0
    assert net.a.closed_with is None and net.b.closed_with is None


# --- flow control -------------------------------------------------------------------


def test_sender_never_has_more_than_a_window_outstanding() -> None:
    """Counted on the wire: DATA bytes written minus CREDIT that has arrived back."""
    window = 32 * KIB
    config = LinkConfig(window=window)
    net = make_net(config_a=config, config_b=config)
    net.tap()
    net.b.auto_consume = False
    rnd = random.Random(3)
    sids = [net.a.link.open_stream(f"s{i}") for i in range(3)]
    for sid in sids:
        net.a.link.send(sid, pattern(sid, 300 * KIB))
    consumed: Counter[int] = Counter()
    for _ in range(400):
        net.settle()
        for sid in sids:
            outstanding = net.ab.data_written[sid] - net.ba.credit_arrived[sid]
            assert 0 <= outstanding <= window
            stream = net.a.link.streams.get(sid)
            assert stream is not None
            assert outstanding == window - stream.send_credit
            assert len(net.b.received[sid]) - consumed[sid] <= window
        wire = rnd.choice((net.ab, net.ba))
        wire.deliver(rnd.randint(0, len(wire.buffer)), 0.0)
        sid = rnd.choice(sids)
        amount = rnd.randint(0, len(net.b.received[sid]) - consumed[sid])
        net.b.link.consumed(sid, amount)
        consumed[sid] += amount
    assert net.a.closed_with is None and net.b.closed_with is None
    assert all(net.ab.data_written[sid] > 2 * window for sid in sids)


def test_a_receiver_that_never_consumes_stalls_only_its_own_stream() -> None:
    window = 64 * KIB
    net = make_net(config_a=LinkConfig(window=window), config_b=LinkConfig(window=window))
    slow, fast = net.a.link.open_stream("slow"), net.a.link.open_stream("fast")
    net.b.auto_consume = False
    data = pattern(9, 1 * MIB)
    net.a.link.send(slow, data)
    net.a.link.send(fast, data)
    consumed = 0
    for _ in range(1000):
        net.pump()
        backlog = len(net.b.received[fast]) - consumed
        if not backlog:
            break
        net.b.link.consumed(fast, backlog)
        consumed += backlog
    assert net.b.received[fast] == data
    assert net.b.received[slow] == data[:window]
    assert pending_bytes(net.a.link, slow) == len(data) - window
    assert pending_bytes(net.a.link, fast) == 0
    assert net.a.of(ev.StreamWritable) == [ev.StreamWritable(fast)]


def test_stream_writable_fires_once_when_credit_returns() -> None:
    window = 64 * KIB
    net = make_net(config_a=LinkConfig(window=window), config_b=LinkConfig(window=window))
    net.b.auto_consume = False
    sid = open_accepted(net)
    assert net.a.link.send(sid, bytes(window // 2))  # within credit: keep going
    assert not net.a.link.send(sid, bytes(window // 2 + 1000))  # 1000 bytes wait
    assert not net.a.link.send(sid, b"more")  # queued behind them
    net.pump()
    assert net.a.of(ev.StreamWritable) == []
    assert len(net.b.received[sid]) == window
    net.b.link.consumed(sid, window // 8)  # below the batching threshold: no credit yet
    net.pump()
    assert net.a.of(ev.StreamWritable) == []
    net.b.link.consumed(sid, window - window // 8)
    net.pump()
    assert net.a.of(ev.StreamWritable) == [ev.StreamWritable(sid)]
    assert len(net.b.received[sid]) == window + 1004
    net.b.link.consumed(sid, 1004)
    net.pump()
    assert net.a.of(ev.StreamWritable) == [ev.StreamWritable(sid)]  # not blocked: no repeat


def test_exactly_the_window_is_fine_but_one_byte_more_closes_with_flow_control() -> None:
    window = 4 * KIB
    net = make_net(config_a=LinkConfig(window=window), config_b=LinkConfig(window=window))
    net.b.auto_consume = False
    sid = open_accepted(net)
    net.a.link.send(sid, bytes(window))
    net.pump()
    assert net.b.closed_with is None
    net.ab.inject(fr.data_header(sid) + b"x")  # no credit for this byte
    net.pump()
    assert net.b.closed_with is not None and net.b.closed_with.code == CloseCode.FLOW_CONTROL
    assert net.a.closed_with == ev.LinkClosed(
        CloseCode.FLOW_CONTROL, net.b.closed_with.reason, by_peer=True
    )


def test_credit_far_beyond_any_window_closes_with_flow_control() -> None:
    net = make_net()
    sid = open_accepted(net)
    net.ba.inject(fr.encode_frame(fr.Credit(sid, 0xFFFFFFFF)))
    net.pump()
    assert net.a.closed_with is not None and net.a.closed_with.code == CloseCode.FLOW_CONTROL


# --- hostile peer -------------------------------------------------------------------


def test_flipped_ciphertext_byte_closes_with_decrypt_failed() -> None:
    net = make_net()
    sid = open_accepted(net)
    net.a.link.send(sid, b"precious")
    net.settle()
    net.ab.buffer[5] ^= 0x40
    net.pump()
    assert net.b.closed_with is not None and net.b.closed_with.code == CloseCode.DECRYPT_FAILED
    assert net.b.received[sid] == b""
    assert net.a.closed_with is not None and net.a.closed_with.by_peer


def test_replayed_message_closes_with_decrypt_failed() -> None:
    net = make_net()
    sid = open_accepted(net)
    net.a.link.send(sid, b"once")
    net.settle()
    replay = bytes(net.ab.buffer)
    net.pump()
    net.b.link.receive(replay, 0.0)
    net.b.collect()
    assert net.b.closed_with is not None and net.b.closed_with.code == CloseCode.DECRYPT_FAILED
    assert net.b.received[sid] == b"once"


MALFORMED = {
    "empty": b"",
    "unknown-type": b"\x0c",
    "type-zero": b"\x00\x00\x00\x00\x01",
    "short-data": b"\x01\x00\x00",
    "short-open-ok": b"\x03\x00\x00",
    "long-fin": b"\x06\x00\x00\x00\x01\x00",
    "open-empty-name": b"\x02\x00\x00\x00\x03\x00\x00",
    "close-bad-utf8": b"\x0a\x00\x01\xff",
}


@pytest.mark.parametrize("plaintext", MALFORMED.values(), ids=MALFORMED)
def test_malformed_frame_closes_with_protocol_error(plaintext: bytes) -> None:
    net = make_net()
    open_accepted(net)
    net.ab.inject(plaintext)
    net.pump()
    closed = net.b.closed_with
    assert closed is not None and closed.code == CloseCode.PROTOCOL_ERROR and not closed.by_peer
    assert net.a.closed_with == ev.LinkClosed(CloseCode.PROTOCOL_ERROR, closed.reason, True)


UNKNOWN_STREAM_FRAMES = {
    "data-peer-id": fr.data_header(7) + b"x",
    "data-own-id": fr.data_header(2) + b"x",
    "open-ok": fr.encode_frame(fr.OpenOk(4)),
    "open-fail": fr.encode_frame(fr.OpenFail(9, 1, "")),
    "credit": fr.encode_frame(fr.Credit(9, 10)),
    "fin": fr.encode_frame(fr.Fin(9)),
    "reset": fr.encode_frame(fr.Reset(9, 1)),
}


@pytest.mark.parametrize("plaintext", UNKNOWN_STREAM_FRAMES.values(), ids=UNKNOWN_STREAM_FRAMES)
def test_frame_for_a_never_opened_stream_closes_with_protocol_error(plaintext: bytes) -> None:
    net = make_net()
    open_accepted(net)  # stream 1 exists; 2, 4, 7 and 9 never did
    net.ab.inject(plaintext)
    net.pump()
    assert net.b.closed_with is not None
    assert net.b.closed_with.code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "frame",
    [fr.data_header(1) + b"x", fr.encode_frame(fr.Fin(1)), fr.encode_frame(fr.Credit(1, 9))],
    ids=["data", "fin", "credit"],
)
def test_late_frames_for_a_just_reset_stream_are_ignored(frame: bytes) -> None:
    net = make_net()
    sid = open_accepted(net)
    net.b.link.reset(sid)
    net.ab.inject(frame)
    net.pump()
    assert net.a.closed_with is None and net.b.closed_with is None
    assert net.b.received[sid] == b""


STATE_VIOLATIONS = {
    # b's view of stream 1 (a's stream, accepted and open) and stream 2 (b's stream)
    "open-ok-for-peer-own-stream": [fr.encode_frame(fr.OpenOk(1))],
    "open-fail-for-peer-own-stream": [fr.encode_frame(fr.OpenFail(1, 1, "x"))],
    "second-open-ok": [fr.encode_frame(fr.OpenOk(2)), fr.encode_frame(fr.OpenOk(2))],
    "fin-twice": [fr.encode_frame(fr.Fin(1)), fr.encode_frame(fr.Fin(1))],
    "data-after-fin": [fr.encode_frame(fr.Fin(1)), fr.data_header(1) + b"x"],
}


@pytest.mark.parametrize("frames", STATE_VIOLATIONS.values(), ids=STATE_VIOLATIONS)
def test_frames_that_break_the_stream_state_machine_close_with_protocol_error(
    frames: list[bytes],
) -> None:
    net = make_net()
    net.a.auto_accept = False
    open_accepted(net)
    net.b.link.open_stream("b-side")
    net.pump()
    for frame in frames:
        net.ab.inject(frame)
    net.pump()
    assert net.b.closed_with is not None
    assert net.b.closed_with.code == CloseCode.PROTOCOL_ERROR


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(
                lambda k, body: bytes([k]) + body, st.integers(0, 13), st.binary(max_size=12)
            ),
            st.builds(
                lambda sid, body: fr.data_header(sid) + body,
                st.integers(0, 6),
                st.binary(max_size=40),
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_hostile_authenticated_frames_never_raise(frames: list[bytes]) -> None:
    net = make_net()
    open_accepted(net)
    for frame in frames:
        net.ab.inject(frame)
    net.pump()
    for peer in (net.a, net.b):
        closed = peer.closed_with
        assert (
            closed is None
            or closed.by_peer
            or closed.code
            in (
                CloseCode.PROTOCOL_ERROR,
                CloseCode.FLOW_CONTROL,
            )
        )


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_random_bytes_after_the_handshake_never_raise(raw: bytes) -> None:
    net = make_net()
    net.b.link.receive(raw, 0.0)
    net.b.collect()
    closed = net.b.closed_with
    assert closed is None or closed.code == CloseCode.DECRYPT_FAILED


# --- stream ids and limits ----------------------------------------------------------


def test_initiator_uses_odd_ids_and_responder_even_ids() -> None:
    net = make_net()
    a_ids = [net.a.link.open_stream("s") for _ in range(3)]
    b_ids = [net.b.link.open_stream("s") for _ in range(3)]
    net.pump()
    assert (a_ids, b_ids) == ([1, 3, 5], [2, 4, 6])
    assert sorted(e.stream_id for e in net.b.of(ev.StreamOpenRequested)) == a_ids
    assert sorted(e.stream_id for e in net.a.of(ev.StreamOpenRequested)) == b_ids


@pytest.mark.parametrize(
    "ids",
    [[1, 1], [5, 3], [2], [0], [3, 3]],
    ids=["reused", "decreasing", "wrong-parity", "zero", "reused-after-close"],
)
def test_reused_decreasing_or_wrong_parity_peer_ids_are_refused(ids: list[int]) -> None:
    net = make_net()
    net.b.auto_accept = False
    if ids == [3, 3]:  # open, reject, then reuse the id of the closed stream
        net.ab.inject(fr.encode_frame(fr.Open(3, "s", 0)))
        net.pump()
        net.b.link.reject_stream(3, StreamError.NOT_ALLOWED, "")
        ids = [3]
    for sid in ids:
        net.ab.inject(fr.encode_frame(fr.Open(sid, "s", 0)))
    net.pump()
    assert net.b.closed_with is not None
    assert net.b.closed_with.code == CloseCode.PROTOCOL_ERROR


def test_max_streams_refuses_the_peer_open_beyond_it() -> None:
    net = make_net(config_b=LinkConfig(max_streams=2))
    net.b.auto_accept = False
    sids = [net.a.link.open_stream("s") for _ in range(3)]
    net.a.link.send(sids[2], b"0-RTT data for the refused stream")
    net.pump()
    assert [e.stream_id for e in net.b.of(ev.StreamOpenRequested)] == sids[:2]
    assert net.a.of(ev.StreamOpenFailed) == [
        ev.StreamOpenFailed(sids[2], StreamError.RESOURCE_LIMIT, "too many")
    ]
    assert len(net.b.link.streams) == 2 and len(net.a.link.streams) == 2
    net.b.link.reject_stream(sids[0], StreamError.NOT_ALLOWED, "")
    net.pump()
    later = net.a.link.open_stream("s")  # room again
    net.pump()
    assert net.b.of(ev.StreamOpenRequested)[-1].stream_id == later
    assert net.a.closed_with is None and net.b.closed_with is None


def test_max_streams_refuses_a_local_open_beyond_it() -> None:
    net = make_net(config_a=LinkConfig(max_streams=2))
    net.a.link.open_stream("s")
    net.a.link.open_stream("s")
    with pytest.raises(LinkError) as info:
        net.a.link.open_stream("s")
    assert info.value.code == CloseCode.RESOURCE_LIMIT


# --- keepalive, idle timeout, close -------------------------------------------------


def test_keepalive_ping_after_silence_and_pong_gives_rtt() -> None:
    config = LinkConfig(keepalive=15.0, idle_timeout=45.0)
    net = make_net(config_a=config, config_b=config)
    net.tap()
    assert net.a.link.next_deadline() == 15.0
    net.tick(14.9)
    assert not net.ab.buffer
    net.tick(15.0)
    assert fr.FrameType.PING in [p[0] for _, p in net.ab._in_flight]
    assert net.a.link.next_deadline() == 45.0  # now waiting for anything at all
    net.now = 15.25
    net.pump()
    pongs = net.a.of(ev.PongReceived)
    assert len(pongs) == 1 and pongs[0].rtt == pytest.approx(0.25)
    assert net.a.link.next_deadline() == 15.25 + 15.0
    assert net.a.closed_with is None and net.b.closed_with is None


def test_idle_timeout_closes_a_silent_link() -> None:
    config = LinkConfig(keepalive=15.0, idle_timeout=45.0)
    net = make_net(config_a=config, config_b=config)
    net.a.link.handle_timer(15.0)  # a pings; nobody delivers anything
    net.a.link.handle_timer(44.9)
    net.settle()
    assert net.a.closed_with is None
    net.a.link.handle_timer(45.0)
    net.settle()
    assert net.a.closed_with == ev.LinkClosed(
        CloseCode.IDLE_TIMEOUT, "peer silent too long", by_peer=False
    )
    assert net.a.link.next_deadline() is None
    net.pump()  # b finally hears a's PING and CLOSE
    assert net.b.closed_with is not None and net.b.closed_with.code == CloseCode.IDLE_TIMEOUT
    assert net.b.closed_with.by_peer


def test_only_the_latest_ping_token_reports_a_pong() -> None:
    net = make_net()
    net.a.link.ping(1.0)
    net.b.link.ping(1.0)
    net.ab.take()
    net.ba.inject(fr.encode_frame(fr.Pong(999)))
    net.now = 2.0
    net.pump()
    assert [p.token for p in net.a.of(ev.PongReceived)] == [1]
    assert [p.token for p in net.b.of(ev.PongReceived)] == [1]


def test_close_reaches_the_peer_and_nothing_is_accepted_afterwards() -> None:
    net = make_net()
    sid = open_accepted(net)
    net.a.link.close(CloseCode.SHUTDOWN, "stopping")
    net.a.link.close()  # idempotent
    net.pump()
    assert net.a.closed_with == ev.LinkClosed(CloseCode.SHUTDOWN, "stopping", by_peer=False)
    assert net.b.closed_with == ev.LinkClosed(CloseCode.SHUTDOWN, "stopping", by_peer=True)
    for peer in (net.a, net.b):
        assert not peer.link.established
        assert not peer.link.send(sid, b"x")
        with pytest.raises(LinkError):
            peer.link.open_stream("s")
        peer.link.finish(sid)
        peer.link.consumed(sid, 10)
        peer.link.reset(sid)
        peer.link.handle_timer(1000.0)
        peer.link.receive(b"\x00\x20" + bytes(32), 1000.0)
        assert peer.link.data_to_send() == [] and peer.link.events() == []


def test_records_are_batched_per_frame() -> None:
    net = make_net()
    records = [bytes([i]) * (i % 7) for i in range(130)]
    net.a.link.send_records(records)
    net.pump()
    batches = [e.records for e in net.b.of(ev.RecordsReceived)]
    assert [len(b) for b in batches] == [60, 60, 10]
    assert [r for batch in batches for r in batch] == records


# --- regressions: misuse by the local application, windows that differ -------------


def open_accepted_unseen(net: Net) -> int:
    """a opens, b accepts, but a has not read the OPEN_OK yet (a is still OPENING)."""
    sid = net.a.link.open_stream("s")
    net.settle()
    net.ab.deliver(len(net.ab.buffer), 0.0)
    net.settle()
    assert net.b.link.streams.get(sid).state is StreamState.OPEN  # type: ignore[union-attr]
    assert net.a.link.streams.get(sid).state is StreamState.OPENING  # type: ignore[union-attr]
    return sid


def test_finish_twice_before_open_ok_sends_one_fin() -> None:
    net = make_net()
    net.b.auto_accept = False
    sid = net.a.link.open_stream("s")
    net.a.link.finish(sid)
    net.a.link.finish(sid)
    net.pump()
    assert net.b.of(ev.StreamEnded) == [ev.StreamEnded(sid)]


@pytest.mark.parametrize("read_open_ok", [False, True], ids=["opening", "open"])
def test_finish_twice_keeps_the_link(read_open_ok: bool) -> None:
    net = make_net()
    sid = open_accepted_unseen(net)
    if read_open_ok:
        net.pump()
    net.a.link.finish(sid)
    net.a.link.finish(sid)
    net.pump()
    assert net.b.of(ev.StreamEnded) == [ev.StreamEnded(sid)]
    assert net.a.closed_with is None and net.b.closed_with is None


@pytest.mark.parametrize(
    "pending",
    [False, True],
    ids=["idle", "pending"],
)
def test_send_after_finish_is_refused_and_sends_nothing(pending: bool) -> None:
    window = 4 * KIB
    net = make_net(config_a=LinkConfig(window=window), config_b=LinkConfig(window=window))
    sid = open_accepted_unseen(net)
    if pending:
        net.a.link.send(sid, bytes(window + 10))  # FIN will wait behind 10 bytes
    net.a.link.finish(sid)
    assert not net.a.link.send(sid, b"too late")
    net.pump()
    assert b"too late" not in net.b.received[sid]
    assert len(net.b.received[sid]) == (window + 10 if pending else 0)
    assert net.b.of(ev.StreamEnded) == [ev.StreamEnded(sid)]
    assert net.a.closed_with is None and net.b.closed_with is None


def test_data_after_fin_before_accept_closes_with_protocol_error() -> None:
    net = make_net()
    net.b.auto_accept = False
    sid = net.a.link.open_stream("s")
    net.a.link.finish(sid)
    net.ab.inject(fr.data_header(sid) + b"after FIN")
    net.pump()
    assert net.b.closed_with is not None
    assert net.b.closed_with.code == CloseCode.PROTOCOL_ERROR


def test_accept_and_reject_after_close_write_nothing() -> None:
    net = make_net()
    net.b.auto_accept = False
    s1, s3 = net.a.link.open_stream("s"), net.a.link.open_stream("s")
    net.pump()
    net.b.link.close()
    net.b.link.data_to_send()
    net.b.link.accept_stream(s1)
    net.b.link.reject_stream(s3, StreamError.NOT_ALLOWED, "")
    assert net.b.link.data_to_send() == []


@pytest.mark.parametrize("credit_left", [True, False], ids=["with-credit", "blocked"])
def test_an_empty_send_does_not_wedge_the_stream(credit_left: bool) -> None:
    window = 4 * KIB
    net = make_net(config_a=LinkConfig(window=window), config_b=LinkConfig(window=window))
    sid = open_accepted(net)
    if not credit_left:
        net.a.link.send(sid, bytes(window))
    assert net.a.link.send(sid, b"") is credit_left
    net.a.link.send(sid, b"after the empty chunk")
    net.a.link.finish(sid)
    net.pump()
    assert net.b.received[sid].endswith(b"after the empty chunk")
    assert net.b.of(ev.StreamEnded) == [ev.StreamEnded(sid)]


def test_each_side_sends_within_the_window_the_other_side_announced() -> None:
    small, large = 64 * KIB, 1 * MIB
    net = make_net(config_a=LinkConfig(window=small), config_b=LinkConfig(window=large))
    assert net.a.link._keys is not None and net.b.link._keys is not None
    assert (net.a.link._keys.peer_window, net.b.link._keys.peer_window) == (large, small)
    net.tap()
    net.a.auto_consume = net.b.auto_consume = False
    sid = open_accepted(net)
    a_data, b_data = pattern(4, 3 * MIB), pattern(5, 300 * KIB)
    net.a.link.send(sid, a_data)
    net.b.link.send(sid, b_data)
    net.pump()
    assert len(net.b.received[sid]) == large  # a stops at b's window, not its own
    assert len(net.a.received[sid]) == small
    consumed = {"a": 0, "b": 0}
    for _ in range(1000):
        for peer, window in ((net.a, small), (net.b, large)):
            backlog = len(peer.received[sid]) - consumed[peer.name]
            assert backlog <= window
            peer.link.consumed(sid, backlog)
            consumed[peer.name] += backlog
        net.pump()
        if net.b.received[sid] == a_data and net.a.received[sid] == b_data:
            break
    assert net.b.received[sid] == a_data and net.a.received[sid] == b_data
    assert net.a.closed_with is None and net.b.closed_with is None


def test_window_out_of_range_is_refused_locally() -> None:
    for window in (fr.MIN_STREAM_WINDOW - 1, fr.MAX_STREAM_CREDIT + 1):
        with pytest.raises(ValueError):
            LinkConfig(window=window)


def test_acceptor_bytes_before_accept_wait_for_it() -> None:
    """A target may speak (a banner) before the owner has accepted the stream: the bytes
    are held, not dropped, and go out right after OPEN_OK."""
    net = make_net()
    net.b.auto_accept = False
    sid = net.a.link.open_stream("s")
    net.pump()
    assert net.b.of(ev.StreamOpenRequested)
    assert net.b.link.send(sid, b"SSH-2.0-banner\r\n") is False  # held: caller pauses
    net.pump()
    assert net.a.received.get(sid, b"") == b""
    net.b.link.accept_stream(sid)
    net.pump()
    assert net.a.of(ev.StreamOpened) == [ev.StreamOpened(sid)]
    assert net.a.received[sid] == b"SSH-2.0-banner\r\n"
    assert ev.StreamWritable(sid) in net.b.log


def test_unanswered_open_probes_the_peer_then_gives_the_link_up() -> None:
    """A peer that vanished (e.g. changed address) is found out in seconds, not after
    the idle timeout, once a stream open goes unanswered."""
    net = make_net()
    link = net.a.link
    cfg = link.config
    link.open_stream("s", now=1.0)
    link.data_to_send()  # lost: the peer never sees (or answers) anything from now on
    assert link.next_deadline() == pytest.approx(1.0 + cfg.probe_after)
    link.handle_timer(1.0 + cfg.probe_after)
    assert not link.closed
    assert link.data_to_send()  # a PING went out (and is lost too)
    link.handle_timer(1.0 + cfg.probe_after + cfg.probe_timeout)
    net.a.collect()
    assert net.a.closed_with is not None
    assert net.a.closed_with.code == CloseCode.IDLE_TIMEOUT


def test_a_slow_but_live_owner_keeps_the_link() -> None:
    """The owner takes long to accept (slow target) but answers PINGs: no give-up."""
    net = make_net()
    net.b.auto_accept = False
    cfg = net.a.link.config
    net.a.link.open_stream("s", now=1.0)
    net.pump()
    for step in range(1, 8):
        net.tick(1.0 + step * cfg.probe_after)
        net.pump()
    assert not net.a.link.closed and net.a.closed_with is None
