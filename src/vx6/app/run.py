"""`vx6 run`: the node as a process (home lock, open-file limit, allocator, event loop).

The home's node lock comes first, before anything binds a port, opens the registry or
joins the DHT: a second `vx6 run` on a home whose node is running must change nothing.
The node runs under one TaskGroup, which wraps whatever ends it in an ExceptionGroup; an
expected failure (a VX6Error: port in use, bad config, unusable home) is unwrapped here
so the command line prints it as one line, and the start-up log held until then
(`vx6.app.startlog`) is dropped but for its warnings. Anything else keeps its traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from vx6.app.host import raise_fd_limit, tune_allocator
from vx6.app.parent import exit_with_parent
from vx6.app.startlog import StartupLog
from vx6.errors import VX6Error
from vx6.net import eventloop
from vx6.node.wiring import Node
from vx6.store.config import NodeConfig
from vx6.store.home import Home


def run_node(home: Path | None, cli: NodeConfig, startlog: StartupLog | None = None) -> int:
    started = startlog.started if startlog else (lambda: None)
    failed = startlog.failed if startlog else (lambda: None)
    try:
        the_home = Home(home)
        with the_home.lock():
            exit_with_parent()
            tune_allocator()
            raise_fd_limit()
            node = Node(the_home, cli)
            try:
                eventloop.run(_until_stopped(node, started))  # uvloop when installed
            except BaseExceptionGroup as group:
                expected = expected_error(group)
                if expected is None:
                    raise
                raise expected from None
    except VX6Error:
        failed()
        raise
    finally:
        started()  # stopped, or an unexpected failure: every line held goes out
    return 0


async def _until_stopped(node: Node, on_ready: Callable[[], None]) -> None:
    ready = asyncio.Event()

    async def report_ready() -> None:
        await ready.wait()
        on_ready()

    reporter = asyncio.ensure_future(report_ready())
    try:
        await node.run(ready)
    finally:
        reporter.cancel()


def expected_error(group: BaseExceptionGroup[BaseException]) -> VX6Error | None:
    """The first VX6Error in `group` if every error in it (nested groups flattened) is
    one; None if any is not, so an unexpected failure keeps its whole traceback."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    if leaves and all(isinstance(exc, VX6Error) for exc in leaves):
        first = leaves[0]
        assert isinstance(first, VX6Error)
        return first
    return None
