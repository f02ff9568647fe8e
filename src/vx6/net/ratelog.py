"""Rate-limited logging for everything a peer can make the node refuse or drop.

Theory of operation. A hostile peer decides how often the node refuses something, so a
log line per refusal is a disk-filling and CPU channel it controls. Every refusal and
drop category goes through one `RateLog`: per category, the first `burst` lines of an
interval are written as usual; after that lines are only counted, and the first call
after the interval ends (or `flush`, which the node calls on a timer) writes one summary
line "<category>: N more suppressed in the last S s". Counters are exact whatever is
written: `counts[category]` is every occurrence since start, which `vx6 status` shows.

Categories are names chosen by the code (never text from the network), and the table of
them is bounded anyway. One process-wide instance, `RATELOG`, is shared so that the
budget holds for the whole node and `flush_all` has one place to look.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

DEFAULT_BURST = 3
DEFAULT_INTERVAL = 60.0
MAX_CATEGORIES = 512


@dataclass
class _Window:
    started: float
    written: int = 0
    suppressed: int = 0
    logger: logging.Logger | None = None
    level: int = logging.WARNING


@dataclass
class RateLog:
    burst: int = DEFAULT_BURST
    interval: float = DEFAULT_INTERVAL
    clock: Callable[[], float] = time.monotonic
    counts: dict[str, int] = field(default_factory=dict)
    _windows: dict[str, _Window] = field(default_factory=dict)

    def log(
        self,
        logger: logging.Logger,
        level: int,
        category: str,
        msg: str,
        *args: object,
        exc_info: bool = False,
    ) -> bool:
        """Count one occurrence of `category`; write `msg % args` (with the traceback of
        the exception being handled, if `exc_info`) if within the budget. Returns whether
        the line was written."""
        self.counts[category] = self.counts.get(category, 0) + 1
        now = self.clock()
        window = self._windows.get(category)
        if window is None:
            if len(self._windows) >= MAX_CATEGORIES:
                self._flush_oldest()
            window = self._windows[category] = _Window(now)
        elif now - window.started >= self.interval:
            self._summarise(category, window, now)
            window.started, window.written, window.suppressed = now, 0, 0
        window.logger, window.level = logger, level
        if window.written < self.burst:
            window.written += 1
            logger.log(level, msg, *args, exc_info=exc_info)
            return True
        window.suppressed += 1
        return False

    def warning(self, logger: logging.Logger, category: str, msg: str, *args: object) -> bool:
        return self.log(logger, logging.WARNING, category, msg, *args)

    def info(self, logger: logging.Logger, category: str, msg: str, *args: object) -> bool:
        return self.log(logger, logging.INFO, category, msg, *args)

    def exception(self, logger: logging.Logger, category: str, msg: str, *args: object) -> bool:
        """An ERROR line with the current exception's traceback: for bugs a peer's input
        reached (its input decides how often, so this is rate-limited like the rest)."""
        return self.log(logger, logging.ERROR, category, msg, *args, exc_info=True)

    def count(self, category: str) -> int:
        return self.counts.get(category, 0)

    def flush(self) -> None:
        """Write the summary of every interval that has ended (called on a timer, so a
        flood that stopped still gets its count written)."""
        now = self.clock()
        for category, window in list(self._windows.items()):
            if now - window.started >= self.interval:
                self._summarise(category, window, now)
                del self._windows[category]

    def _flush_oldest(self) -> None:
        category = min(self._windows, key=lambda c: self._windows[c].started)
        self._summarise(category, self._windows.pop(category), self.clock())

    @staticmethod
    def _summarise(category: str, window: _Window, now: float) -> None:
        if window.suppressed and window.logger is not None:
            window.logger.log(
                window.level,
                "%s: %d more suppressed in the last %.0f s",
                category,
                window.suppressed,
                now - window.started,
            )


RATELOG = RateLog()


def flush_all() -> None:
    RATELOG.flush()


FLUSH_EVERY = 10.0


async def flush_loop(sleep: Callable[[float], Awaitable[None]]) -> None:
    """Flush every FLUSH_EVERY seconds, so a flood that has stopped still gets its one
    summary line written."""
    while True:
        await sleep(FLUSH_EVERY)  # periodic timer, not synchronisation
        flush_all()
