"""Events the link core reports to its adapter, named in the past tense."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkEstablished:
    peer_identity: bytes
    peer_link_key: bytes


@dataclass(frozen=True, slots=True)
class LinkClosed:
    code: int
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class StreamOpenRequested:
    stream_id: int
    service: str
    flags: int


@dataclass(frozen=True, slots=True)
class StreamOpened:
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamOpenFailed:
    stream_id: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class StreamDataReceived:
    stream_id: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed: no more data will arrive on this stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """Both directions finished cleanly; the stream id is gone."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """Credit came back: the adapter may resume reading the stream's source."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    token: int
    rtt: float


@dataclass(frozen=True, slots=True)
class RecordsReceived:
    records: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CellsReceived:
    """Whole circuit cells for the node's circuit router: each chunk is a multiple of
    CELL_SIZE bytes. Consecutive CELLS frames of one read arrive as one event, so the
    router can handle them as one batch (one write per link and per local socket)."""

    chunks: tuple[bytes | memoryview, ...]


Event = (
    LinkEstablished
    | LinkClosed
    | StreamOpenRequested
    | StreamOpened
    | StreamOpenFailed
    | StreamDataReceived
    | StreamEnded
    | StreamReset
    | StreamClosed
    | StreamWritable
    | PongReceived
    | RecordsReceived
    | CellsReceived
)
