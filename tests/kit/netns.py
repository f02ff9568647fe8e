"""A multi-host test bed in Linux network namespaces (DESIGN.md section 4).

Theory of operation. A `Testbed` builds a private layer-2 network: one namespace per host
and one more that holds only a bridge. Each host gets a veth pair created from inside the
bridge namespace (one end there, enslaved to the bridge; the other end created directly
in the host's namespace as eth0), so no test interface ever exists in the machine's own
namespace and nothing is attached to a real interface. Hosts get IPv6 addresses from
fd76:7836::/48 and, when asked, IPv4 from 198.18.0.0/15; no namespace has a default
route, so a packet for anything else has nowhere to go. DAD is off and the bed waits
(bounded) until no address is tentative before anything uses it.

Every process runs inside a host's namespace (`ip netns exec`); the machine's own
namespace only talks to nodes over their control sockets, which are Unix sockets in
homes on the shared filesystem. Names start with `vx6t-<pytest pid>-<bed number>-`, so
parallel runs never collide and a run's leftovers are recognisable. Cleanup kills every
process the bed started (and anything else still inside its namespaces), then deletes
every namespace: on leaving the `with` block, at interpreter exit, on SIGTERM, and, for
a run that was SIGKILLed, at the next run (namespaces whose pid is gone). Processes
started from the main thread also get PR_SET_PDEATHSIG, so they die with pytest.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import ipaddress
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

import pytest

from vx6.app.localnet import LocalNet, LocalNode
from vx6.errors import VX6Error

RUN_PREFIX = f"vx6t-{os.getpid()}-"
IPV6_SUBNET = ipaddress.IPv6Network("fd76:7836:0:1::/64")  # inside fd76:7836::/48
IPV4_SUBNET = ipaddress.IPv4Network("198.18.0.0/24")  # inside 198.18.0.0/15
NODE_PORT = 4242
SETUP_TIMEOUT = 10.0
REQUIRE_ENV = "VX6_REQUIRE_NETNS"  # "1": a missing test bed fails instead of skipping

_bed_numbers = itertools.count(1)
_live: set[Testbed] = set()
_sigterm_hooked = False

# Runs as the first program in the namespace, then replaces itself with the real one:
# the child dies with pytest even if pytest is SIGKILLed.
_LAUNCH = (
    "import ctypes,os,sys\n"
    "ctypes.CDLL(None).prctl(1, 9)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "os.getppid() == int(sys.argv[1]) or os._exit(70)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)

ECHO_SERVER = r"""
import socket, sys, threading
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 0))
srv.listen(128)
print(srv.getsockname()[1], flush=True)
def serve(conn):
    try:
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # probes and aborted clients
    finally:
        conn.close()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

ECHO_CLIENT = r"""
import json, os, socket, sys, threading
address, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = os.urandom(size)
sock = socket.create_connection((address, port), timeout=20)
def send():
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
sender = threading.Thread(target=send)
sender.start()
parts = []
while chunk := sock.recv(65536):
    parts.append(chunk)
sender.join()
got = b"".join(parts)
print(json.dumps({"sent": size, "received": len(got), "intact": got == data}))
"""


# ---------------------------------------------------------------- availability
@functools.cache
def unavailable_reason() -> str | None:
    """Why this machine cannot host a test bed, or None if it can (probed once)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    sweep_stale()
    probe = RUN_PREFIX + "probe"
    try:
        _ip("netns", "add", probe)
        _ip("-n", probe, "link", "add", "br0", "type", "bridge")
        _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    except RuntimeError as exc:
        return f"cannot build a namespace test bed here: {exc}"
    finally:
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", probe)
    return None


def require_testbed() -> None:
    """Skip the calling test (or fail it, when $VX6_REQUIRE_NETNS=1) without a test bed."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
    pytest.skip(reason)


# ---------------------------------------------------------------- namespace bookkeeping
def _ip(*args: str, timeout: float = 10.0) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"ip {' '.join(args)}: {err}")
    return proc.stdout.decode()


def namespaces(prefix: str = "vx6t-") -> list[str]:
    if shutil.which("ip") is None:
        return []
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        names = [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]
        return [n for n in names if n.startswith(prefix)]
    return []


def leftover_namespaces() -> list[str]:
    """This run's namespaces that belong to no open test bed (should always be empty)."""
    live = tuple(bed.prefix for bed in _live)
    return [n for n in namespaces(RUN_PREFIX) if not n.startswith(live)]


