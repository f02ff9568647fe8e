"""The log of a starting `vx6 run`: held until the node is up.

Theory of operation. A node that cannot start (its port is taken, its home is locked by
a running node, its config is bad) must say so in one line, not in one line after a few
lines of start-up chatter ("event loop: uvloop", "stopped"). So the root handler holds
every record in memory until the node says it is up (`started()`: everything held is
written, in order, and from then on records pass straight through) or it failed with an
expected error (`failed()`: the held warnings and errors are written, the chatter below
WARNING is dropped, and the caller prints its one line). The hold is bounded: at
MAX_HELD records it lets go as if the node had started, so a slow start still logs.
"""

from __future__ import annotations

import logging
from typing import TextIO

MAX_HELD = 1000


class StartupLog(logging.Handler):
    def __init__(self, stream: TextIO, fmt: str) -> None:
        super().__init__()
        self._out = logging.StreamHandler(stream)
        self._out.setFormatter(logging.Formatter(fmt))
        self._held: list[logging.LogRecord] | None = []  # None: passing records through

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        if self._held is None:
            self._out.handle(record)
            return
        self._held.append(record)
        if len(self._held) >= MAX_HELD:
            self._let_go(logging.NOTSET)

    def started(self) -> None:
        """The node is up (or ended unexpectedly): write everything held."""
        self.acquire()
        try:
            self._let_go(logging.NOTSET)
        finally:
            self.release()

    def failed(self) -> None:
        """The node did not start, for a reason the caller prints as one line."""
        self.acquire()
        try:
            self._let_go(logging.WARNING)
        finally:
            self.release()

    def _let_go(self, level: int) -> None:
        held, self._held = self._held or [], None
        for record in held:
            if record.levelno >= level:
                self._out.handle(record)
