"""Circuit cells on a link, sans-IO: CELLS frames filled where they will be sealed.

Theory of operation. A CELLS frame is its type byte and up to CELLS_PER_FRAME cells.
`Link` (core/link.py) inherits these operations. The link keeps one frame buffer for
outgoing cells and hands out the place of the next one (`cell_slot`): a relay decrypts
its layer straight into it, so a cell passing through is neither zero-filled nor copied
between the link it came from and the one it leaves on. `cell_written` confirms the
slot; a slot never confirmed is handed out again, so a cell that failed its checks
half-way is never sent. A full frame is sealed at once, a partly filled one when the
adapter collects the link's output (`data_to_send`), so every cell written in one batch
leaves in that batch's write.
"""

from __future__ import annotations

from collections.abc import Sequence

from vx6.wire import frames as fr
from vx6.wire.cells import CELL_SIZE, CELLS_PER_FRAME


class CellOps:
    """Mixin: the cell output of `Link`."""

    closed: bool
    _cell_frame: memoryview | None
    _cells_pending: int

    def _seal(self, plaintext: memoryview) -> None:
        raise NotImplementedError

    def _require_open(self) -> None:
        raise NotImplementedError

    def cell_slot(self) -> memoryview:
        """The place of the next cell to send: CELL_SIZE writable bytes holding whatever
        was there before. Write a whole cell, then call `cell_written`."""
        frame = self._cell_frame
        if frame is None:  # only links that carry circuits pay for the buffer
            frame = self._cell_frame = memoryview(bytearray(1 + CELLS_PER_FRAME * CELL_SIZE))
            frame[0] = fr.FrameType.CELLS
        start = 1 + self._cells_pending * CELL_SIZE
        return frame[start : start + CELL_SIZE]

    def cell_written(self) -> None:
        self._cells_pending += 1
        if self._cells_pending == CELLS_PER_FRAME:
            self._seal_cells()

    def send_cells(self, cells: Sequence[bytes | bytearray | memoryview]) -> None:
        """Queue whole cells (each exactly CELL_SIZE bytes) written elsewhere."""
        self._require_open()
        for cell in cells:
            self.cell_slot()[:] = cell
            self.cell_written()

    def _seal_cells(self) -> None:
        """Seal the cells written so far into one frame (nothing if there are none; on
        a closed link they are dropped with it)."""
        count, self._cells_pending = self._cells_pending, 0
        if count and self._cell_frame is not None and not self.closed:
            self._seal(self._cell_frame[: 1 + count * CELL_SIZE])
