"""`vx6 demo`: a small VX6 network on this machine, every mode exercised end to end.

It starts real node processes (hub, alice, bob, carol, dave, and 14 relays r1-r14), each
in its own temporary home on loopback, plus a local echo service for alice and an HTTP
server. alice exposes
both (private: only bob, carol and dave may connect). bob reaches them by name through
records synced via the hub (named direct); dave, started with only `--bootstrap`,
resolves alice through the DHT; carol, who knows nobody, reaches alice by her IPv6
endpoint (direct IPv6: no discovery at all); bob also reaches alice through onion
circuits of 1 and 5 relays (relay proxy mode), chosen from the relays' node records, and
reaches alice's echo as a hidden service (made with `vx6 hidden create`, allowing only
bob) by its alias, once with the fast and once with the balanced profile (the service's
profile sets its half of the path; a balanced path alone takes 11 relays). Each
row moves a fixed amount of data
through the forward, checks it byte for byte (SHA-256), and reports setup time and
throughput. Everything is torn down at the end; the exit status is 0 only if every row
worked.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import multiprocessing
import os
import socket
import threading
import time
from typing import Any

from vx6.app.localnet import LocalNet, LocalNode, relays_known, wait_for
from vx6.errors import VX6Error

CHUNK = 1 << 20
RELAYS = 14  # a balanced hidden path: 11 distinct relays, plus rendezvous points and margin
RELAYS_KNOWN_TIMEOUT = 30.0
HIDDEN_REACHABLE_TIMEOUT = 30.0


def _echo_server(conn: Any) -> None:
    """Runs in its own process so it never competes with the measuring thread's GIL."""
    srv = socket.create_server(("127.0.0.1", 0))
    conn.send(srv.getsockname()[1])
    buf = bytearray(CHUNK)
    view = memoryview(buf)

    def serve(c: socket.socket) -> None:
        with c:
            while n := c.recv_into(view):
                c.sendall(view[:n])

    while True:
        client, _ = srv.accept()
        serve(client)


def _start_echo() -> tuple[multiprocessing.Process, int]:
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_echo_server, args=(child,), daemon=True)
    proc.start()
    return proc, int(parent.recv())


