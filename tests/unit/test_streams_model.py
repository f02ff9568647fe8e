"""Model-based test of streams on one link: a hypothesis state machine drives two `Link`s
(through the in-memory harness of tests/kit/links.py) with random opens, accepts,
rejects, sends, partial consumption, half-closes, resets and partial deliveries, and
checks after every step that

- the bytes each side received on a stream are a prefix of what the other side sent;
- a sender never has more than one window of DATA on the wire that credit has not
  covered (counted by decrypting a copy of the traffic), and the receiver never holds
  more than one window unconsumed;
- each side's stream state is what the frames that side sent and received imply;
- every event is one the peer's actions justify, and the link never closes.

At the end it accepts everything, consumes everything, finishes every stream and
pumps: every byte sent must have arrived and every stream must be closed on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kit.links import Net, Wire, make_net, pattern
from vx6.core import events as ev
from vx6.core.link_config import LinkConfig
from vx6.core.streams import StreamState
from vx6.errors import StreamError
from vx6.wire.frames import FrameType

WINDOW = 4096  # the smallest a link accepts: credit runs out often
MAX_STREAMS = 5
MAX_OPENS = 8
SIDES = ("a", "b")
S = StreamState


@dataclass
class Direction:
    """What one side wrote on a stream and what the other side made of it."""

    sent: bytearray = field(default_factory=bytearray)
    sent_at_finish: int | None = None  # how much had been sent when finish() was called
    consumed: int = 0  # by the reader
    ended: bool = False  # the reader saw StreamEnded


@dataclass
class StreamModel:
    sid: int
    opener: str
    service: str
    requested: bool = False  # the acceptor's application saw StreamOpenRequested
    accepted: bool = False
    reject_code: int | None = None
    resets: dict[str, int] = field(default_factory=dict)  # side -> code; both may cross
    closed_seen: set[str] = field(default_factory=set)
    writes: dict[str, Direction] = field(
        default_factory=lambda: {side: Direction() for side in SIDES}
    )

    def acceptor(self) -> str:
        return "b" if self.opener == "a" else "a"

    @property
    def damaged(self) -> bool:
        """Bytes on a reset or refused stream may legitimately be lost."""
        return bool(self.resets) or self.reject_code is not None


class LinkPair(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        config = LinkConfig(window=WINDOW, max_streams=MAX_STREAMS)
        self.net: Net = make_net(config_a=config, config_b=config)
        self.net.tap()
        self.peers = {"a": self.net.a, "b": self.net.b}
        self.out = {"a": self.net.ab, "b": self.net.ba}  # wire each side writes to
        for peer in self.peers.values():
            peer.auto_accept = peer.auto_consume = False
            peer.log.clear()
        self.streams: dict[int, StreamModel] = {}
        self.pings = {side: 0 for side in SIDES}
        self.pongs: dict[str, set[int]] = {side: set() for side in SIDES}

    # ------------------------------------------------------------------ plumbing
    def other(self, side: str) -> str:
        return "b" if side == "a" else "a"

    def sync(self) -> None:
        """Let both applications see their events (checking each), then collect output."""
        for side, peer in self.peers.items():
            for event in peer.collect():
                self.check_event(side, event)
        for wire in self.out.values():
            wire.take()

    def deliver(self, wire: Wire, size: int) -> None:
        wire.deliver(min(size, len(wire.buffer)), self.net.now)
        self.sync()

    def check_event(self, side: str, event: ev.Event) -> None:
        other = self.other(side)
        match event:
            case ev.StreamOpenRequested(sid, service, _):
                m = self.streams[sid]
                assert (m.opener, m.service, m.requested) == (other, service, False)
                m.requested = True
            case ev.StreamOpened(sid):
                m = self.streams[sid]
                assert m.opener == side and m.accepted
            case ev.StreamOpenFailed(sid, code, _):
                m = self.streams[sid]
                assert m.opener == side
                if m.reject_code is None:  # refused by the peer's stream limit
                    assert code == StreamError.RESOURCE_LIMIT
                    m.reject_code = code
                assert code == m.reject_code
            case ev.StreamDataReceived(sid, data):
                m = self.streams[sid]
                got = self.peers[side].received[sid]
                assert m.writes[other].sent.startswith(got), "bytes lost, changed or reordered"
                assert len(data) > 0
            case ev.StreamEnded(sid):
                d = self.streams[sid].writes[other]
                assert d.sent_at_finish is not None and not d.ended
                assert len(self.peers[side].received[sid]) == d.sent_at_finish
                d.ended = True
            case ev.StreamReset(sid, code):
                m = self.streams[sid]
                assert m.resets.get(other) == code and side not in m.resets
            case ev.StreamClosed(sid):
                m = self.streams[sid]
                assert side not in m.closed_seen
                assert m.writes[side].sent_at_finish is not None and m.writes[other].ended
                m.closed_seen.add(side)
            case ev.StreamWritable(sid):
                # (the stream may be gone by now: a reset can follow the credit)
                m = self.streams[sid]
                assert m.writes[side].sent and side not in m.resets
            case ev.PongReceived(token, rtt):
                # only the answer to the latest ping counts, and only once
                assert token == self.pings[side] and token not in self.pongs[side]
                assert rtt == 0.0
                self.pongs[side].add(token)
            case _:
                raise AssertionError(f"unexpected event at {side}: {event}")

    def local_streams(self, side: str) -> list[int]:
        return sorted(self.peers[side].link.streams.streams)

    def writable(self, side: str) -> list[int]:
        """Streams this side's application may still write to."""
        return [
            sid
            for sid in self.local_streams(side)
            if self.streams[sid].writes[side].sent_at_finish is None
            and (self.streams[sid].opener == side or self.streams[sid].accepted)
        ]

    def expected_state(self, side: str, m: StreamModel) -> StreamState | None:
        """The state implied by the frames this side wrote and the frames that reached
        it; None where the stream should be gone (or not known yet)."""
        mine, theirs = self.out[side], self.out[self.other(side)]
        sent = lambda kind: mine.frames_written[(kind, m.sid)] > 0  # noqa: E731
        came = lambda kind: theirs.frames_arrived[(kind, m.sid)] > 0  # noqa: E731
        if sent(FrameType.RESET) or came(FrameType.RESET):
            return None
        if m.opener == side:
            if came(FrameType.OPEN_FAIL):
                return None
            if not came(FrameType.OPEN_OK):
                return S.OPENING
        else:
            if not came(FrameType.OPEN) or sent(FrameType.OPEN_FAIL):
                return None
            if not m.accepted:
                return S.ACCEPTING
        return {
            (False, False): S.OPEN,
            (True, False): S.LOCAL_DONE,
            (False, True): S.REMOTE_DONE,
            (True, True): None,
        }[(sent(FrameType.FIN), came(FrameType.FIN))]

    # ------------------------------------------------------------------ rules
    @precondition(lambda self: len(self.streams) < MAX_OPENS)
    @rule(side=st.sampled_from(SIDES), service=st.sampled_from(["echo", "ssh", "web"]))
    def open_stream(self, side: str, service: str) -> None:
        link = self.peers[side].link
        if len(link.streams) >= MAX_STREAMS:
            return
        sid = link.open_stream(service)
        assert sid % 2 == (1 if side == "a" else 0) and sid not in self.streams
        self.streams[sid] = StreamModel(sid, side, service)
        self.sync()

    @rule(side=st.sampled_from(SIDES), data=st.data(), accept=st.booleans())
    def answer_open(self, side: str, data: st.DataObject, accept: bool) -> None:
        waiting = [
            sid
            for sid in self.local_streams(side)
            if self.streams[sid].requested
            and not self.streams[sid].accepted
            and self.streams[sid].reject_code is None
            and self.streams[sid].opener != side
        ]
        if not waiting:
            return
        sid = data.draw(st.sampled_from(waiting), label="sid")
        m = self.streams[sid]
        if accept:
            self.peers[side].link.accept_stream(sid)
            m.accepted = True
        else:
            code = data.draw(st.sampled_from([StreamError.NOT_ALLOWED, StreamError.CANCELLED]))
            self.peers[side].link.reject_stream(sid, code, "no")
            m.reject_code = code
        self.sync()

    @rule(
        side=st.sampled_from(SIDES),
        data=st.data(),
        size=st.one_of(st.integers(0, 300), st.integers(0, 3 * WINDOW)),
    )
    def send(self, side: str, data: st.DataObject, size: int) -> None:
        candidates = self.writable(side)
        if not candidates:
            return
        sid = data.draw(st.sampled_from(candidates), label="sid")
        sent = self.streams[sid].writes[side].sent
        chunk = pattern(sid * 1000 + len(sent), size)
        keep_going = self.peers[side].link.send(sid, chunk)
        sent += chunk
        stream = self.peers[side].link.streams.get(sid)
        assert stream is not None
        if keep_going:
            assert not stream.pending and stream.send_credit > 0
        self.sync()

    @rule(side=st.sampled_from(SIDES), data=st.data())
    def consume(self, side: str, data: st.DataObject) -> None:
        other = self.other(side)
        backlog = {
            sid: len(self.peers[side].received[sid]) - m.writes[other].consumed
            for sid, m in self.streams.items()
        }
        candidates = sorted(sid for sid, n in backlog.items() if n > 0)
        if not candidates:
            return
        sid = data.draw(st.sampled_from(candidates), label="sid")
        amount = data.draw(st.integers(1, backlog[sid]), label="amount")
        self.peers[side].link.consumed(sid, amount)
        self.streams[sid].writes[other].consumed += amount
        self.sync()

    @rule()
    def applications_catch_up(self) -> None:
        self.consume_everything()
        self.sync()

    @rule(side=st.sampled_from(SIDES), data=st.data())
    def finish(self, side: str, data: st.DataObject) -> None:
        candidates = self.writable(side)
        if not candidates:
            return
        sid = data.draw(st.sampled_from(candidates), label="sid")
        d = self.streams[sid].writes[side]
        d.sent_at_finish = len(d.sent)
        self.peers[side].link.finish(sid)
        self.sync()

    @rule(side=st.sampled_from(SIDES), data=st.data(), code=st.sampled_from(list(StreamError)[:7]))
    def reset(self, side: str, data: st.DataObject, code: StreamError) -> None:
        candidates = self.local_streams(side)
        if not candidates:
            return
        sid = data.draw(st.sampled_from(candidates), label="sid")
        self.peers[side].link.reset(sid, code)  # the peer's RESET may be crossing ours
        self.streams[sid].resets[side] = code
        self.sync()

    @rule(
        side=st.sampled_from(SIDES),
        size=st.one_of(st.integers(0, 64), st.integers(0, 4 * WINDOW), st.just(1 << 30)),
    )
    def deliver_some(self, side: str, size: int) -> None:
        self.deliver(self.out[side], size)

    @rule()
    def deliver_everything_once(self) -> None:
        for wire in self.out.values():
            self.deliver(wire, len(wire.buffer))

    @rule(side=st.sampled_from(SIDES))
    def ping(self, side: str) -> None:
        self.peers[side].link.ping(self.net.now)
        self.pings[side] += 1
        self.sync()

    # ------------------------------------------------------------------ invariants
    @invariant()
    def link_stays_up(self) -> None:
        for peer in self.peers.values():
            assert peer.closed_with is None, peer.closed_with
            assert peer.link.established

    @invariant()
    def window_is_respected(self) -> None:
        for side in SIDES:
            other = self.other(side)
            link = self.peers[side].link
            for sid, m in self.streams.items():
                outstanding = self.out[side].data_written[sid] - self.out[other].credit_arrived[sid]
                assert outstanding <= WINDOW, (side, sid, outstanding)
                stream = link.streams.get(sid)
                if stream is not None:
                    assert stream.send_credit >= 0
                    assert outstanding == WINDOW - stream.send_credit
                unconsumed = len(self.peers[other].received[sid]) - m.writes[side].consumed
                assert 0 <= unconsumed <= WINDOW

    @invariant()
    def states_match_the_model(self) -> None:
        for side in SIDES:
            table = self.peers[side].link.streams
            for sid, m in self.streams.items():
                stream = table.get(sid)
                assert (stream.state if stream else None) == self.expected_state(side, m), (
                    side,
                    sid,
                )
            assert len(table) <= MAX_STREAMS

    def teardown(self) -> None:
        self.drain_everything()
        for side in SIDES:
            for sid in self.writable(side):
                self.streams[sid].writes[side].sent_at_finish = len(
                    self.streams[sid].writes[side].sent
                )
                self.peers[side].link.finish(sid)
        self.drain_everything()
        for m in self.streams.values():
            if m.damaged:
                continue
            for writer in SIDES:
                reader = self.other(writer)
                assert self.peers[reader].received[m.sid] == m.writes[writer].sent
                assert m.writes[writer].ended
            assert m.closed_seen == {"a", "b"}
        for side in SIDES:
            assert len(self.peers[side].link.streams) == 0
        self.link_stays_up()

    def drain_everything(self) -> None:
        for _ in range(1000):
            for side in SIDES:
                for sid in self.local_streams(side):
                    m = self.streams[sid]
                    if m.opener != side and m.requested and not m.accepted:
                        self.peers[side].link.accept_stream(sid)
                        m.accepted = True
            self.consume_everything()
            self.sync()
            if not any(wire.buffer for wire in self.out.values()):
                return
            for wire in self.out.values():
                self.deliver(wire, len(wire.buffer))
        raise AssertionError("links did not go quiet")

    def consume_everything(self) -> None:
        for side in SIDES:
            other = self.other(side)
            for sid, m in self.streams.items():
                backlog = len(self.peers[side].received[sid]) - m.writes[other].consumed
                if backlog:
                    self.peers[side].link.consumed(sid, backlog)
                    m.writes[other].consumed += backlog


LinkPair.TestCase.settings = settings(
    max_examples=400, stateful_step_count=60, deadline=None, print_blob=True
)
TestLinkPair = LinkPair.TestCase
