"""Test modules share code only through the test kit (tests/kit/): a test module that
imports another test module runs that module's tests' setup at import time, ties two
test files together and breaks when either moves, so none may."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def imported_test_modules(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [n for n in names if n.split(".")[-1].startswith("test_")]
    return found


def test_no_test_module_imports_another_test_module() -> None:
    offenders = {
        str(path.relative_to(TESTS)): names
        for path in sorted(TESTS.rglob("test_*.py"))
        if (names := imported_test_modules(path))
    }
    assert offenders == {}, "import shared code from tests/kit/ instead"


def test_the_rule_sees_an_import_of_a_test_module(tmp_path: Path) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text("import os\nfrom test_link_core import Net\nimport kit.test_x as x\n")
    assert imported_test_modules(probe) == ["test_link_core", "kit.test_x"]
