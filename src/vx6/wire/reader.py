"""One bounds-checked cursor for the codecs that read variable-length bodies.

Every read past the end raises DecodeError naming what was being read, never IndexError
or struct.error, so "every decoder raises only DecodeError" holds by construction. The
codecs (wire/records.py, wire/dht.py) subclass it for their own field kinds.
"""

from __future__ import annotations

from vx6.errors import DecodeError
from vx6.wire.endpoint import unpack_endpoint


class Reader:
    __slots__ = ("_data", "_end", "_pos", "_what")

    def __init__(
        self, data: bytes | memoryview, what: str, start: int = 0, end: int | None = None
    ) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end
        self._what = what

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > self._end:
            raise DecodeError(f"{self._what} truncated")
        chunk = bytes(self._data[self._pos : end])
        self._pos = end
        return chunk

    def u8(self) -> int:
        if self._pos >= self._end:
            raise DecodeError(f"{self._what} truncated")
        value = self._data[self._pos]
        self._pos += 1
        return value

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "big")

    def endpoint(self) -> tuple[str, int]:
        host, port, self._pos = unpack_endpoint(self._data, self._pos, self._end)
        return host, port

    def left(self) -> int:
        return self._end - self._pos

    def finish(self) -> None:
        if self._pos != self._end:
            raise DecodeError(f"trailing bytes after {self._what}")
