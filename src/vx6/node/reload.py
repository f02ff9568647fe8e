"""Reloading config.toml while the node runs (SIGHUP, `vx6 reload`, `systemctl reload`).

Theory of operation. `diff_config(old, new)` is a pure function: which configured
services and forwards were added, removed or changed between two effective configs (the
file with the command line's flags applied, as at start), and which other settings
differ. `Reloader.reload` reads the file again, applies the command line's flags again
(a flag still wins over the file), diffs against the configuration the node runs and
applies only the difference:

* services: an added or changed one is set (a changed target applies to new streams;
  streams already open keep their target connection), a removed one is dropped and its
  record withdrawn (or, if `vx6 expose` had stored one of that name, that one comes
  back, as after a restart). Like sshd on reload, live streams of a removed service are
  not cut: they run until they end.
* forwards: an added one starts; a removed one stops listening, and its live
  connections go on until they end (closed at node shutdown like any other); a changed
  one is removed that way and started again with its new settings.
* hidden services (`[hidden.NAME]`): the diff is reported ("hidden services +web") and
  kept as the running configuration; the role that acts on it comes with the service
  side (docs/hidden.md, "CLI and config").
* every other setting (listen, peers, name, relay, limits...) is only read at start: a
  change is logged as needing a restart and the running value is kept.

A file that cannot be read or is invalid changes nothing: one log line names the
problem and the running configuration stays. Unchanged entries are never touched, so
their listeners and live connections carry on. The diff is file against file: a forward
removed with `vx6 disconnect`, or a service changed with `vx6 expose`, is left as it is
unless the file's entry for it changes. Reloads run one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from vx6.errors import UsageError
from vx6.store.config import ForwardConfig, NodeConfig, ServiceConfig, load_config
from vx6.store.hidden_config import HiddenServiceConfig

log = logging.getLogger("vx6.reload")

# What a reload applies; every other NodeConfig field is read once, at start.
RUNTIME_FIELDS = frozenset({"services", "forwards", "hidden"})
RESTART_FIELDS = tuple(
    f.name for f in dataclasses.fields(NodeConfig) if f.name not in RUNTIME_FIELDS
)

V = TypeVar("V")


@dataclass(frozen=True)
class TableDiff:
    """Names added, removed and changed between two tables (each sorted)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def summary(self) -> str:
        """`+web -old ~ssh`."""
        marks = [("+", self.added), ("-", self.removed), ("~", self.changed)]
        return " ".join(mark + name for mark, names in marks for name in names)


@dataclass(frozen=True)
class ConfigDiff:
    services: TableDiff = TableDiff()
    forwards: TableDiff = TableDiff()
    hidden: TableDiff = TableDiff()
    restart_needed: tuple[str, ...] = ()  # settings that differ but apply only at start

    def summary(self) -> str:
        """`services +web -old ~ssh; forwards +db; hidden services +blog`, or `no changes`."""
        tables = (
            ("services", self.services),
            ("forwards", self.forwards),
            ("hidden services", self.hidden),
        )
        parts = [f"{what} {table.summary()}" for what, table in tables if table]
        return "; ".join(parts) or "no changes"

    def as_dict(self) -> dict[str, object]:
        return {
            "changes": self.summary(),
            "services": dataclasses.asdict(self.services),
            "forwards": dataclasses.asdict(self.forwards),
            "hidden": dataclasses.asdict(self.hidden),
            "restart_needed": list(self.restart_needed),
        }


def diff_table(old: Mapping[str, V], new: Mapping[str, V]) -> TableDiff:
    return TableDiff(
        added=tuple(sorted(new.keys() - old.keys())),
        removed=tuple(sorted(old.keys() - new.keys())),
        changed=tuple(sorted(k for k in old.keys() & new.keys() if old[k] != new[k])),
    )