@pytest.fixture(scope="module")
def no_leftover_namespaces() -> Iterator[None]:
    """Fails a module loudly if a namespace of this run outlives its test bed. Modules
    that build test beds use it with `pytestmark = pytest.mark.usefixtures(...)`."""
    yield
    left = leftover_namespaces()
    for name in left:
        delete_namespace(name)
    assert not left, f"namespaces left behind (now deleted): {left}"


def delete_namespace(name: str) -> None:
    """Kill whatever still runs inside `name` (only test processes can), then delete it."""
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        for pid in _ip("netns", "pids", name).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", name)


def sweep_stale() -> None:
    """Delete namespaces left by earlier runs whose pytest process no longer exists."""
    for name in namespaces():
        match = re.match(r"vx6t-(\d+)-", name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(RuntimeError):
                delete_namespace(name)
        except PermissionError:
            pass  # alive, someone else's


def _close_all() -> None:
    for bed in list(_live):
        with contextlib.suppress(Exception):
            bed.close()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Clean up, then die of SIGTERM as if the hook had not been there."""
    _close_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _hook_sigterm() -> None:
    """Only where nobody else handles SIGTERM, and only the main thread may set it."""
    global _sigterm_hooked
    main = threading.current_thread() is threading.main_thread()
    if not _sigterm_hooked and main and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_hooked = True


atexit.register(_close_all)


# ---------------------------------------------------------------- hosts and nodes
@dataclass
class Host:
    index: int
    ns: str
    ipv6: str | None
    ipv4: str | None
    ifname: str = "eth0"

    @property
    def address(self) -> str:
        """The preferred address: IPv6 where the host has one."""
        return self.ipv6 or str(self.ipv4)

    def endpoint(self, port: int = NODE_PORT, family: int = 0) -> str:
        """'[ipv6]:port' (or 'ipv4:port' for family 4 or an IPv4-only host)."""
        if family == 4 or self.ipv6 is None:
            return f"{self.ipv4}:{port}"
        return f"[{self.ipv6}]:{port}"


@dataclass
class NetnsNode(LocalNode):
    """A LocalNode whose process runs in `host`'s namespace."""

    host: Host | None = None

    def cli(
        self, *argv: str, input_bytes: bytes | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[bytes]:
        assert self.host is not None
        vx6 = [sys.executable, "-m", "vx6", "--home", str(self.home)]
        return subprocess.run(
            ["ip", "netns", "exec", self.host.ns, *vx6, *argv],
            input=input_bytes,
            capture_output=True,
            timeout=timeout,
            check=False,
        )


class Testbed:
    """`with Testbed(n_hosts=8, dual_stack=(1,)) as tb:` -- see the module docstring."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        n_hosts: int,
        *,
        dual_stack: Collection[int] = (),
        ipv4_only: Collection[int] = (),
        base: Path | None = None,
    ) -> None:
        if not 1 <= n_hosts <= 200:
            raise ValueError("n_hosts must be within 1..200")
        self.prefix = f"{RUN_PREFIX}{next(_bed_numbers)}-"
        self.bridge_ns = self.prefix + "br"
        self._own_base = base is None  # a directory we made is ours to delete
        self.net = LocalNet(base or Path(tempfile.mkdtemp(prefix="vx6t-")))
        self.hosts: list[Host] = []
        self.created: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._closed = False
        for i in range(n_hosts):
            v6 = None if i in ipv4_only else str(IPV6_SUBNET[i + 1])
            v4 = str(IPV4_SUBNET[i + 1]) if i in dual_stack or i in ipv4_only else None
            self.hosts.append(Host(i, f"{self.prefix}h{i}", v6, v4))

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> Testbed:
        _hook_sigterm()
        _live.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(e, Exception):
            self._note_logs(e)  # before close() deletes the logs
        self.close()

    @contextlib.contextmanager
    def explain(self) -> Iterator[None]:
        """Attach the nodes' log tails to any exception raised inside (as a note)."""
        try:
            yield
        except Exception as exc:
            self._note_logs(exc)
            raise

    def _note_logs(self, exc: Exception) -> None:
        if not getattr(exc, "_vx6_logs_noted", False) and self.net.nodes:
            exc.add_note(self.logs())
            exc._vx6_logs_noted = True  # type: ignore[attr-defined]

    def _build(self) -> None:
        br = self.bridge_ns
        self._add_ns(br)
        _ip("-n", br, "link", "set", "lo", "up")
        _ip("-n", br, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        _ip("-n", br, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", br, "link", "set", "br0", "up")
        for host in self.hosts:
            ns = host.ns
            self._add_ns(ns)
            # Defaults before eth0 exists, so it is born without DAD.
            self._sysctl(ns, {"all.accept_dad": "0", "default.accept_dad": "0"})
            port = f"h{host.index}"
            # Both ends are born in test namespaces: never one in the machine's own.
            _ip("-n", br, "link", "add", port, "type", "veth", "peer", host.ifname, "netns", ns)
            _ip("-n", br, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            if host.ipv6 is None:
                self._sysctl(ns, {f"{host.ifname}.disable_ipv6": "1"})
            else:
                self._sysctl(ns, {f"{host.ifname}.accept_dad": "0"})
                self._add_address(host, host.ipv6)
            if host.ipv4 is not None:
                self._add_address(host, host.ipv4)
            _ip("-n", ns, "link", "set", host.ifname, "up")
        for host in self.hosts:
            self.wait_addresses(host)

    def _add_ns(self, name: str) -> None:
        self.created.append(name)  # before creation: a half-made namespace is still deleted
        _ip("netns", "add", name)

    def _sysctl(self, ns: str, values: dict[str, str]) -> None:
        script = "".join(
            f"echo {value} > /proc/sys/net/ipv6/conf/{key.replace('.', '/')} && "
            for key, value in values.items()
        )
        self.exec(ns, ["sh", "-c", script + "true"], check=True)

    def _add_address(self, host: Host, address: str) -> None:
        if ":" in address:
            _ip("-n", host.ns, "addr", "add", f"{address}/64", "dev", host.ifname, "nodad")
        else:
            _ip("-n", host.ns, "addr", "add", f"{address}/24", "dev", host.ifname)

    def close(self) -> None:
        """Stop every process, delete every namespace; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        try:
            self.net.close()  # SIGTERM to the nodes (SIGKILL after a grace period), homes
        finally:
            for proc in self._procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            for name in reversed(self.created):
                if name not in namespaces(name):
                    continue
                try:
                    delete_namespace(name)
                except RuntimeError as exc:
                    errors.append(str(exc))
            _live.discard(self)
            if self._own_base:
                shutil.rmtree(self.net.base, ignore_errors=True)
        if errors:
            raise RuntimeError("test bed cleanup failed: " + "; ".join(errors))

    # ---------------------------------------------------------------- processes
    def _argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        base = ["ip", "netns", "exec", ns]
        if threading.current_thread() is threading.main_thread():
            # PDEATHSIG fires when the parent *thread* ends, so only from the main thread.
            return [*base, sys.executable, "-c", _LAUNCH, str(os.getpid()), *argv]
        return [*base, *argv]

    def exec(
        self,
        host: Host | str,
        argv: Sequence[str],
        *,
        input_bytes: bytes | None = None,
        timeout: float = 30.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` to completion inside `host`'s namespace (or the one named `host`)."""
        ns = host if isinstance(host, str) else host.ns
        proc = subprocess.run(
            self._argv(ns, argv), input=input_bytes, capture_output=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")[-2000:]
            raise RuntimeError(f"in {ns}: {list(argv)} exited {proc.returncode}: {err}")
        return proc

    def run_in(
        self, host: Host, code: str, *args: str, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a Python snippet (`python -c code args...`) inside `host`'s namespace."""
        return self.exec(host, [sys.executable, "-c", code, *args], timeout=timeout)

    def spawn(
        self, host: Host, argv: Sequence[str], *, stdout: int | IO[bytes] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-lived process inside `host`'s namespace; killed by close()."""
        proc = subprocess.Popen(
            self._argv(host.ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if stdout is not None else subprocess.DEVNULL,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    # ---------------------------------------------------------------- vx6 nodes
    @property
    def nodes(self) -> dict[str, LocalNode]:
        return self.net.nodes

    def start_node(
        self,
        host: Host,
        name: str,
        *,
        peers: Sequence[str] = (),
        extra: Sequence[str] = (),
        listen: Sequence[str] | None = None,
        claim: bool = True,
        wait: bool = True,
    ) -> NetnsNode:
        """`python -m vx6 run` inside `host`'s namespace, listening on the host's own
        addresses (port 4242) unless `listen` says otherwise; home and log on the host
        filesystem under `self.net.base`."""
        home = self.net.base / name
        home.mkdir(parents=True, exist_ok=True)
        if listen is None:
            listen = [host.endpoint(NODE_PORT, 6)] if host.ipv6 else []
            listen += [host.endpoint(NODE_PORT, 4)] if host.ipv4 else []
        argv = [sys.executable, "-m", "vx6", "--home", str(home), "run"]
        for endpoint in listen:
            argv += ["--listen", endpoint]
        if claim:
            argv += ["--name", name]
        for peer in peers:
            argv += ["--peer", peer]
        argv += list(extra)
        log_path = self.net.base / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = self.spawn(host, argv, stdout=log)
        node = NetnsNode(name, home, proc, log_path, host=host)
        self.net.nodes[name] = node
        if wait:
            self.wait_ready(node)
        return node

    def wait_ready(self, node: LocalNode, timeout: float = 20.0) -> None:
        self.net.wait_ready(node, timeout)

    def stop_node(self, name: str) -> int:
        return self.net.stop(name)

    def restart_node(self, name: str, **kwargs: Any) -> NetnsNode:
        node = self.net.nodes[name]
        assert isinstance(node, NetnsNode) and node.host is not None
        self.net.stop(name)
        return self.start_node(node.host, name, **kwargs)

    def logs(self, tail: int = 4000) -> str:
        return "".join(
            f"\n----- vx6 node {n.name} -----\n" + n.log_text()[-tail:]
            for n in self.net.nodes.values()
        )

    # ---------------------------------------------------------------- addresses
    def addresses(self, host: Host) -> list[dict[str, Any]]:
        """The kernel's view of `host`'s eth0 addresses (`ip -j addr` addr_info)."""
        info = json.loads(_ip("-n", host.ns, "-j", "addr", "show", "dev", host.ifname))
        return list(info[0].get("addr_info", [])) if info else []

    def wait_addresses(self, host: Host, timeout: float = SETUP_TIMEOUT) -> None:
        """Bounded wait until every address on eth0 is usable (none tentative)."""
        deadline = time.monotonic() + timeout
        while any(a.get("tentative") for a in self.addresses(host)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host.ns}: addresses still tentative after {timeout}s")
            time.sleep(0.02)  # polling interval of a bounded wait

    def spare_ipv6(self, host: Host, generation: int = 1) -> str:
        """Another on-link address for `host` (for renumbering tests)."""
        return str(IPV6_SUBNET[(generation << 16) + host.index + 1])

    def change_address(self, host: Host, new: str) -> None:
        """Renumber `host`: remove its old address of new's family, add `new`."""
        addr = ipaddress.ip_address(new)
        subnet = IPV6_SUBNET if addr.version == 6 else IPV4_SUBNET
        if addr not in subnet:
            raise ValueError(f"{new} is outside the test bed's on-link subnet {subnet}")
        old = host.ipv6 if addr.version == 6 else host.ipv4
        if old is not None:
            plen = subnet.prefixlen
            _ip("-n", host.ns, "addr", "del", f"{old}/{plen}", "dev", host.ifname)
        self._add_address(host, str(addr))
        if addr.version == 6:
            host.ipv6 = str(addr)
        else:
            host.ipv4 = str(addr)
        self.wait_addresses(host)

    # ---------------------------------------------------------------- echo helpers
    def start_echo(self, host: Host, bind: str = "127.0.0.1", timeout: float = 10.0) -> int:
        """An echo server inside `host`'s namespace; returns its port."""
        proc = self.spawn(host, [sys.executable, "-c", ECHO_SERVER, bind], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            raise VX6Error(f"echo server in {host.ns} did not start (exit {proc.poll()})")
        return int(line)

    def echo_check(
        self, host: Host, port: int, nbytes: int = 64 * 1024, address: str = "127.0.0.1"
    ) -> dict[str, Any]:
        """From inside `host`'s namespace, send `nbytes` random bytes to address:port and
        read the echo back; returns {"sent", "received", "intact"}."""
        proc = self.run_in(host, ECHO_CLIENT, address, str(port), str(nbytes))
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")[-2000:]
            raise AssertionError(f"echo client in {host.ns} failed: {err}")
        result: dict[str, Any] = json.loads(proc.stdout)
        return result
