"""Hidden services in config.toml: the `[hidden.NAME]` tables (docs/hidden.md, "CLI and
config").

    [hidden.web]
    target = "127.0.0.1:8080"      # loopback only, unless allow_remote_target = true
    # profile = "fast"             # or "balanced" (longer paths, docs/hidden.md 6)
    allow = ["bob", "k3c...q"]     # node names or keys, at most 12; or:
    # public = true                # anyone with the alias (not with allow)
    # intro_rate = 25              # introductions per second per intro, 1..100
    # intro_burst = 200            # 1..500

`vx6 hidden create` validates its flags with the same function, so the file and the
command line refuse the same things with the same reasons; a file's errors name the
file, the table and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vx6.core.hidden.target import (
    DEFAULT_PROFILE,
    INTRO_BURST,
    INTRO_BURST_RANGE,
    INTRO_RATE,
    INTRO_RATE_RANGE,
    MAX_DESCRIPTOR_CLIENTS,
    PROFILES,
)
from vx6.core.names import validate_allow_entry, validate_label
from vx6.errors import UsageError
from vx6.net.addresses import is_loopback, parse_endpoint

KNOWN_KEYS = frozenset(
    {"target", "profile", "allow", "public", "allow_remote_target", "intro_rate", "intro_burst"}
)


@dataclass(frozen=True)
class HiddenServiceConfig:
    name: str
    target_host: str
    target_port: int
    profile: str = DEFAULT_PROFILE
    allow: tuple[str, ...] = ()
    public: bool = False
    allow_remote_target: bool = False
    intro_rate: int = INTRO_RATE
    intro_burst: int = INTRO_BURST

    @property
    def target(self) -> str:
        host = f"[{self.target_host}]" if ":" in self.target_host else self.target_host
        return f"{host}:{self.target_port}"


class _Where:
    """Names a setting in an error: `config PATH: hidden.web.allow` for the file,
    `--allow` for the command line."""

    def __init__(self, name: str, source: Path | None) -> None:
        self.name = name
        self.source = source

    def __call__(self, key: str) -> str:
        if self.source is None:
            return "--" + key.replace("_", "-")
        return f"config {self.source}: hidden.{self.name}.{key}"

    def remote_hint(self) -> str:
        return "set allow_remote_target = true" if self.source else "pass --allow-remote-target"


def _ranged(value: int, key: str, bounds: tuple[int, int], where: _Where) -> int:
    low, high = bounds
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(f"{where(key)} must be an integer from {low} to {high}, not {value!r}")
    return value


def hidden_service_config(
    name: str,
    target: str,
    *,
    profile: str = DEFAULT_PROFILE,
    allow: list[str] | tuple[str, ...] = (),
    public: bool = False,
    allow_remote_target: bool = False,
    intro_rate: int = INTRO_RATE,
    intro_burst: int = INTRO_BURST,
    source: Path | None = None,
) -> HiddenServiceConfig:
    """Validate one hidden service (for the file when `source` names it, else for the
    command line's flags)."""
    where = _Where(name, source)
    what = f"config {source}: hidden service name" if source else "hidden service name"
    label = validate_label(name, what)
    try:
        host, port = parse_endpoint(target)
    except ValueError as exc:
        raise UsageError(f"{where('target')}: {exc}") from exc
    if port == 0:
        raise UsageError(f"{where('target')}: the port must be 1-65535")
    if not is_loopback(host) and not allow_remote_target:
        raise UsageError(
            f"{where('target')} {target} is not a loopback address; "
            f"{where.remote_hint()} to permit it"
        )
    if profile not in PROFILES:
        raise UsageError(
            f"{where('profile')} must be one of {', '.join(PROFILES)}, not {profile!r}"
        )
    try:
        entries = tuple(dict.fromkeys(validate_allow_entry(entry) for entry in allow))
    except UsageError as exc:
        raise UsageError(f"{where('allow')}: {exc}") from exc
    if len(entries) > MAX_DESCRIPTOR_CLIENTS:
        raise UsageError(
            f"{where('allow')} lists {len(entries)} clients; at most {MAX_DESCRIPTOR_CLIENTS} "
            "(MAX_DESCRIPTOR_CLIENTS) fit one descriptor"
        )
    if public and entries:
        raise UsageError(
            f"{where('public')}: a public hidden service has no allow list "
            "(a descriptor is either open to every holder of the alias or to listed keys)"
        )
    return HiddenServiceConfig(
        label,
        host,
        port,
        profile,
        entries,
        public,
        allow_remote_target,
        _ranged(intro_rate, "intro_rate", INTRO_RATE_RANGE, where),
        _ranged(intro_burst, "intro_burst", INTRO_BURST_RANGE, where),
    )


def _typed(table: dict[str, Any], key: str, kind: type, default: Any, where: _Where) -> Any:
    value = table.get(key, default)
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        shape = {str: "a string", bool: "true or false", int: "an integer"}.get(
            kind, "a list of strings"
        )
        raise UsageError(f"{where(key)} must be {shape}")
    return value


def parse_hidden_tables(value: Any, source: Path) -> dict[str, HiddenServiceConfig]:
    """The file's `hidden` table: one `[hidden.NAME]` table per hidden service."""
    if not isinstance(value, dict):
        raise UsageError(f"config {source}: hidden must be a table of [hidden.NAME] tables")
    services: dict[str, HiddenServiceConfig] = {}
    for name, table in value.items():
        where = _Where(name, source)
        if not isinstance(table, dict):
            raise UsageError(f"config {source}: hidden.{name} must be a table")
        unknown = sorted(set(table) - KNOWN_KEYS)
        if unknown:
            raise UsageError(f"config {source}: hidden.{name}: unknown key {unknown[0]!r}")
        if "target" not in table:
            raise UsageError(f"config {source}: hidden.{name} needs a target (HOST:PORT)")
        svc = hidden_service_config(
            name,
            _typed(table, "target", str, None, where),
            profile=_typed(table, "profile", str, DEFAULT_PROFILE, where),
            allow=_typed(table, "allow", list, [], where),
            public=_typed(table, "public", bool, False, where),
            allow_remote_target=_typed(table, "allow_remote_target", bool, False, where),
            intro_rate=_typed(table, "intro_rate", int, INTRO_RATE, where),
            intro_burst=_typed(table, "intro_burst", int, INTRO_BURST, where),
            source=source,
        )
        if svc.name in services:  # two spellings of one name (case)
            raise UsageError(f"config {source}: hidden.{name} is declared twice")
        services[svc.name] = svc
    return services


def render_hidden_table(svc: HiddenServiceConfig) -> str:
    """The `[hidden.NAME]` table `vx6 hidden create` writes (defaults left out)."""
    lines = [f"[hidden.{svc.name}]", f'target = "{svc.target}"']
    if svc.profile != DEFAULT_PROFILE:
        lines.append(f'profile = "{svc.profile}"')
    if svc.allow:
        lines.append("allow = [" + ", ".join(f'"{entry}"' for entry in svc.allow) + "]")
    if svc.public:
        lines.append("public = true")
    if svc.allow_remote_target:
        lines.append("allow_remote_target = true")
    if svc.intro_rate != INTRO_RATE:
        lines.append(f"intro_rate = {svc.intro_rate}")
    if svc.intro_burst != INTRO_BURST:
        lines.append(f"intro_burst = {svc.intro_burst}")
    return "\n".join(lines) + "\n"