def diff_config(old: NodeConfig, new: NodeConfig) -> ConfigDiff:
    return ConfigDiff(
        services=diff_table(old.services, new.services),
        forwards=diff_table(old.forwards, new.forwards),
        hidden=diff_table(old.hidden, new.hidden),
        restart_needed=tuple(f for f in RESTART_FIELDS if getattr(old, f) != getattr(new, f)),
    )


def running_after(old: NodeConfig, new: NodeConfig) -> NodeConfig:
    """What the node runs after a reload: the new services, forwards and hidden services,
    the rest as it was at start."""
    return dataclasses.replace(
        old, services=dict(new.services), forwards=dict(new.forwards), hidden=dict(new.hidden)
    )


class ConfiguredServices(Protocol):
    """The owner side, for services declared in the file."""

    def configure(self, svc: ServiceConfig) -> None: ...

    def unconfigure(self, name: str) -> None: ...


class ConfiguredForwards(Protocol):
    """The client side, for forwards declared in the file."""

    async def start_config_forwards(self, forwards: Iterable[ForwardConfig]) -> None: ...

    async def retire(self, name: str) -> bool: ...


class ConfiguredHidden(Protocol):
    """The hidden services the node runs (node/hidden.py)."""

    def configure(self, cfg: HiddenServiceConfig) -> None: ...

    def unconfigure(self, name: str) -> None: ...


class Reloader:
    def __init__(
        self,
        path: Path,
        flags: NodeConfig,
        running: NodeConfig,
        *,
        services: ConfiguredServices,
        forwards: ConfiguredForwards,
        hidden: ConfiguredHidden | None = None,
        logger: logging.Logger = log,
    ) -> None:
        self.path = path
        self.flags = flags  # the command line's, applied again on every reload
        self.running = running
        self.services = services
        self.forwards = forwards
        self.hidden = hidden
        self.log = logger
        self._lock = asyncio.Lock()

    async def reload(self) -> ConfigDiff:
        """Apply the file's changes; raise UsageError (after logging it) if it is refused."""
        async with self._lock:
            try:
                new = load_config(self.path).with_flags(self.flags)
            # ValueError, TypeError: a value of a type load_config does not check yet.
            except (UsageError, OSError, ValueError, TypeError) as exc:
                reason = " ".join(str(exc).split())  # one line, whatever the parser said
                self.log.warning(
                    "%s not reloaded (running configuration kept): %s", self.path.name, reason
                )
                raise UsageError(f"{self.path.name} not reloaded: {reason}") from exc
            diff = diff_config(self.running, new)
            await self._apply(diff, new)
            self.running = running_after(self.running, new)
            self.log.info("reloaded %s: %s", self.path.name, diff.summary())
            if diff.restart_needed:
                self.log.warning(
                    "%s: %s changed; that takes a restart (running values kept)",
                    self.path.name,
                    ", ".join(diff.restart_needed),
                )
            return diff

    async def hangup(self) -> None:
        """SIGHUP: reload; a refusal is already logged, and the node goes on."""
        with contextlib.suppress(UsageError):
            await self.reload()

    async def report(self) -> dict[str, object]:
        """The `reload` control op: the diff applied (a refusal raises UsageError)."""
        return (await self.reload()).as_dict()

    async def _apply(self, diff: ConfigDiff, new: NodeConfig) -> None:
        for name in diff.services.removed:
            self.services.unconfigure(name)
        for name in diff.services.added + diff.services.changed:
            self.services.configure(new.services[name])
        replaced = diff.forwards.changed
        for name in diff.forwards.removed + replaced:
            await self.forwards.retire(name)
        started = sorted(diff.forwards.added + replaced)
        await self.forwards.start_config_forwards(new.forwards[name] for name in started)
        if self.hidden is not None:
            for name in diff.hidden.removed:
                self.hidden.unconfigure(name)
            for name in diff.hidden.added + diff.hidden.changed:
                self.hidden.configure(new.hidden[name])
