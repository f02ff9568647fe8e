"""Streams on a link: lifecycle table and per-stream credit flow control.

Theory of operation. A stream is one forwarded TCP connection. Either side of a link
may open streams; the link's initiator uses odd ids and the responder even ids, so the
two never collide. The lifecycle is the table `_TRANSITIONS` of (state, input) -> state;
an input that is not in the table for the current state is a protocol error by whoever
caused it.

Flow control is credit based and per stream, so one slow reader never stalls the other
streams of the link and never makes either node buffer without bound: a sender may have
at most `window` unacknowledged bytes in flight; the receiver returns credit only after
its local application has actually taken the bytes (`consumed`). Whatever a sender is
handed beyond its credit waits in `pending`, and the caller is told to stop reading its
local socket until `Writable` comes back. The receiver refuses DATA beyond the credit it
granted, which bounds its memory per stream to one window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import auto

from vx6.core.states import TableEnum
from vx6.errors import TransitionError


class StreamState(TableEnum):
    OPENING = auto()  # we sent OPEN, no answer yet (we may already send data: 0-RTT)
    ACCEPTING = auto()  # peer sent OPEN, our application has not decided yet
    OPEN = auto()
    LOCAL_DONE = auto()  # we sent FIN; peer may still send
    REMOTE_DONE = auto()  # peer sent FIN; we may still send
    CLOSED = auto()


class StreamInput(TableEnum):
    OPEN_OK = auto()
    OPEN_FAIL = auto()
    ACCEPT = auto()
    REJECT = auto()
    FIN_SENT = auto()
    FIN_RECEIVED = auto()
    RESET = auto()


S, In = StreamState, StreamInput
_TRANSITIONS: dict[tuple[StreamState, StreamInput], StreamState] = {
    (S.OPENING, In.OPEN_OK): S.OPEN,
    (S.OPENING, In.OPEN_FAIL): S.CLOSED,
    (S.OPENING, In.FIN_SENT): S.OPENING,  # half-close before the answer: remembered in flags
    (S.ACCEPTING, In.ACCEPT): S.OPEN,
    (S.ACCEPTING, In.REJECT): S.CLOSED,
    (S.ACCEPTING, In.FIN_RECEIVED): S.ACCEPTING,
    (S.OPEN, In.FIN_SENT): S.LOCAL_DONE,
    (S.OPEN, In.FIN_RECEIVED): S.REMOTE_DONE,
    (S.LOCAL_DONE, In.FIN_RECEIVED): S.CLOSED,
    (S.REMOTE_DONE, In.FIN_SENT): S.CLOSED,
}
for _state in StreamState:
    if _state is not S.CLOSED:
        _TRANSITIONS[(_state, In.RESET)] = S.CLOSED
del _state

CAN_SEND = frozenset({S.OPENING, S.OPEN, S.REMOTE_DONE})
CAN_RECEIVE = frozenset({S.ACCEPTING, S.OPENING, S.OPEN, S.LOCAL_DONE})


@dataclass(slots=True)
class Stream:
    stream_id: int
    state: StreamState
    send_credit: int  # bytes we may still send
    recv_allowance: int  # bytes the peer may still send us before it must wait for credit
    pending: deque[bytes] = field(default_factory=deque)
    pending_bytes: int = 0
    unacked_consumed: int = 0  # consumed bytes not yet returned as credit
    fin_after_pending: bool = False
    fin_received_early: bool = False  # FIN arrived while still ACCEPTING/OPENING
    fin_sent_early: bool = False
    fin_sent: bool = False  # our direction is finished: no more send()
    fin_received: bool = False  # the peer's direction is finished: no more DATA
    blocked: bool = False  # we told the caller to stop feeding us

    def apply(self, event: StreamInput) -> StreamState:
        new = _TRANSITIONS.get((self.state, event))
        if new is None:
            raise TransitionError(f"stream {self.stream_id}: {event.name} in {self.state.name}")
        if event is In.FIN_RECEIVED:
            self.fin_received = True
            self.fin_received_early = new is self.state
        if event is In.FIN_SENT:
            self.fin_sent = True
            self.fin_sent_early = new is self.state
        self.state = new
        if new is S.OPEN:
            # Half-closes that raced the open take effect now.
            if self.fin_sent_early and self.fin_received_early:
                self.state = S.CLOSED
            elif self.fin_sent_early:
                self.state = S.LOCAL_DONE
            elif self.fin_received_early:
                self.state = S.REMOTE_DONE
        return self.state


class StreamTable:
    """All streams of one link, with id allocation and the concurrency cap."""

    def __init__(
        self, *, odd_ids: bool, window: int, max_streams: int, initial_credit: int
    ) -> None:
        self._next_id = 1 if odd_ids else 2
        self._own_parity = 1 if odd_ids else 0
        self._max_peer_id = 0
        self.window = window
        self.initial_credit = initial_credit
        self.max_streams = max_streams
        self.streams: dict[int, Stream] = {}

    def __len__(self) -> int:
        return len(self.streams)

    def new_local(self) -> Stream:
        sid = self._next_id
        self._next_id += 2
        stream = Stream(sid, S.OPENING, self.initial_credit, self.window)
        self.streams[sid] = stream
        return stream

    def new_remote(self, sid: int) -> Stream:
        """Peer ids only grow; the caller checks `is_new_peer_id` first."""
        self._max_peer_id = sid
        stream = Stream(sid, S.ACCEPTING, self.initial_credit, self.window)
        self.streams[sid] = stream
        return stream

    def is_new_peer_id(self, sid: int) -> bool:
        return sid % 2 != self._own_parity and sid > self._max_peer_id

    def is_stale_id(self, sid: int) -> bool:
        """An id used earlier on this link and since closed: late frames for it are
        expected (they crossed our RESET or FIN) and are dropped quietly."""
        if sid % 2 == self._own_parity:
            return sid < self._next_id
        return 0 < sid <= self._max_peer_id

    def get(self, sid: int) -> Stream | None:
        return self.streams.get(sid)

    def drop(self, sid: int) -> None:
        self.streams.pop(sid, None)
