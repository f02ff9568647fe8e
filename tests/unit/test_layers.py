"""The layers of DESIGN.md section 2 import only downwards, and the cores do no I/O.

Ranks, lowest first (a package may import its own modules and any package of a lower
rank, never one of its own rank or above):

    errors, the vx6 package itself  0
    wire                            1
    crypto                          2
    core                            3
    net, sim                        4   (adapters; the DHT simulator: neither sees the other)
    store                           5   (registry, home, config)
    node                            6   (the roles and their wiring)
    app                             7   (the programs: cli, run, demo, localnet)
    __main__                        8

Every import is absolute, no module imports itself back through any chain (TYPE_CHECKING
imports included), only crypto/ imports the crypto libraries, and wire/, crypto/ and
core/ touch no sockets, asyncio, clock, OS or randomness (those come in as arguments).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "vx6"
RANK = {
    "": 0,  # vx6/__init__.py: the version
    "errors": 0,
    "wire": 1,
    "crypto": 2,
    "core": 3,
    "net": 4,
    "sim": 4,
    "store": 5,
    "node": 6,
    "app": 7,
    "__main__": 8,
}
SANS_IO = {"wire", "crypto", "core"}
CRYPTO_LIBRARIES = {"cryptography", "nacl"}
FORBIDDEN_IN_CORES = {
    "os",
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


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts
        out.append((".".join(parts), path))
    return out


MODULES = dict(_modules())


def _imports(path: Path) -> list[tuple[str, int, int]]:
    """(module, line, level) of every import, wherever it is (TYPE_CHECKING blocks and
    function bodies included). `from vx6.x import y` where y is a module counts as an
    import of y alone."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            found += [(module, node.lineno, node.level) for module in submodules]
            if len(submodules) < len(node.names):  # names from the module itself
                found.append((base, node.lineno, node.level))
    return found


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_imports_point_down(module: str, path: Path) -> None:
    layer = _layer(module)
    assert layer in RANK, f"{module}: not in a known layer; add its package to RANK"
    for target, line, level in _imports(path):
        assert level == 0, f"{module}:{line}: relative import; write it absolute"
        if target == "vx6" or target.startswith("vx6."):
            target_layer = _layer(target)
            assert target_layer in RANK, f"{module}:{line} imports unknown layer {target}"
            assert target_layer == layer or RANK[target_layer] < RANK[layer], (
                f"{module}:{line} imports {target}: layer {layer or 'vx6'} (rank "
                f"{RANK[layer]}) may import only lower ranks, not {target_layer} "
                f"(rank {RANK[target_layer]})"
            )
        root = target.split(".")[0]
        if root in CRYPTO_LIBRARIES:
            assert layer == "crypto", f"{module}:{line}: only vx6.crypto imports {root}"
        if layer in SANS_IO:
            assert root not in FORBIDDEN_IN_CORES, (
                f"{module}:{line} imports {target}: sans-IO layers take bytes, now and "
                "randomness as arguments"
            )


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        graph[module] = {
            target for target, _, _ in _imports(path) if target in MODULES and target != module
        }
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, if there is any (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_no_import_cycles() -> None:
    # A package's __init__ importing its own modules is not a cycle worth the name, but
    # ours import nothing, so every edge counts.
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_cores_never_call_urandom() -> None:
    for module, path in _modules():
        if _layer(module) in SANS_IO:
            assert "urandom" not in path.read_text(), f"{module} draws its own randomness"


def test_no_role_is_handed_the_node() -> None:
    """The roles get narrow collaborators: nothing below the wiring imports it."""
    for module, path in _modules():
        if module in ("vx6.node.wiring", "vx6.app.run") or _layer(module) == "app":
            continue
        for target, line, _ in _imports(path):
            assert target != "vx6.node.wiring", f"{module}:{line} imports the wiring"


def test_every_module_is_checked() -> None:
    layers = {_layer(m) for m in MODULES}
    assert layers >= SANS_IO | {"net", "store", "node", "app"}
    assert layers <= set(RANK), layers - set(RANK)
