"""LocalNet's nodes do not outlive the process that started them, even when it is
SIGKILLed and runs no cleanup (vx6/parent.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vx6.app.localnet import wait_for
from vx6.app.parent import EXIT_WITH_PARENT_ENV

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

# A supervisor that starts one node, prints its pid and the node's, then waits forever.
SUPERVISOR = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from vx6.app.localnet import LocalNet
    net = LocalNet(Path(sys.argv[1]))
    node = net.start("orphan")
    print(node.process.pid, flush=True)
    threading.Event().wait()
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too; it only waits for its (new) parent to reap it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False  # reaped since the kill() above
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_nodes_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path)], stdout=subprocess.PIPE
    )
    node_pid = 0
    try:
        assert supervisor.stdout is not None
        node_pid = int(supervisor.stdout.readline())
        assert _alive(node_pid)
        supervisor.kill()  # SIGKILL: no cleanup of its own runs
        supervisor.wait(10)
        wait_for(lambda: not _alive(node_pid), 15.0, "the orphaned node to stop")
        log = (tmp_path / "orphan.log").read_text()
        assert "stopping" in log and "stopped" in log, log  # SIGTERM: an orderly stop
    finally:
        supervisor.kill()
        if node_pid and _alive(node_pid):
            os.killpg(node_pid, signal.SIGKILL)


def test_node_started_for_a_supervisor_that_is_gone_does_not_run(tmp_path: Path) -> None:
    env = {**os.environ, EXIT_WITH_PARENT_ENV: "1"}  # init, not the parent of this node
    result = subprocess.run(
        [sys.executable, "-m", "vx6", "--home", str(tmp_path), "run", "--listen", "[::1]:0"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert b"the process that started this node (1) is gone" in result.stderr
