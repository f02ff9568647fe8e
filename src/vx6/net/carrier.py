"""What a forwarded stream runs over: a link to the owner, or a circuit ending at it.

`StreamCarrier` is the interface `StreamPipe` (the forwarded TCP connection) and the
owner side use, so port forwarding, flow control and half-close are written once for
every path (DESIGN.md section 2). `dispatch_stream_event` routes the stream events of a
sans-IO core (link or circuit session) to the sink registered for the stream.
"""

from __future__ import annotations

from typing import Protocol

from vx6.core import events as ev
from vx6.errors import StreamError


class StreamSink(Protocol):
    def on_opened(self) -> None: ...
    def on_open_failed(self, code: int, reason: str) -> None: ...
    def on_data(self, data: bytes | memoryview) -> None: ...
    def on_end(self) -> None: ...
    def on_reset(self, code: int) -> None: ...
    def on_writable(self) -> None: ...
    def on_link_paused(self, paused: bool) -> None: ...


class StreamCarrier(Protocol):
    @property
    def peer_identity(self) -> bytes | None: ...
    @property
    def send_quantum(self) -> int:
        """Stream payload one unit on the wire carries (a link frame, a circuit cell):
        a read that is a multiple of it leaves no nearly empty unit behind."""
        ...

    @property
    def paused(self) -> bool: ...
    def open_stream(self, service: str, flags: int, sink: StreamSink) -> int: ...
    def attach(self, sid: int, sink: StreamSink) -> None: ...
    def accept_stream(self, sid: int) -> None: ...
    def reject_stream(self, sid: int, code: StreamError, reason: str) -> None: ...
    def send(self, sid: int, data: bytes | memoryview) -> bool: ...
    def consumed(self, sid: int, n: int) -> None: ...
    def finish(self, sid: int) -> None: ...
    def reset(self, sid: int, code: StreamError = StreamError.CANCELLED) -> None: ...


def dispatch_stream_event(sinks: dict[int, StreamSink], event: ev.Event) -> bool:
    """Hand one stream event to its sink; False if `event` is not a stream event (the
    caller handles it). Sinks are forgotten when their stream ends for good."""
    if isinstance(event, ev.StreamDataReceived):
        if (sink := sinks.get(event.stream_id)) is not None:
            sink.on_data(event.data)
    elif isinstance(event, ev.StreamWritable):
        if (sink := sinks.get(event.stream_id)) is not None:
            sink.on_writable()
    elif isinstance(event, ev.StreamOpened):
        if (sink := sinks.get(event.stream_id)) is not None:
            sink.on_opened()
    elif isinstance(event, ev.StreamOpenFailed):
        if (sink := sinks.pop(event.stream_id, None)) is not None:
            sink.on_open_failed(event.code, event.reason)
    elif isinstance(event, ev.StreamEnded):
        if (sink := sinks.get(event.stream_id)) is not None:
            sink.on_end()
    elif isinstance(event, ev.StreamClosed):
        sinks.pop(event.stream_id, None)
    elif isinstance(event, ev.StreamReset):
        if (sink := sinks.pop(event.stream_id, None)) is not None:
            sink.on_reset(event.code)
    else:
        return False
    return True
