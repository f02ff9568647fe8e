"""Running the `vx6` command as a user would: a subprocess on a given home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_vx6(home: Path, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`python -m vx6 --home HOME ARGV...`, with this interpreter and import path; its
    exit code and output, whatever they are (the tests assert them)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "vx6", "--home", str(home), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
