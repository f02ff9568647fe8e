"""Network setup for bench_hidden.py: fourteen relays, a service owner, a client, forwards.

Theory of operation. `build_network` starts fourteen relays (`--relay`; the first, `hub`,
is everyone's bootstrap peer: a balanced path needs eleven distinct relays plus the
rendezvous point, and two spare ones let a relay die during the run), the owner `alice`
and the client `bob`, and returns once bob knows alice and every relay and alice knows
bob. `connect_forwards` gives bob one forward per service for every measured path: the
5-relay forward to alice's exposed services (the baseline of the same run) and the fast
and balanced profiles to her hidden services, which `create_hidden` makes with the real
`vx6 hidden create` and a reload. Helpers read what the nodes say about hidden services:
`hidden_of` (the owner's `hidden` op), `path_setup_ms` (the client's per-step timings of
the newest joined path, from the `forwards` op). The service's profile sets its side of
the path, so each profile has its own hidden services (`hs-echo-fast`, ...).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import _load

from vx6.app.localnet import LocalNet, LocalNode, relays_known, wait_for
from vx6.errors import VX6Error

RELAYS = 14
SETUP_TIMEOUT = 60.0
DIRECT = "direct"
RELAYED = "5 relays"
FAST = "hidden fast"
BALANCED = "hidden balanced"
PROFILES = {FAST: "fast", BALANCED: "balanced"}
PATHS = (RELAYED, FAST, BALANCED)


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
        lambda: (
            knows(bob, "alice")
            and relays_known(bob, RELAYS)
            and relays_known(alice, RELAYS)
            and knows(alice, "bob")
        ),
        SETUP_TIMEOUT,
        f"alice and bob to learn {RELAYS} relays and each other",
        interval=0.1,
    )
    return alice, bob, {r.name: r for r in relays}


def hidden_of(owner: LocalNode, name: str) -> dict[str, Any] | None:
    for service in owner.call("hidden")["hidden"]:
        if service["name"] == name:
            return dict(service)
    return None


def create_hidden(owner: LocalNode, name: str, target: _load.Addr, profile: str = "fast") -> str:
    """`vx6 hidden create NAME --target HOST:PORT --public --profile P` and a reload;
    returns the alias."""
    host, port = target
    argv = ("--target", f"{host}:{port}", "--public", "--profile", profile)
    done = owner.cli("hidden", "create", name, *argv)
    if done.returncode != 0:
        raise VX6Error(f"hidden create {name}: {done.stderr.decode()[-500:]}")
    owner.call("reload")
    return done.stdout.decode().strip()


def remove_hidden(owner: LocalNode, name: str) -> None:
    owner.cli("hidden", "remove", name, "--yes")
    owner.call("reload")


def reachable(owner: LocalNode, name: str) -> bool:
    service = hidden_of(owner, name)
    return bool(service and service.get("reachable"))


def connect(bob: LocalNode, service: str, name: str, **extra: Any) -> _load.Addr:
    """A forward at bob, retried for a while (a relay may still be linking up)."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    while True:
        try:
            reply = bob.call(
                "connect", timeout=SETUP_TIMEOUT, service=service, name=name, local="0", **extra
            )
            break
        except VX6Error as exc:
            if time.monotonic() > deadline:
                raise
            log(f"connect {name}: {exc}; retrying")
            time.sleep(0.5)
    host, port = reply["forward"]["local"].rsplit(":", 1)
    return host, int(port)


def hidden_name(service: str, profile: str) -> str:
    return f"hs-{service}-{profile}"


def alice_hidden_names(targets: dict[str, _load.Addr]) -> list[str]:
    return [hidden_name(s, p) for s in targets for p in PROFILES.values()]


def connect_forwards(
    alice: LocalNode, bob: LocalNode, targets: dict[str, _load.Addr]
) -> tuple[dict[str, dict[str, _load.Addr]], dict[tuple[str, str], str]]:
    """Expose the targets at alice (for the 5-relay forward) and make them hidden
    services too, one per profile (the service picks its side of the path); one forward
    at bob per service and path. Returns the paths and the aliases by (service, profile)."""
    aliases: dict[tuple[str, str], str] = {}
    for name, (host, port) in targets.items():
        alice.call("expose", name=name, target=f"{host}:{port}", allow=["bob"])
        for profile in PROFILES.values():
            hidden = hidden_name(name, profile)
            aliases[name, profile] = create_hidden(alice, hidden, (host, port), profile)
    wait_for(
        lambda: all(reachable(alice, n) for n in alice_hidden_names(targets)),
        SETUP_TIMEOUT,
        "alice's hidden services to be reachable",
        interval=0.1,
    )
    paths: dict[str, dict[str, _load.Addr]] = {DIRECT: dict(targets)}
    paths[RELAYED] = {s: connect(bob, f"alice.{s}", f"{s}-5", hops=5) for s in targets}
    for label, profile in PROFILES.items():
        paths[label] = {
            s: connect(bob, aliases[s, profile], f"{s}-{profile}", profile=profile) for s in targets
        }
    return paths, aliases


def path_setup_ms(client: LocalNode, forward: str, profile: str) -> dict[str, float]:
    """The per-step times (ms) of the newest joined path of a hidden forward's profile
    (the client lists the paths to an alias oldest first)."""
    newest: dict[str, float] = {}
    for fwd in client.call("forwards")["forwards"]:
        if fwd["name"] == forward:
            for path in fwd.get("circuits", []):
                if path.get("profile") == profile and path.get("setup_ms"):
                    newest = dict(path["setup_ms"])
    return newest


def active_intro_relays(owner: LocalNode, name: str) -> list[str]:
    service = hidden_of(owner, name) or {}
    return [i["relay"] for i in service.get("intros", []) if i["role"] == "active"]
