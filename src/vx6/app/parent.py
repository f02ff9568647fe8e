"""Exit with the supervisor: a node started by `LocalNet` (tests, `vx6 demo`, benchmarks)
must not outlive it, even when the supervisor is killed with SIGKILL and runs no cleanup.

The supervisor puts its pid in EXIT_WITH_PARENT_ENV. The node asks the kernel for SIGTERM
when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`), which the node handles as a
normal stop. It then checks that its parent is still that pid: a supervisor that died
before the request took effect would otherwise go unnoticed. The kernel ties the request
to the parent *thread*, so a supervisor sets the variable only from its main thread.
Elsewhere than Linux the request is skipped: the supervisor's own cleanup still applies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

EXIT_WITH_PARENT_ENV = "VX6_EXIT_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """Honour EXIT_WITH_PARENT_ENV if it is set; return normally if the parent lives."""
    wanted = os.environ.get(EXIT_WITH_PARENT_ENV, "")
    if not wanted.isdigit() or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(wanted):
        raise SystemExit(f"vx6: the process that started this node ({wanted}) is gone")
