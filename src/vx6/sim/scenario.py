"""The simulation scenario: build a network, attack it, churn it, measure lookups.

Theory of operation, on one virtual clock (SimNetwork):

1. Honest nodes join one after another, each through a random node already in (ping,
   then a lookup of its own id), as a real node joins through `--bootstrap`.
2. Hostile nodes (`hostile` fraction of all nodes) get ids ground next to the DHT key
   of the name "alice" (closer to it than any honest node) and addresses from only
   `hostile_prefixes` IPv6 /48s (one operator's address blocks); they join the same way
   and then lie (see hostile.py).
3. A sample of honest nodes publish their signed node records; the owner of "alice"
   publishes its name claim (sequence 2; the hostile nodes hold its older sequence 1 to
   replay, and a corrupted sequence 3).
4. A `churn` fraction of the honest nodes vanish at once, without any table repair.
5. `lookups` value lookups, each from a random live honest node for the node record of a
   random publisher, then `name_lookups` value lookups of "alice", run a few at a time.

A record lookup succeeds when a valid copy of the record reaches the source; a name
lookup succeeds when the owner's current claim does (`name_key_rate` also counts
lookups that end with only the owner's key, which a replay of its older claim gives).
Rounds are the depth of the answer that delivered the record (initial contacts are
round 1).
"""

from __future__ import annotations

import ipaddress
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from vx6.core.dht import (
    DEFAULT_CONFIG,
    Address,
    Contact,
    DhtConfig,
    DhtNode,
    name_key,
    record_key,
)
from vx6.core.dht import events as ev
from vx6.core.records import make_record
from vx6.crypto.keys import Identity
from vx6.sim.hostile import STYLES, HostileNode
from vx6.sim.identities import SimIdentities
from vx6.sim.network import SimNetwork
from vx6.wire.records import Capability, Endpoint, NameClaimBody, NodeBody, decode_record

START = 1_700_000_000.0
PORT = 4242
HONEST_BASE = int(ipaddress.IPv6Address("2400::"))
HOSTILE_BASE = int(ipaddress.IPv6Address("2a00::"))
NAME = "alice"
DAY = 86400


@dataclass
class SimParams:
    nodes: int = 1000
    churn: float = 0.0
    hostile: float = 0.0
    lookups: int = 200
    name_lookups: int | None = None  # default: as many as `lookups`
    seed: int = 1
    hostile_prefixes: int = 8
    join_spacing: float = 0.02
    concurrent_lookups: int = 50
    config: DhtConfig = field(default_factory=lambda: DEFAULT_CONFIG)


@dataclass
class _Result:
    kind: str  # "record" or "name"
    wanted: bytes  # the raw record a success must deliver
    started: float
    found_rounds: int = 0
    found_rpcs: int = 0
    found_at: float | None = None
    found_records: tuple[bytes, ...] = ()
    finished: bool = False
    final_records: tuple[bytes, ...] = ()
    final_rounds: int = 0
    final_rpcs: int = 0


def _host(base: int, block: int, host: int) -> str:
    return str(ipaddress.IPv6Address(base + (block << 80) + host))


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


