"""Imported first by every benchmark script: makes `vx6` importable from a bare
checkout (no `pip install -e .`), for this process and the node processes it starts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    import vx6  # noqa: F401
except ImportError:
    _SRC = str(Path(__file__).resolve().parent.parent / "src")
    sys.path.insert(0, _SRC)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_SRC, os.environ.get("PYTHONPATH")]))
