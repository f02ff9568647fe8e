"""A link's limits and timers (one frozen value; `Link` and its stream half read it)."""

from __future__ import annotations

from dataclasses import dataclass

from vx6.wire import frames as fr


@dataclass(frozen=True)
class LinkConfig:
    window: int = 2 * 1024 * 1024  # per-stream credit; bounds memory per stream
    max_streams: int = 1024
    keepalive: float = 15.0  # send PING after this long without hearing from the peer
    idle_timeout: float = 45.0  # give up after this long without hearing anything
    handshake_timeout: float = 5.0  # absolute: from the TCP connection, whatever arrives
    probe_after: float = 2.0  # an open unanswered this long: PING the peer
    probe_timeout: float = 3.0  # and give the link up if that goes unanswered too
    frames_per_turn: int = 256  # messages handled per receive call (one event-loop turn)
    control_rate: float = 500.0  # PING/OPEN/RECORDS frames a second, on average
    control_burst: int = 1000  # and at most this many at once
    max_unsent_control: int = 256 * 1024  # control output queued while the peer does not read

    def __post_init__(self) -> None:
        if not fr.MIN_STREAM_WINDOW <= self.window <= fr.MAX_STREAM_CREDIT:
            raise ValueError("window out of range")
