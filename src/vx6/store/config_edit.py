"""Editing config.toml's `[hidden.NAME]` tables for `vx6 hidden create/remove`, leaving
every other byte of the file as the user wrote it.

Python reads TOML but does not write it, so the edit is textual: the table's lines run
from its `[hidden.NAME]` header to the next header, less the comments and blank lines
just before that header (they describe what follows). A new table is appended at the
end. The result is then parsed and compared with what the edit meant (the old file's
data with that one table set or gone); anything else, such as a hidden service written
as a dotted key or an inline table, refuses the edit with a message asking for a hand
edit, and the file is not touched.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from vx6.errors import UsageError
from vx6.store.hidden_config import HiddenServiceConfig, render_hidden_table

_HEADER = re.compile(r'\s*\[\s*hidden\s*\.\s*(?:"([^"]*)"|([A-Za-z0-9_-]+))\s*\]\s*(?:#.*)?')
_ANY_HEADER = re.compile(r"\s*\[")
_KEEP = re.compile(r"\s*(?:#.*)?")  # a blank or comment line


def _parse(text: str, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{what}: {exc}") from exc


def _cut(lines: list[str], name: str) -> list[str]:
    """`lines` without the `[hidden.NAME]` table (unchanged if there is none)."""
    start = None
    for i, line in enumerate(lines):
        match = _HEADER.fullmatch(line.rstrip("\n"))
        if match and (match.group(1) or match.group(2) or "").lower() == name:
            start = i
            break
    if start is None:
        return lines
    end = start + 1
    while end < len(lines) and not _ANY_HEADER.match(lines[end]):
        end += 1
    while end > start + 1 and end < len(lines) and _KEEP.fullmatch(lines[end - 1].rstrip("\n")):
        end -= 1  # the next table's own comments stay with it
    while start > 0 and not lines[start - 1].strip():
        start -= 1  # the blank lines that set the table apart go with it
    return lines[:start] + lines[end:]


def _without_empty_hidden(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "hidden" or v}


def _checked(new_text: str, expected: dict[str, Any], name: str, path: str) -> str:
    try:
        got: dict[str, Any] | None = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        got = None
    if got is None or _without_empty_hidden(got) != _without_empty_hidden(expected):
        raise UsageError(
            f"{path} declares hidden.{name} in a form vx6 cannot edit (a dotted key or an "
            "inline table?): edit that file by hand"
        )
    return new_text


def with_hidden_table(text: str, svc: HiddenServiceConfig, path: str = "config.toml") -> str:
    """`text` with the `[hidden.NAME]` table for `svc` in place of any earlier one."""
    old = _parse(text, path)
    expected = {**old, "hidden": {**old.get("hidden", {})}}
    expected["hidden"].pop(svc.name, None)
    expected["hidden"][svc.name] = tomllib.loads(render_hidden_table(svc))["hidden"][svc.name]
    kept = "".join(_cut(text.splitlines(keepends=True), svc.name)).rstrip("\n")
    new_text = (kept + "\n\n" if kept else "") + render_hidden_table(svc)
    return _checked(new_text, expected, svc.name, path)


def without_hidden_table(text: str, name: str, path: str = "config.toml") -> str | None:
    """`text` without the `[hidden.NAME]` table; None if it has none."""
    old = _parse(text, path)
    if name not in old.get("hidden", {}):
        return None
    expected = {**old, "hidden": {k: v for k, v in old["hidden"].items() if k != name}}
    new_text = "".join(_cut(text.splitlines(keepends=True), name))
    return _checked(new_text, expected, name, path)
