"""Where a circuit core's cells go, sans-IO: per-link lists, or in place into a link.

Theory of operation. A core writes every cell through its `CellOutbox`. A cell for a
link the adapter lists in `writers` (open, not paused, nothing queued for it) is written
straight into that link's frame buffer (`core/link_cells.py`): `buffer` hands out the
place, `done` confirms it, and a place never confirmed (the cell failed a check half-way)
is handed out again. Any other cell is a buffer of its own, appended to the link's list.
The adapter drains `take()` after each call into the core: per link, the cells to send in
that order, or an empty list for a link that only had cells written in place and needs
its output collected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from vx6.wire.cells import CELL_SIZE

CellBuffer = bytes | bytearray | memoryview


class CellWriter(Protocol):
    """A link that takes cells in place: `cell_slot` gives CELL_SIZE writable bytes
    (holding whatever was there), `cell_written` confirms them."""

    def cell_slot(self) -> memoryview: ...

    def cell_written(self) -> None: ...


class CellOutbox:
    def __init__(self, writers: Mapping[int, CellWriter] | None = None) -> None:
        # Kept by the adapter, read on every cell: which links take cells in place now.
        self.writers: Mapping[int, CellWriter] = writers if writers is not None else {}
        self.cells_in_place = 0
        self._lists: dict[int, list[CellBuffer]] = {}

    def take(self) -> dict[int, list[CellBuffer]]:
        out, self._lists = self._lists, {}
        return out

    def send(self, link: int, cell: CellBuffer) -> None:
        """Queue a finished cell (exactly CELL_SIZE bytes, never written again)."""
        cells = self._lists.get(link)
        if cells is None:
            self._lists[link] = [cell]
        else:
            cells.append(cell)

    def buffer(self, link: int | None) -> tuple[memoryview, CellWriter | None]:
        """Where to write the next cell for `link` (None: a cell that stays here): in
        place if the link takes it now, else a fresh buffer."""
        writer = None if link is None else self.writers.get(link)
        if writer is not None:
            return writer.cell_slot(), writer
        return memoryview(bytearray(CELL_SIZE)), None

    def done(self, link: int, cell: memoryview, writer: CellWriter | None) -> None:
        """The cell `buffer` gave is written: send it."""
        if writer is None:
            self.send(link, cell)
            return
        writer.cell_written()
        self.cells_in_place += 1
        if link not in self._lists:
            self._lists[link] = []  # its output needs collecting