class Scenario:
    def __init__(self, params: SimParams) -> None:
        self.p = params
        self.rng = random.Random(params.seed)
        self.ids = SimIdentities(self.rng)
        self.net = SimNetwork(self.rng, START)
        self.net.sink = self._on_event
        self.results: dict[tuple[int, int], _Result] = {}
        self.refused: Counter[str] = Counter()
        self.honest: list[int] = []
        self.hostile: list[int] = []
        self.publishers: dict[int, Identity] = {}
        self.pending_joins = 0
        self.pending_publishes = 0
        self.n_hostile = round(params.hostile * params.nodes)
        self.n_honest = params.nodes - self.n_hostile
        self.name_key = name_key(NAME)
        self._claiming = -1
        self._stash: list[ev.RecordFound | ev.LookupFinished] = []
        self._running = 0
        self._started = 0
        self._refill: Callable[[], None] = lambda: None

    def _entropy(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def _on_event(self, index: int, event: ev.Event) -> None:
        if isinstance(event, ev.RecordRefused):
            self.refused[event.reason] += 1
        elif isinstance(event, ev.EquivocationDetected):
            self.refused["equivocation"] += 1
        elif isinstance(event, ev.PublishFinished):
            self.pending_publishes -= 1
        elif isinstance(event, ev.RecordFound | ev.LookupFinished):
            if isinstance(event, ev.LookupFinished) and event.target == self._node_id(index):
                self.pending_joins -= 1
            result = self.results.get((index, event.lookup_id))
            if result is not None:
                self._apply(result, event)
            elif index == self._claiming:
                self._stash.append(event)

    def _starter(self, source: int, target: bytes) -> Callable[[object, float], None]:
        def start(node: object, now: float) -> None:
            self._started = self._dht(source).find_value(target, now)

        return start

    def _apply(self, result: _Result, event: ev.RecordFound | ev.LookupFinished) -> None:
        if isinstance(event, ev.RecordFound):
            if result.found_at is None:
                result.found_rounds, result.found_rpcs = event.rounds, event.rpcs
                result.found_at = self.net.now
                result.found_records = event.records
        elif not result.finished:
            result.finished = True
            result.final_records = event.records
            result.final_rounds, result.final_rpcs = event.rounds, event.rpcs
            self._running -= 1
            self._refill()

    def _node_id(self, index: int) -> bytes:
        node = self.net.nodes[index]
        assert isinstance(node, DhtNode)
        return node.node_id

    def _dht(self, index: int) -> DhtNode:
        node = self.net.nodes[index]
        assert isinstance(node, DhtNode)
        return node

    # --- phases -----------------------------------------------------------------------

    def build(self) -> None:
        cfg = self.p.config
        count = min(self.n_honest, max(1, self.p.lookups))
        publishing = set(self.rng.sample(range(self.n_honest), count))
        for i in range(self.n_honest):
            identity = Identity(self.rng.randbytes(32)) if i in publishing else None
            creds = self.ids.credentials(None if identity is None else identity.public)
            node = DhtNode(creds, entropy=self._entropy, now=self.net.now, config=cfg)
            index = self.net.add(node, (_host(HONEST_BASE, i, 1), PORT))
            self.honest.append(index)
            if identity is not None:
                self.publishers[index] = identity
        self._join_all(self.honest)

    def _join_all(self, members: list[int]) -> None:
        base = self.net.now
        joined: list[int] = [i for i in self.honest if i not in members]
        for n, index in enumerate(members):
            if not joined:
                joined.append(index)
                continue
            via = self.net.addresses[self.rng.choice(joined)]
            joined.append(index)
            self.pending_joins += 1
            self.net.call_at(base + n * self.p.join_spacing, self._joiner(index, via))
        self.net.run(stop=lambda: self.pending_joins <= 0)

    def _joiner(self, index: int, via: Address) -> Callable[[], None]:
        def start() -> None:
            self.net.touch(index, lambda node, now: self._dht(index).bootstrap([via], now))

        return start

    def add_hostile(self, stale: bytes, junk: bytes) -> None:
        if self.n_hostile == 0:
            return
        target = int.from_bytes(self.name_key, "big")
        grind = math.ceil(math.log2(max(self.n_honest, 2))) + 8
        accomplices: list[Contact] = []
        prefixes = max(1, self.p.hostile_prefixes)
        for m in range(self.n_hostile):
            ground = (target ^ self.rng.getrandbits(256 - grind)).to_bytes(32, "big")
            address = (_host(HOSTILE_BASE, m % prefixes, m // prefixes + 1), PORT)
            node = HostileNode(
                self.ids.credentials(ground_id=ground),
                entropy=self._entropy,
                now=self.net.now,
                config=self.p.config,
                rng=self.rng,
                style=STYLES[m % len(STYLES)],
                accomplices=accomplices,
                stale_records={self.name_key: stale},
                junk_records={self.name_key: junk},
            )
            accomplices.append(Contact(ground, address))
            self.hostile.append(self.net.add(node, address))
        self._join_all(self.hostile)

    def publish(self, claims: list[bytes]) -> dict[int, bytes]:
        """Publishers' node records, then the name owner's claims; returns the node
        record published by each publisher."""
        published: dict[int, bytes] = {}
        base = self.net.now
        for n, (index, identity) in enumerate(self.publishers.items()):
            body = NodeBody(
                self.rng.randbytes(32),
                self.rng.randbytes(32),
                (Endpoint(self.net.addresses[index][0], PORT),),
                int(Capability.DHT),
            )
            _, raw = make_record(identity, body, 1, base, DAY)
            published[index] = raw
            self.pending_publishes += 1
            self.net.call_at(base + n * 0.01, self._publisher(index, raw))
        owner_index = self.rng.choice(self.honest)
        for raw in claims:
            self.pending_publishes += 1
            self.net.call_at(base + 1.0, self._publisher(owner_index, raw))
        self.net.run(stop=lambda: self.pending_publishes <= 0)
        return published

    def _publisher(self, index: int, raw: bytes) -> Callable[[], None]:
        def start() -> None:
            if self.net.alive[index]:
                self.net.touch(index, lambda node, now: self._dht(index).publish(raw, now))
            else:
                self.pending_publishes -= 1

        return start

    def churn(self) -> int:
        gone = self.rng.sample(self.honest, round(self.p.churn * self.n_honest))
        for index in gone:
            self.net.kill(index)
        return len(gone)

    def measure(self, jobs: list[tuple[str, bytes, bytes]]) -> None:
        """Run (kind, target, wanted record) value lookups from random live honest
        nodes, at most `concurrent_lookups` at a time."""
        live = [i for i in self.honest if self.net.alive[i]]
        queue = list(reversed(jobs))
        self._running = 0

        def refill() -> None:
            while queue and self._running < self.p.concurrent_lookups:
                kind, target, wanted = queue.pop()
                source = self.rng.choice(live)
                self._running += 1
                self._claiming = source
                self.net.touch(source, self._starter(source, target))
                self._claiming = -1
                result = self.results[(source, self._started)] = _Result(kind, wanted, self.net.now)
                for event in self._stash:
                    self._apply(result, event)
                self._stash.clear()

        self._refill = refill
        refill()
        self.net.run(stop=lambda: not queue and self._running == 0)


def _claims(owner: Identity, now: float) -> tuple[bytes, bytes, bytes]:
    """The owner's current claim, an older one (for replays) and a corrupted newer one."""
    _, old = make_record(owner, NameClaimBody(NAME, 0), 1, now - 3600, 2 * DAY)
    _, current = make_record(owner, NameClaimBody(NAME, 0), 2, now, 2 * DAY)
    _, newer = make_record(owner, NameClaimBody(NAME, 0), 3, now, 2 * DAY)
    corrupted = newer[:-1] + bytes([newer[-1] ^ 1])
    return current, old, corrupted


def run_simulation(params: SimParams) -> dict[str, object]:
    """Run the whole scenario (module docstring); return the figures as a dict."""
    wall = time.perf_counter()
    scenario = Scenario(params)
    scenario.build()
    built_at = time.perf_counter()
    owner = Identity(scenario.rng.randbytes(32))
    current, old, corrupted = _claims(owner, scenario.net.now)
    scenario.add_hostile(old, corrupted)
    published = scenario.publish([current])
    gone = scenario.churn()
    jobs: list[tuple[str, bytes, bytes]] = []
    targets = list(published.items())
    for _ in range(params.lookups):
        _, raw = scenario.rng.choice(targets)
        jobs.append(("record", record_key(decode_record(raw)), raw))
    name_lookups = params.lookups if params.name_lookups is None else params.name_lookups
    jobs += [("name", scenario.name_key, current)] * name_lookups
    scenario.measure(jobs)
    return _figures(
        scenario, params, gone, name_lookups, time.perf_counter() - wall, built_at - wall
    )


def _signer(raw: bytes) -> bytes:
    return decode_record(raw).signer


def _figures(
    sc: Scenario, p: SimParams, gone: int, name_lookups: int, wall: float, build_wall: float
) -> dict[str, object]:
    records = [r for r in sc.results.values() if r.kind == "record"]
    names = [r for r in sc.results.values() if r.kind == "name"]

    def delivered(r: _Result) -> bool:
        return r.wanted in r.found_records or r.wanted in r.final_records

    def owner_only(r: _Result) -> bool:
        seen = r.found_records + r.final_records
        signers = {_signer(raw) for raw in seen}
        return bool(seen) and signers == {_signer(r.wanted)}

    def rounds(r: _Result) -> float:
        return r.found_rounds if r.found_at is not None else r.final_rounds

    def rpcs(r: _Result) -> float:
        return r.found_rpcs if r.found_at is not None else r.final_rpcs

    latencies = [r.found_at - r.started for r in records if r.found_at is not None]
    tables = [len(sc._dht(i).table) for i in sc.honest if sc.net.alive[i]]
    retries = sum(sc._dht(i).stats["retried-with-token"] for i in sc.honest)
    ok = sum(delivered(r) for r in records)
    return {
        "nodes": p.nodes,
        "honest": sc.n_honest,
        "hostile": sc.n_hostile,
        "hostile_prefixes": p.hostile_prefixes if sc.n_hostile else 0,
        "churn": p.churn,
        "gone": gone,
        "lookups": len(records),
        "success_rate": round(ok / len(records), 4) if records else 1.0,
        "rounds_median": statistics.median([rounds(r) for r in records]) if records else 0,
        "rounds_p99": _percentile([rounds(r) for r in records], 99),
        "rpcs_median": statistics.median([rpcs(r) for r in records]) if records else 0,
        "rpcs_p99": _percentile([rpcs(r) for r in records], 99),
        "latency_median_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p99_s": round(_percentile(latencies, 99), 3) if latencies else None,
        "name_lookups": name_lookups,
        "name_success_rate": (
            round(sum(delivered(r) for r in names) / len(names), 4) if names else 1.0
        ),
        "name_key_rate": round(sum(owner_only(r) for r in names) / len(names), 4) if names else 1.0,
        "name_rounds_median": statistics.median([rounds(r) for r in names]) if names else 0,
        "name_rpcs_median": statistics.median([rpcs(r) for r in names]) if names else 0,
        "table_size_median": statistics.median(tables) if tables else 0,
        "refused": dict(sorted(sc.refused.items())),
        "token_retries": retries,  # FINDs asked again with the token (anti-amplification)
        "datagrams": sc.net.datagrams,
        "virtual_seconds": round(sc.net.now - START, 1),
        "build_seconds": round(build_wall, 1),
        "wall_seconds": round(wall, 1),
        "seed": p.seed,
    }