def _start_http(body: bytes) -> tuple[http.server.ThreadingHTTPServer, int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def echo_transfer(port: int, mib: int) -> tuple[float, bool]:
    """Send `mib` MiB through an echo service and read it back concurrently.
    Returns (MB/s one way, intact)."""
    block = os.urandom(CHUNK)
    sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
    received = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:

        def reader() -> None:
            nonlocal received
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while n := s.recv_into(view):
                got_hash.update(view[:n])
                received += n

        thread = threading.Thread(target=reader)
        started = time.perf_counter()
        thread.start()
        for _ in range(mib):
            s.sendall(block)
            sent_hash.update(block)
        s.shutdown(socket.SHUT_WR)
        thread.join(60)
        elapsed = time.perf_counter() - started
    total = mib * CHUNK
    return total / elapsed / 1e6, received == total and sent_hash.digest() == got_hash.digest()


def http_get(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/demo")
        resp = conn.getresponse()
        return resp.read() if resp.status == 200 else b""
    finally:
        conn.close()


def _row(mode: str, path: str, fn: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"mode": mode, "path": path, "setup_ms": None, "mb_s": None, "ok": False}
    try:
        row.update(fn())
    except (VX6Error, OSError, TimeoutError, KeyError, StopIteration) as exc:
        row["error"] = str(exc)
    return row


def _connect(
    node: LocalNode, service: str, via: str | None = None, hops: int = 0, profile: str = ""
) -> tuple[int, float]:
    started = time.perf_counter()
    reply = node.call(
        "connect",
        timeout=60.0,
        service=service,
        local="0",
        via=via,
        hops=hops,
        profile=profile,
        name=f"{service}/{hops}{profile}",
    )
    setup_ms = (time.perf_counter() - started) * 1000
    return int(reply["forward"]["local"].rsplit(":", 1)[1]), setup_ms


def _create_hidden(alice: LocalNode, bob: LocalNode, port: int, profile: str) -> str:
    """alice makes her echo service hidden (only bob may connect) with the real CLI and
    reloads; returns the alias once the service is reachable and bob knows the relays."""
    name = f"echo-{profile}"
    done = alice.cli("hidden", "create", name, "--target", f"127.0.0.1:{port}",
                     "--allow", bob.key, "--profile", profile)  # fmt: skip
    if done.returncode != 0:
        raise VX6Error(f"vx6 hidden create failed: {done.stderr.decode().strip()}")
    alice.call("reload")

    def reachable() -> bool:
        return any(h["reachable"] for h in alice.call("hidden")["hidden"] if h["name"] == name)

    wait_for(reachable, HIDDEN_REACHABLE_TIMEOUT, "alice's hidden service to be reachable")
    wait_for(lambda: relays_known(bob, RELAYS), RELAYS_KNOWN_TIMEOUT, "bob to learn the relays")
    return done.stdout.decode().strip()


def run_rows(net: LocalNet, mib: int, log: Any = print) -> list[dict[str, Any]]:
    echo_proc, echo_port = _start_echo()
    body = os.urandom(1 << 20)
    http_server, http_port = _start_http(body)
    try:
        log(f"starting nodes: hub, alice, bob, carol, dave, {RELAYS} relays ...")
        hub = net.start("hub")
        net.start_relays([f"r{i}" for i in range(1, RELAYS + 1)], hub)
        alice = net.start("alice", peers=(hub.listen,))
        bob = net.start("bob", peers=(hub.listen,))
        carol = net.start("carol")  # knows nobody: direct IPv6 only
        dave = net.start("dave", extra=("--bootstrap", hub.listen))  # DHT only, no sync
        allowed = ["bob", carol.key, dave.key]
        for service, port in (("echo", echo_port), ("web", http_port)):
            alice.call("expose", name=service, target=f"127.0.0.1:{port}", allow=allowed)
        log(f"alice exposes echo and web; alice listens on {alice.listen}")

        def named() -> dict[str, Any]:
            port, setup = _connect(bob, "alice.echo")
            mb_s, ok = echo_transfer(port, mib)
            return {"setup_ms": round(setup, 1), "mb_s": round(mb_s), "ok": ok}

        def named_http() -> dict[str, Any]:
            port, setup = _connect(bob, "alice.web")
            started = time.perf_counter()
            got = http_get(port)
            mb_s = len(got) / (time.perf_counter() - started) / 1e6
            return {"setup_ms": round(setup, 1), "mb_s": round(mb_s), "ok": got == body}

        def named_dht() -> dict[str, Any]:
            port, setup = _connect(dave, "alice.echo")
            mb_s, ok = echo_transfer(port, mib)
            return {"setup_ms": round(setup, 1), "mb_s": round(mb_s), "ok": ok}

        def direct_ipv6() -> dict[str, Any]:
            port, setup = _connect(carol, "alice.echo", via=alice.listen)
            mb_s, ok = echo_transfer(port, mib)
            return {"setup_ms": round(setup, 1), "mb_s": round(mb_s), "ok": ok}

        def relayed(hops: int) -> dict[str, Any]:
            wait_for(
                lambda: relays_known(bob, RELAYS),
                RELAYS_KNOWN_TIMEOUT,
                f"bob to learn {RELAYS} relays",
            )
            port, setup = _connect(bob, "alice.echo", hops=hops)
            mb_s, ok = echo_transfer(port, mib)
            return {"setup_ms": round(setup, 1), "mb_s": round(mb_s), "ok": ok}

        def hidden(profile: str) -> dict[str, Any]:
            alias = _create_hidden(alice, bob, echo_port, profile)
            log(f"alice's hidden echo ({profile}) is reachable as {alias}")
            port, setup = _connect(bob, alias, profile=profile)
            mb_s, ok = echo_transfer(port, mib)
            return {"setup_ms": round(setup, 1), "mb_s": round(mb_s), "ok": ok}

        return [
            _row("named direct", "bob -> alice (echo)", named),
            _row("named direct", "bob -> alice (http)", named_http),
            _row("named via DHT", "dave -> alice (echo)", named_dht),
            _row("direct IPv6", f"carol -> {alice.listen} (echo)", direct_ipv6),
            _row("relay, 1 hop", "bob -> r -> alice (echo)", lambda: relayed(1)),
            _row("relay, 5 hops", "bob -> r x5 -> alice (echo)", lambda: relayed(5)),
            _row("hidden fast", "bob -> r x3 -> RP <- r x3 <- alice", lambda: hidden("fast")),
            _row(
                "hidden balanced",
                "bob -> r x5 -> RP <- r x5 <- alice",
                lambda: hidden("balanced"),
            ),
        ]
    finally:
        http_server.shutdown()
        echo_proc.terminate()


def run_demo(mib: int = 64, as_json: bool = False) -> int:
    log = (lambda *_: None) if as_json else print
    with LocalNet() as net:
        try:
            rows = run_rows(net, mib, log)
        except VX6Error as exc:
            rows = [{"mode": "setup", "path": "-", "ok": False, "error": str(exc)}]
    ok = all(r["ok"] for r in rows)
    if as_json:
        print(json.dumps({"ok": ok, "mib_per_row": mib, "rows": rows}, indent=2))
    else:
        from vx6.app.format import table

        print()
        print(table(rows, ["mode", "path", "setup_ms", "mb_s", "ok"]))
        for r in rows:
            if "error" in r:
                print(f"{r['mode']} {r['path']}: {r['error']}")
        print("\nall modes worked" if ok else "\nSOME MODES FAILED")
    return 0 if ok else 1
