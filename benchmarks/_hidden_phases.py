"""The one-off steps of bench_hidden.py: first connections, publication and recovery.

Theory of operation. These measure what a stream over a live joined path does not
repeat. `first_connections`: bob's joined paths to the echo alias are closed through the
`hidden` op's `close_paths` (the descriptor stays cached), then one new connection to
each profile's forward is timed: it makes a new rendezvous. `cold_connections`: a fresh
client node per sample (no descriptor, no links, no paths) learns the relays, then its
`connect` (descriptor lookup and every build) and its first connection are timed.
`create_to_reachable`: `vx6 hidden create` plus a reload at alice, then bob tries to
connect until he can. `intro_recovery`: one of the echo service's active intro relays
is killed; timed are bob's first new rendezvous after it (his cached descriptor still
names the dead intro) and alice's new descriptor revision without it. The client's own
per-step times come with each first connection (`setup_ms`).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import _load
from _hidden_net import (
    PROFILES,
    RELAYS,
    SETUP_TIMEOUT,
    active_intro_relays,
    create_hidden,
    hidden_of,
    log,
    path_setup_ms,
    remove_hidden,
)
from _report import Row, percentile

from vx6.app.localnet import LocalNet, LocalNode, relays_known, wait_for

STEPS = (
    "lookup",
    "rendezvous_build",
    "establish",
    "intro_build",
    "introduction",
    "rendezvous",
    "total",
    "connect",
)
CACHED_TARGET = 50.0  # ms p50, fast
COLD_TARGET = 150.0  # ms p50, fast
REACHABLE_TARGET = 5.0  # s p50
RECOVERY_TARGET = 10.0  # s
RETRY_PAUSE = 0.1


class HiddenPhases:
    def __init__(
        self,
        args: argparse.Namespace,
        net: LocalNet,
        paths: dict[str, dict[str, _load.Addr]],
        aliases: dict[tuple[str, str], str],
        nodes: tuple[LocalNode, LocalNode],
        relays: dict[str, LocalNode],
        pids: dict[str, int],
    ) -> None:
        self.args = args
        self.net = net
        self.paths = paths
        self.aliases = aliases
        self.alice, self.bob = nodes
        self.relays = relays
        self.pids = pids
        self.rows: list[Row] = []
        self.details: dict[str, Any] = {}
        self.errors: list[str] = []

    def attempt(self, what: str, fn: Any, *args: Any) -> Any:
        """Run one measurement; a failure is listed and the run goes on without it."""
        try:
            return fn(*args)
        except Exception as exc:
            self.errors.append(f"{what}: {exc!r}")
            log(f"  FAILED {what}: {exc!r}")
            return None

    def _ms_rows(self, label: str, samples: list[float], target: float | None) -> None:
        for p in (50, 99):
            value = percentile(samples, p) if samples else None
            wanted = ("<=", target) if target is not None and p == 50 else None
            self.rows.append(Row(f"{label} p{p}", "ms", None, value, wanted, True))

    def _step_rows(self, label: str, setups: list[dict[str, float]]) -> None:
        """The p50 of each step the client timed (ms), as rows and in the details."""
        self.details[f"{label} steps ms"] = setups
        for step in STEPS:
            values = [s[f"{step}_ms"] for s in setups if f"{step}_ms" in s]
            value = percentile(values, 50) if values else None
            self.rows.append(Row(f"{label} step p50: {step}", "ms", None, value, None, True))

    # ------------------------------------------------------------------ first connections
    def first_connections(self) -> None:
        for label, profile in PROFILES.items():
            alias = self.aliases["echo", profile]
            log(f"first connections, descriptor cached: {label} x{self.args.first}")
            addr = self.paths[label]["echo"]
            samples: list[float] = []
            setups: list[dict[str, float]] = []
            for _ in range(self.args.first):
                self.bob.call("hidden", close_paths=alias)
                got = self.attempt(f"first connection ({label})", _load.new_connections, addr, 1, 0)
                if got:
                    samples.append(got[0] / 1e6)
                    setups.append(path_setup_ms(self.bob, f"echo-{profile}", profile))
            target = CACHED_TARGET if label.endswith("fast") else None
            self._ms_rows(f"first connection, descriptor cached, {label}", samples, target)
            self._step_rows(f"first connection, descriptor cached, {label}", setups)

    # ------------------------------------------------------------------ cold connections
    def cold_connections(self) -> None:
        alias = self.aliases["echo", "fast"]
        hub = self.relays["hub"]
        samples: list[float] = []
        connect_ms: list[float] = []
        setups: list[dict[str, float]] = []
        for i in range(self.args.cold):
            log(f"cold first connection {i + 1}/{self.args.cold}: a fresh client node")
            name = f"cold{i}"
            node = self.net.start(name, peers=(hub.listen,))
            try:
                wait_for(lambda n=node: relays_known(n, RELAYS), SETUP_TIMEOUT, "relays")
                started = time.perf_counter()
                reply = node.call(
                    "connect", timeout=SETUP_TIMEOUT, service=alias, name="echo", local="0"
                )
                connected = (time.perf_counter() - started) * 1e3
                host, port = reply["forward"]["local"].rsplit(":", 1)
                first = _load.new_connections((host, int(port)), 1, 0)[0] / 1e6
                samples.append(connected + first)
                connect_ms.append(connected)
                setups.append(path_setup_ms(node, "echo", "fast"))
            except Exception as exc:
                self.errors.append(f"cold first connection: {exc!r}")
                log(f"  FAILED cold first connection: {exc!r}\n{node.log_text()[-1500:]}")
            finally:
                self.net.stop(name)
        self._ms_rows("cold first connection, hidden fast", samples, COLD_TARGET)
        self._step_rows("cold first connection, hidden fast", setups)
        self.details["cold connect op ms"] = connect_ms

    # ------------------------------------------------------------------ publication
    def create_to_reachable(self, target: _load.Addr) -> None:
        seconds: list[float] = []
        service_side: list[float | None] = []
        tries: list[int] = []
        for i in range(self.args.creates):
            name = f"new{i}"
            log(f"`vx6 hidden create` to reachable by bob {i + 1}/{self.args.creates}")
            started = time.monotonic()
            try:
                alias = create_hidden(self.alice, name, target)
                own: float | None = None
                count = 0
                deadline = started + SETUP_TIMEOUT
                while True:
                    count += 1
                    if own is None and (hidden_of(self.alice, name) or {}).get("reachable"):
                        own = time.monotonic() - started
                    reply = self.bob.try_call("connect", service=alias, name=name, local="0")
                    if reply.get("ok"):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"bob could not connect: {reply.get('error')}")
                    time.sleep(RETRY_PAUSE)
                seconds.append(time.monotonic() - started)
                service_side.append(own)
                tries.append(count)
                self.bob.call("disconnect", name=name)
                self.bob.call("hidden", close_paths=alias)
            except Exception as exc:
                self.errors.append(f"create to reachable: {exc!r}")
                log(f"  FAILED create to reachable: {exc!r}")
            finally:
                remove_hidden(self.alice, name)
        for p in (50, 99):
            value = percentile(seconds, p) if seconds else None
            wanted = ("<=", REACHABLE_TARGET) if p == 50 else None
            metric = f"`hidden create` to reachable by a third party p{p}"
            self.rows.append(Row(metric, "s", None, value, wanted, True))
        self.details["create to reachable"] = {
            "seconds": seconds,
            "service_saw_itself_reachable_s": service_side,
            "bob_connect_tries": tries,
        }

    # ------------------------------------------------------------------ recovery
    def intro_recovery(self) -> None:
        alias, service = self.aliases["echo", "fast"], "hs-echo-fast"
        before = hidden_of(self.alice, service) or {}
        intros = active_intro_relays(self.alice, service)
        by_key = {r.key: name for name, r in self.relays.items() if name != "hub"}
        victim = next((by_key[k] for k in intros if k in by_key), None)
        if victim is None:
            self.errors.append(f"intro recovery: no intro to kill among {intros}")
            return
        log(f"intro recovery: killing {victim}, an active intro of {service}")
        victim_key = self.relays[victim].key
        self.net.kill(victim)
        started = time.monotonic()
        client_s = service_s = None
        try:
            self.bob.call("hidden", close_paths=alias)
            addr = self.paths["hidden fast"]["echo"]
            deadline = started + SETUP_TIMEOUT
            while client_s is None:
                try:
                    _load.new_connections(addr, 1, 0)
                    client_s = time.monotonic() - started
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(RETRY_PAUSE)

            def republished() -> bool:
                now = hidden_of(self.alice, service) or {}
                active = active_intro_relays(self.alice, service)
                return (
                    int(now.get("revision", 0)) > int(before.get("revision", 0))
                    and victim_key not in active
                    and len(active) >= len(intros)
                )

            wait_for(republished, SETUP_TIMEOUT, "a new descriptor without the dead intro", 0.05)
            service_s = time.monotonic() - started
        except Exception as exc:
            self.errors.append(f"intro recovery: {exc!r}")
            log(f"  FAILED intro recovery: {exc!r}")
        self.rows.append(
            Row(
                "intro killed to new descriptor published",
                "s",
                None,
                service_s,
                ("<=", RECOVERY_TARGET),
                True,
            )
        )
        self.rows.append(
            Row("intro killed to a new rendezvous by bob", "s", None, client_s, None, True)
        )
        self.details["intro recovery"] = {
            "killed": victim,
            "revision_before": before.get("revision"),
            "revision_after": (hidden_of(self.alice, service) or {}).get("revision"),
        }
