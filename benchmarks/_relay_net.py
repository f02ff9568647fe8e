"""Network setup for bench_relay.py: relays, owner and client on loopback, and forwards.

Theory of operation. `build_network` starts six relays (`--relay`; the first, `hub`, is
everyone's bootstrap peer), the owner `alice` and the client `bob` with vx6.app.localnet and
returns once bob knows alice's node record and every relay and alice knows bob (all a
circuit build needs). `connect_forwards` exposes the targets at alice (allowing bob) and
connects one forward at bob per service and path: named direct and 1, 3 and 5 relays.
`named_direct_ratios` puts each relay figure over the named-direct forward's.
"""

from __future__ import annotations

import sys
import time

import _load
from _report import Row

from vx6.app.localnet import LocalNet, LocalNode, relays_known, wait_for
from vx6.errors import VX6Error

RELAYS = 6  # one spare, so a relay the pool avoids after a failure still leaves five
SPARE_CIRCUITS = 2  # vx6.node.pool.SPARE: open circuits per (owner, hops) when idle
SETUP_TIMEOUT = 60.0
DIRECT = "direct"
PATHS = {0: "named-direct forward", 1: "1 relay", 3: "3 relays", 5: "5 relays"}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def knows(node: LocalNode, owner: str) -> bool:
    reply = node.try_call("resolve", address=f"{owner}.any")
    return bool(reply.get("ok")) and any(r["kind"] == "node" for r in reply["records"])


def build_network(net: LocalNet) -> tuple[LocalNode, LocalNode, dict[str, LocalNode]]:
    hub = net.start("hub", extra=("--relay",))
    relays = [hub, *net.start_relays([f"r{i}" for i in range(1, RELAYS)], hub)]
    alice = net.start("alice", peers=(hub.listen,), wait=False)
    bob = net.start("bob", peers=(hub.listen,), wait=False)
    for node in (alice, bob):
        net.wait_ready(node)
    wait_for(
        lambda: knows(bob, "alice") and relays_known(bob, RELAYS) and knows(alice, "bob"),
        SETUP_TIMEOUT,
        f"bob to learn alice and {RELAYS} relays, alice to learn bob",
        interval=0.1,
    )
    return alice, bob, {r.name: r for r in relays}


def connect_forwards(
    alice: LocalNode, bob: LocalNode, targets: dict[str, _load.Addr]
) -> dict[str, dict[str, _load.Addr]]:
    """Expose the targets at alice; one forward at bob per service and path."""
    for name, (host, port) in targets.items():
        alice.call("expose", name=name, target=f"{host}:{port}", allow=["bob"])
    paths: dict[str, dict[str, _load.Addr]] = {DIRECT: dict(targets)}
    for hops, label in PATHS.items():
        paths[label] = {}
        for service in targets:
            deadline = time.monotonic() + SETUP_TIMEOUT
            while True:
                try:
                    reply = bob.call(
                        "connect",
                        timeout=SETUP_TIMEOUT,
                        service=f"alice.{service}",
                        name=f"{service}-{hops}",
                        local="0",
                        hops=hops,
                    )
                    break
                except VX6Error as exc:
                    if time.monotonic() > deadline:
                        raise
                    log(f"connect alice.{service} with {hops} relays: {exc}; retrying")
                    time.sleep(0.5)
            host, port = reply["forward"]["local"].rsplit(":", 1)
            paths[label][service] = (host, int(port))
    return paths


def pools_full(bob: LocalNode) -> bool:
    for fwd in bob.call("forwards")["forwards"]:
        if fwd["hops"] and sum(c["state"] == "open" for c in fwd["circuits"]) < SPARE_CIRCUITS:
            return False
    return True


def named_direct_ratios(rows: list[Row]) -> dict[str, float]:
    """Each relay figure over the named-direct forward's (the second baseline)."""
    by_metric = {r.metric: r for r in rows}
    out: dict[str, float] = {}
    for prefix in ("bulk one way", "new connection + 1-byte echo p50", "64-byte round trip p50"):
        base = by_metric.get(f"{prefix}, {PATHS[0]}")
        for hops in (1, 3, 5):
            row = by_metric.get(f"{prefix}, {PATHS[hops]}")
            if base and row and base.vx6 and row.vx6:
                out[f"{prefix}, {PATHS[hops]}"] = round(row.vx6 / base.vx6, 2)
    return out
