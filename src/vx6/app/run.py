"""`vx6 run`: the node as a process (open-file limit, allocator, event loop)."""

from __future__ import annotations

from pathlib import Path

from vx6.app.host import raise_fd_limit, tune_allocator
from vx6.app.parent import exit_with_parent
from vx6.net import eventloop
from vx6.node.wiring import Node
from vx6.store.config import NodeConfig
from vx6.store.home import Home


def run_node(home: Path | None, cli: NodeConfig) -> int:
    exit_with_parent()
    tune_allocator()
    raise_fd_limit()
    node = Node(Home(home), cli)
    eventloop.run(node.run())  # uvloop when installed; VX6_EVENT_LOOP=asyncio forces stdlib
    return 0
