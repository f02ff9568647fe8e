"""The layers of DESIGN.md section 2 import only downwards, and the cores do no I/O.

wire < crypto < core < net < (store, config, home, ...) < daemon < cli. Only crypto/ may
import the crypto library; wire/, crypto/ and core/ may not touch sockets, asyncio, the
clock or the OS's randomness (those come in as arguments).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "vx6"
RANK = {"errors": 0, "wire": 1, "crypto": 2, "core": 3, "net": 4}
TOP = 5  # everything else: store, config, home, daemon, cli, demo, ...
SANS_IO = {"wire", "crypto", "core"}
FORBIDDEN_IN_CORES = {
    "socket",
    "asyncio",
    "selectors",
    "time",
    "random",
    "secrets",
    "threading",
    "subprocess",
    "sqlite3",
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _rank(layer: str) -> int:
    return RANK.get(layer, TOP)


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        out.append((".".join(rel.parts), path))
    return out


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_imports_point_down(module: str, path: Path) -> None:
    layer = _layer(module)
    for target, line in _imports(path):
        if target.startswith("vx6."):
            target_layer = _layer(target)
            assert _rank(target_layer) <= _rank(layer), (
                f"{module}:{line} imports {target}: layer {layer or 'top'} may not import "
                f"from {target_layer}"
            )
            if layer in SANS_IO or layer == "errors":
                assert _rank(target_layer) < TOP, f"{module}:{line} imports upward {target}"
        root = target.split(".")[0]
        if root == "cryptography":
            assert layer == "crypto", f"{module}:{line}: only vx6.crypto imports cryptography"
        if layer in SANS_IO:
            assert root not in FORBIDDEN_IN_CORES, (
                f"{module}:{line} imports {target}: sans-IO layers take bytes, now and "
                "randomness as arguments"
            )


def test_cores_never_call_urandom() -> None:
    for module, path in _modules():
        if _layer(module) in SANS_IO:
            assert "urandom" not in path.read_text(), f"{module} draws its own randomness"


def test_every_module_is_checked() -> None:
    layers = {_layer(m) for m, _ in _modules()}
    assert layers >= SANS_IO
