"""Which asyncio event loop a node runs on.

Theory of operation. uvloop (MagicStack's libuv-based loop) when it is importable, the
standard library's loop otherwise. Every new stream costs about a dozen event-loop
wake-ups and transport calls across two nodes, and uvloop does those in C: on the
forward benchmark it takes about a third off the new-connection time and adds about a
fifth to bulk throughput one way (docs/benchmarks.md). The code only uses the public
asyncio API, so both loops run it, with one rule that uvloop makes matter:
`transport.write` may keep a reference to what it could not send yet instead of copying
it, so a buffer (or a view of one) passed to `write` must never be reused afterwards.

`VX6_EVENT_LOOP` overrides the choice: `asyncio` forces the standard loop (the tests run
one forward that way so it stays covered, and a user can rule uvloop out when chasing a
bug), `uvloop` insists on uvloop and refuses to start without it, `auto` (or unset) is
the default above.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from vx6.errors import UsageError

log = logging.getLogger("vx6.node")

ENV_VAR = "VX6_EVENT_LOOP"
CHOICES = ("auto", "asyncio", "uvloop")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
T = TypeVar("T")


def choose_loop(wanted: str | None = None) -> tuple[LoopFactory | None, str]:
    """(factory for asyncio.Runner, description for the log); factory None = stdlib."""
    if wanted is None:
        wanted = os.environ.get(ENV_VAR, "")
    wanted = wanted.strip().lower() or "auto"
    if wanted not in CHOICES:
        raise UsageError(f"{ENV_VAR}={wanted!r}: expected one of {', '.join(CHOICES)}")
    if wanted == "asyncio":
        return None, f"asyncio (forced by {ENV_VAR})"
    try:
        import uvloop
    except ImportError:
        if wanted == "uvloop":
            raise UsageError(f"{ENV_VAR}=uvloop but uvloop is not installed") from None
        return None, "asyncio (uvloop not installed)"
    return uvloop.new_event_loop, f"uvloop {getattr(uvloop, '__version__', '')}".rstrip()


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the chosen loop (asyncio.Runner: 3.11's asyncio.run has no
    loop_factory), logging which one runs."""
    try:
        factory, description = choose_loop()
    except UsageError:
        main.close()  # never awaited: close it so Python does not warn about it
        raise
    log.info("event loop: %s", description)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
