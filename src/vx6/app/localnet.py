"""A throwaway VX6 network on this machine: real node processes, each in its own
temporary home, all on loopback. Used by `vx6 demo`, the end-to-end tests and the
benchmarks, so all three exercise exactly what a user runs.

Theory of operation. `LocalNet` starts `python -m vx6 run` processes, waits (polling
the control socket, with a deadline) until each answers `status`, and talks to them
through the same control protocol the CLI uses. Leaving the `with` block stops every
process (SIGTERM, then SIGKILL after a grace period) and deletes the homes, also when
the body raised. If this process dies without cleaning up (SIGKILL, a CI timeout), the
kernel stops the nodes it started from its main thread (`vx6/parent.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from vx6.app.parent import EXIT_WITH_PARENT_ENV
from vx6.errors import VX6Error
from vx6.net.control import request

READY_TIMEOUT = 20.0


@dataclass
class LocalNode:
    name: str
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def control(self) -> Path:
        return self.home / "control.sock"

    def call(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        reply = request(self.control, {"op": op, **args}, timeout=timeout)
        if not reply.get("ok"):
            raise VX6Error(f"{self.name}: {op} failed: {reply.get('error')}")
        return reply

    def try_call(self, op: str, **args: Any) -> dict[str, Any]:
        """Like call, but returns the refusal instead of raising."""
        return request(self.control, {"op": op, **args})

    @property
    def listen(self) -> str:
        return str(self.info["listen"][0])

    @property
    def key(self) -> str:
        return str(self.info["key"])

    def cli(
        self, *argv: str, input_bytes: bytes | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the real `vx6` command line against this node."""
        return subprocess.run(
            [sys.executable, "-m", "vx6", "--home", str(self.home), *argv],
            input=input_bytes,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class LocalNet:
    def __init__(self, base: Path | None = None, keep: bool = False) -> None:
        self._own_base = base is None
        self.base = base or Path(tempfile.mkdtemp(prefix="vx6-"))
        self.keep = keep
        self.nodes: dict[str, LocalNode] = {}

    def __enter__(self) -> LocalNet:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(
        self,
        name: str,
        *,
        listen: str = "[::1]:0",
        peers: tuple[str, ...] = (),
        extra: tuple[str, ...] = (),
        claim: bool = True,
        env: dict[str, str] | None = None,
        wait: bool = True,
        open_files: tuple[int, int] | None = None,
    ) -> LocalNode:
        home = self.base / name
        home.mkdir(mode=0o700, parents=True, exist_ok=True)  # a home others can write is refused
        log_path = self.base / f"{name}.log"
        argv = [sys.executable, "-m", "vx6", "--home", str(home), "run", "--listen", listen]
        if claim:
            argv += ["--name", name]
        for p in peers:
            argv += ["--peer", p]
        argv += list(extra)
        if open_files is not None:
            # RLIMIT_NOFILE (soft, hard) as a shell's `ulimit -n` would set it: in the child
            # before it becomes the node (an exec wrapper, not preexec_fn, which is unsafe
            # in a parent with threads).
            wrapper = (
                "import os, resource, sys; "
                f"resource.setrlimit(resource.RLIMIT_NOFILE, {open_files!r}); "
                "os.execv(sys.executable, sys.argv[1:])"
            )
            argv = [sys.executable, "-c", wrapper, *argv]
        child_env = {**os.environ, **(env or {})}
        if threading.current_thread() is threading.main_thread():
            child_env[EXIT_WITH_PARENT_ENV] = str(os.getpid())  # see vx6/parent.py
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env,
                start_new_session=True,
            )
        node = LocalNode(name, home, proc, log_path)
        self.nodes[name] = node
        if wait:
            self.wait_ready(node)
        return node

    def start_relays(self, names: list[str], hub: LocalNode) -> list[LocalNode]:
        """Start relay nodes (`--relay`) that sync through `hub`, all at once; return
        when every one answers."""
        relays = [
            self.start(name, peers=(hub.listen,), extra=("--relay",), wait=False) for name in names
        ]
        for relay in relays:
            self.wait_ready(relay)
        return relays

    def wait_ready(self, node: LocalNode, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if node.process.poll() is not None:
                raise VX6Error(f"node {node.name} exited early:\n{node.log_text()[-2000:]}")
            try:
                node.info = node.call("status", timeout=2.0)
                return
            except (VX6Error, OSError):
                if time.monotonic() > deadline:
                    raise VX6Error(f"node {node.name} not ready in {timeout}s") from None
            time.sleep(0.02)  # polling interval while waiting for a bounded condition

    def stop(self, name: str, timeout: float = 10.0) -> int:
        node = self.nodes[name]
        proc = node.process
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def kill(self, name: str) -> None:
        proc = self.nodes[name].process
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self, name: str, **kwargs: Any) -> LocalNode:
        self.stop(name)
        return self.start(name, **kwargs)

    def close(self) -> None:
        for name in list(self.nodes):
            with contextlib.suppress(OSError):
                self.stop(name, timeout=5.0)
        if self._own_base and not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)


def relays_known(node: LocalNode, count: int) -> bool:
    """True once `node` knows at least `count` relays route planning may use."""
    reply = node.try_call("relays")
    return bool(reply.get("ok")) and len(reply.get("relays", [])) >= count


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
