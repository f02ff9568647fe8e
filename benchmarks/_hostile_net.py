"""The network and the measurements of bench_hostile.py.

Theory of operation. `HostileNet` builds a fresh network for one attack, so no attack
inherits another's leaks: the victim (`victim`, a relay), the honest client `bob`
(peered with the victim) and, for the circuit attack, the owner `alice`; target servers
in their own processes (an echo for the honest probes, a holder that accepts at once
and one that is slow to accept). The victim listens on [::1] for the link attackers and
on 127.0.0.1 for the honest side (bob, alice and the handshaker), so a limit per source
address can tell them apart on loopback; its DHT socket is on 127.0.0.1. It exposes
`echo` (bob only), `priv` (bob only: strangers are refused), `nudge` (bob and the name
`nobody-yet`, which no node claims: strangers are refused and nudge its DHT chase),
`pub` (public, the fast holder) and `slow` (public, the slow holder). Bob forwards a
local port to `victim.echo` directly, or through a one-relay circuit (the victim) to
`alice.echo`.

`Sampler` reads the victim's /proc every `SAMPLE_EVERY` seconds in a thread: VmRSS,
VmHWM (reset at the start of the window), open fds, and whether it still runs;
`log_lines_since` counts the lines its log file gained. Nothing here talks to the victim's
control socket during an attack (a stalled victim would stall the measurement).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _load
from _report import cpu_seconds, proc_status_kib, reset_peak_rss

from vx6.app.localnet import LocalNet, LocalNode, relays_known, wait_for
from vx6.crypto.keys import StaticKey
from vx6.errors import VX6Error
from vx6.net.addresses import parse_endpoint

SAMPLE_EVERY = 0.15
SETUP_TIMEOUT = 30.0
KIT = Path(__file__).resolve().parent / "_attack_kit.py"
SLOW_ACCEPT_INTERVAL = 0.02  # the slow target takes one connection per 20 ms
NUDGE_ALLOW = ["bob", "nobody-yet"]  # a name no node claims: unresolved all along
HIDDEN_RELAYS = 5  # relays besides the victim, for the hidden-service rows' service
HIDDEN_CONNECT_TIMEOUT = 60.0  # a client's whole attempt is bounded at 45 s


def log(message: str) -> None:
    print(f"[hostile] {message}", file=sys.stderr, flush=True)


def fd_count(pid: int) -> int | None:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return None


def nofile_soft(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        return None
    return None


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_lines_since(path: Path, offset: int, honest: str) -> tuple[int, int]:
    """(all lines, lines not about the honest handshaker) the log gained after
    `offset`: the honest side's own link closes are its doing, not the attacker's."""
    total = theirs = 0
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            for line in f:
                total += 1
                theirs += honest.encode() not in line
    except OSError:
        pass
    return total, theirs


def start_hold(interval: float) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, str(KIT), "hold", str(interval)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        _load.stop_server(proc)
        raise VX6Error("hold target did not start")
    return proc, int(line)


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.rss_kib = 0
        self.fds = 0
        self.died = False
        self._halt = threading.Event()
        reset_peak_rss(pid)
        self.cpu_start = cpu_seconds(pid)

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_EVERY):
            self.sample()

    def sample(self) -> None:
        rss = proc_status_kib(self.pid, "VmHWM") or proc_status_kib(self.pid, "VmRSS")
        fds = fd_count(self.pid)
        if rss is None or fds is None:
            self.died = True
            return
        self.rss_kib = max(self.rss_kib, rss)
        self.fds = max(self.fds, fds)

    def stop(self) -> float:
        self._halt.set()
        self.join(2.0)
        self.sample()
        return cpu_seconds(self.pid) - self.cpu_start


class HostileNet:
    def __init__(self, net: LocalNet, *, circuit: bool, hidden: bool = False) -> None:
        self.net = net
        self.circuit = circuit
        self.hidden = hidden
        self.servers: list[subprocess.Popen[bytes]] = []
        self.alias: str | None = None
        self.relays: list[LocalNode] = []
        self.hold_port = 0

    def __enter__(self) -> HostileNet:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.servers:
            _load.stop_server(proc)

    def build(self) -> None:
        echo_proc, echo = _load.start_server("echo")
        self.servers.append(echo_proc)
        fast_proc, fast_port = start_hold(0)
        self.hold_port = fast_port
        slow_proc, slow_port = start_hold(SLOW_ACCEPT_INTERVAL)
        self.servers += [fast_proc, slow_proc]
        net = self.net
        # Link attackers come from ::1, the honest side (bob, alice, the handshaker) from
        # 127.0.0.1: on loopback that is all there is of "another network". The victim's
        # DHT socket is on its first address, 127.0.0.1 (all nodes' DHTs on one family).
        self.victim = net.start(
            "victim", listen="127.0.0.1:0", extra=("--relay", "--listen", "[::1]:0")
        )
        self.honest_listen = self.victim.listen
        self.attack_listen = str(self.victim.info["listen"][1])
        peers = (self.honest_listen,)
        self.bob = net.start("bob", listen="127.0.0.1:0", peers=peers, wait=False)
        self.alice: LocalNode | None = None
        if self.circuit:
            self.alice = net.start("alice", listen="127.0.0.1:0", peers=peers, wait=False)
            net.wait_ready(self.alice)
        net.wait_ready(self.bob)
        v, bob = self.victim, self.bob
        v.call("expose", name="echo", target=f"127.0.0.1:{echo[1]}", allow=["bob"])
        v.call("expose", name="priv", target=f"127.0.0.1:{echo[1]}", allow=["bob"])
        v.call("expose", name="nudge", target=f"127.0.0.1:{echo[1]}", allow=NUDGE_ALLOW)
        v.call("expose", name="pub", target=f"127.0.0.1:{fast_port}", public=True)
        v.call("expose", name="slow", target=f"127.0.0.1:{slow_port}", public=True)
        if self.alice is not None:
            self.alice.call("expose", name="echo", target=f"127.0.0.1:{echo[1]}", allow=["bob"])
            wait_for(
                lambda: _knows(bob, "alice") and relays_known(bob, 1) and _knows(self.alice, "bob"),
                SETUP_TIMEOUT,
                "bob to learn alice and the relay",
                interval=0.1,
            )
            self.probe_port = self._connect("alice.echo", hops=1)
        else:
            wait_for(lambda: _knows(bob, "victim"), SETUP_TIMEOUT, "bob to learn the victim", 0.1)
            self.probe_port = self._connect("victim.echo", hops=0)
        self._warm()
        if self.hidden:
            self._hidden_service(echo[1])

    def hidden_probe(self) -> dict[str, Any]:
        """Right after the attack: bob connects to the hidden service (a fresh path)
        and echoes 16 bytes through it; how long that took, or why it failed."""
        started = time.monotonic()
        try:
            reply = self.bob.call(
                "connect", timeout=HIDDEN_CONNECT_TIMEOUT, service=self.alias, local="0",
                name="hidden-probe",
            )  # fmt: skip
            port = int(reply["forward"]["local"].rsplit(":", 1)[1])
            echoed = _load.round_trips(("127.0.0.1", port), 1, 16, warmup=0) != []
        except (VX6Error, OSError) as exc:
            return {"ok": False, "error": str(exc)[:120], "s": round(time.monotonic() - started, 1)}
        return {"ok": echoed, "s": round(time.monotonic() - started, 1)}

    def _hidden_service(self, echo_port: int) -> None:
        """The victim hosts a public hidden service `web` (to the echo), over
        HIDDEN_RELAYS more relays; returns once the service is reachable."""
        # The relays' DHT must reach the victim's (on its first address, 127.0.0.1):
        # descriptors are stored and fetched through a relay (the directory proxy).
        extra = ("--listen", "[::1]:0", "--relay", "--bootstrap", self.honest_listen)
        self.relays = [
            self.net.start(
                f"r{i}", listen="127.0.0.1:0", peers=(self.honest_listen,), extra=extra, wait=False
            )
            for i in range(HIDDEN_RELAYS)
        ]
        for relay in self.relays:
            self.net.wait_ready(relay)
        v = self.victim
        wait_for(lambda: relays_known(v, HIDDEN_RELAYS), SETUP_TIMEOUT, "the victim's relays", 0.2)
        made = v.cli("hidden", "create", "web", "--target", f"127.0.0.1:{echo_port}", "--public")
        if made.returncode != 0:
            raise VX6Error(f"hidden create: {made.stderr!r}")
        self.alias = made.stdout.decode().strip()
        v.call("reload")

        def reachable() -> bool:
            reply = v.try_call("hidden")
            return bool(reply.get("ok")) and any(h.get("reachable") for h in reply["hidden"])

        wait_for(reachable, 2 * SETUP_TIMEOUT, "the hidden service to be reachable", 0.2)

    def _connect(self, service: str, hops: int) -> int:
        deadline = time.monotonic() + SETUP_TIMEOUT
        while True:
            try:
                reply = self.bob.call(
                    "connect", timeout=SETUP_TIMEOUT, service=service, local="0", hops=hops
                )
                return int(reply["forward"]["local"].rsplit(":", 1)[1])
            except VX6Error as exc:
                if time.monotonic() > deadline:
                    raise
                log(f"connect {service}: {exc}; retrying")
                time.sleep(0.5)  # retry pause while the network settles (bounded)

    def _warm(self) -> None:
        """One echo through the forward before the window (a first circuit build or
        link dial is setup, not what the attack costs)."""

        def echoed() -> bool:
            try:
                return _load.round_trips(("127.0.0.1", self.probe_port), 1, 16, warmup=0) != []
            except OSError:
                return False

        wait_for(echoed, SETUP_TIMEOUT, "a first echo through bob's forward", interval=0.2)

    def target_spec(self) -> dict[str, Any]:
        v = self.victim
        host, port = parse_endpoint(self.attack_listen)
        dht_host, dht_port = parse_endpoint(self.honest_listen)
        onion = StaticKey((v.home / "onion.key").read_bytes()).public.hex()
        services = {s: s for s in ("echo", "priv", "nudge", "pub", "slow")}
        return {
            "host": host,
            "port": port,
            "dht_host": dht_host,
            "dht_port": dht_port,
            "key": v.key,
            "name": "victim",
            "onion": onion,
            "services": services,
            "registry": str(v.home / "registry.sqlite"),
            "control": str(v.control),
            "alias": self.alias,
            "hold_port": self.hold_port,
            "dht": [self.honest_listen, self.bob.listen, *(r.listen for r in self.relays)],
        }

    def registry_bytes(self) -> int:
        home = self.victim.home
        return sum(p.stat().st_size for p in home.glob("registry.sqlite*") if p.is_file())


def _knows(node: LocalNode | None, owner: str) -> bool:
    assert node is not None
    reply = node.try_call("resolve", address=f"{owner}.any")
    return bool(reply.get("ok")) and any(r["kind"] == "node" for r in reply["records"])
