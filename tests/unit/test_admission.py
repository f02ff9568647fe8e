"""The link admission policy (vx6.core.admission) in-process: hand-written cases for each
bound, and a hypothesis state machine that connects, authenticates, dials, closes and
keeps links busy at random and checks every bound and the eviction rules after each
step."""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from vx6.core.admission import AdmissionLimits, AdmissionTable, Admit, Refuse
from vx6.errors import UsageError
from vx6.node.link_table import LinkTable, TrustedKeys
from vx6.store.config import load_config
from vx6.store.registry import Registry

SMALL = AdmissionLimits(
    max_links=8,
    reserved_links=2,
    pending_total=4,
    pending_per_source=2,
    links_per_host=3,
    links_per_network=5,
    links_per_key=2,
)


def table(limits: AdmissionLimits = SMALL, busy: set[int] | None = None) -> AdmissionTable[int]:
    held = busy if busy is not None else set()
    return AdmissionTable(limits, busy=lambda h: h in held)


def test_pending_per_source_is_refused_while_another_source_is_admitted() -> None:
    t = table()
    assert t.connected(1, "2001:db8::1", 5000, 0.0) == Admit()
    assert t.connected(2, "2001:db8::2", 5001, 0.0) == Admit()  # same /64
    assert t.connected(3, "2001:db8::3", 5002, 0.0) == Refuse("pending-per-source")
    assert t.connected(4, "2001:db8:1::1", 5003, 0.0) == Admit()  # another /64


def test_links_per_host_and_network_count_authenticated_links_too() -> None:
    t = table()
    for h in (1, 2, 3):
        assert isinstance(t.connected(h, "192.0.2.7", 6000 + h, 0.0), Admit)
        assert isinstance(t.authenticated(h, bytes([h]) * 32, False, 0.0), Admit)
    assert t.connected(4, "192.0.2.7", 7000, 0.0) == Refuse("links-per-host")
    assert isinstance(t.connected(5, "192.0.2.8", 7000, 0.0), Admit)  # same /24, other /32
    assert isinstance(t.connected(6, "192.0.2.9", 7000, 0.0), Admit)
    assert t.connected(7, "192.0.2.10", 7000, 0.0) == Refuse("links-per-network")
    assert isinstance(t.connected(8, "198.51.100.1", 7000, 0.0), Admit)
    t.closed(1)
    assert isinstance(t.connected(9, "192.0.2.7", 7001, 0.0), Admit)


def test_ipv4_mapped_addresses_count_as_ipv4() -> None:
    t = table()
    assert isinstance(t.connected(1, "::ffff:192.0.2.7", 1, 0.0), Admit)
    assert isinstance(t.connected(2, "192.0.2.7", 2, 0.0), Admit)
    assert t.connected(3, "::ffff:192.0.2.7", 3, 0.0) == Refuse("pending-per-source")


def test_loopback_and_test_prefixes_count_per_address_and_port() -> None:
    t = table(AdmissionLimits(max_links=64, pending_total=32, reserved_links=0))
    for port in range(20):
        assert isinstance(t.connected(port, "::1", 40000 + port, 0.0), Admit)
        assert isinstance(t.connected(100 + port, "fd76:7836::5", 40000 + port, 0.0), Admit)
    # the same address and port twice is the same source, and is capped
    t2 = table(AdmissionLimits(per_port_networks=()))
    for h in range(8):
        assert isinstance(t2.connected(h, "::1", 40000 + h, 0.0), Admit)
    assert t2.connected(9, "::1", 50000, 0.0) == Refuse("pending-per-source")


def test_the_oldest_pending_connection_gives_way_at_the_pending_total() -> None:
    t = table()
    for h in range(4):
        assert t.connected(h, f"2001:db8:{h}::1", 1, 0.0) == Admit()
    assert t.connected(4, "2001:db8:9::1", 1, 0.0) == Admit((0,))
    assert 0 not in t and 4 in t
    t.closed(0)  # the daemon's close comes back later: harmless


def test_a_full_table_evicts_an_idle_untrusted_link_and_keeps_the_reserve() -> None:
    busy: set[int] = set()
    t = table(busy=busy)
    for h in range(6):  # max 8 - reserved 2 untrusted links
        assert isinstance(t.connected(h, f"2001:db8:{h}::1", 1, 0.0), Admit)
        assert t.authenticated(h, bytes([h]) * 32, False, 0.0) == Admit()
    busy.update({0, 1})
    t.touch(3)
    # an untrusted newcomer takes the place of the least recently used idle one: not the
    # busy 0 and 1, not 3 (just used), so 2
    assert t.connected(6, "2001:db8:6::1", 1, 0.0) == Admit()
    assert t.authenticated(6, b"\x06" * 32, False, 0.0) == Admit((2,))
    # trusted keys use the reserve without evicting anyone
    for h in (7, 8):
        assert t.connected(h, f"2001:db8:{h}::1", 1, 0.0) == Admit()
        assert t.authenticated(h, bytes([h]) * 32, True, 0.0) == Admit()
    assert len(t) == 8
    # full: a newcomer (trust unknown yet) evicts the least useful idle untrusted link
    assert t.connected(9, "2001:db8:9::1", 1, 0.0) == Admit((4,))
    assert t.authenticated(9, b"\x09" * 32, True, 0.0) == Admit()
    # every untrusted link busy: now a newcomer is refused, and nothing trusted goes
    busy.update({3, 5, 6})
    assert t.connected(10, "2001:db8:a::1", 1, 0.0) == Refuse("links-full")
    assert t.dialled(11, 0.0) == Refuse("links-full")


def test_untrusted_keys_never_take_the_reserve() -> None:
    busy = set(range(6))
    t = table(busy=busy)
    for h in range(6):
        t.connected(h, f"2001:db8:{h}::1", 1, 0.0)
        assert t.authenticated(h, bytes([h]) * 32, False, 0.0) == Admit()
    t.connected(6, "2001:db8:6::1", 1, 0.0)
    t.connected(7, "2001:db8:7::1", 1, 0.0)
    assert t.authenticated(6, b"\x06" * 32, False, 0.0) == Refuse("links-untrusted-full")
    assert 6 not in t
    assert t.authenticated(7, b"\x07" * 32, True, 0.0) == Admit()


def test_a_restarted_client_replaces_its_own_idle_link_at_the_per_key_cap() -> None:
    busy: set[int] = set()
    t = table(busy=busy)
    key = b"\x01" * 32
    for h in (1, 2):
        t.connected(h, f"2001:db8:{h}::1", 1, 0.0)
        assert t.authenticated(h, key, False, 0.0) == Admit()
    busy.add(1)
    t.connected(3, "2001:db8:3::1", 1, 0.0)
    assert t.authenticated(3, key, False, 0.0) == Admit((2,))
    busy.add(3)
    t.connected(4, "2001:db8:4::1", 1, 0.0)
    assert t.authenticated(4, key, True, 0.0) == Refuse("links-per-key")
    assert 4 not in t


def test_outbound_links_are_never_evicted() -> None:
    t = table()
    for h in range(8):
        assert t.dialled(h, 0.0) == Admit()
        assert t.authenticated(h, bytes([h]) * 32, False, 0.0) == Admit()
    assert t.connected(100, "2001:db8::1", 1, 0.0) == Refuse("links-full")


def test_limits_are_validated() -> None:
    with pytest.raises(UsageError):
        AdmissionLimits(max_links=4, reserved_links=4)
    with pytest.raises(UsageError):
        AdmissionLimits(links_per_key=0)
    with pytest.raises(UsageError):
        AdmissionLimits(per_port_networks=("not-a-network",))


def test_limits_are_read_from_config_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[link_limits]\nmax_links = 16\nlinks_per_key = 2\nper_port_networks = []\n")
    limits = load_config(path).link_limits
    assert (limits.max_links, limits.reserved_links, limits.links_per_key) == (16, 4, 2)
    assert limits.per_port_networks == () and limits.pending_total == 256
    assert load_config(tmp_path / "absent.toml").link_limits == AdmissionLimits()
    for bad in ("max_links = 0", "max_link = 5", "links_per_key = true", 'per_port_networks = "x"'):
        path.write_text(f"[link_limits]\n{bad}\n")
        with pytest.raises(UsageError):
            load_config(path)


def test_trusted_keys_come_from_peers_pins_and_allow_lists(tmp_path: Path) -> None:
    peer, pinned, allowed, later, stranger = (bytes([i]) * 32 for i in range(1, 6))
    with Registry(tmp_path / "registry.sqlite") as registry:
        registry.upsert_peer("2001:db8::7", 4242, 1.0, key=peer)
        registry.upsert_peer("2001:db8::8", 4242, 1.0, key=stranger)  # not a --peer
        registry.set_pin("alice", pinned, 1.0)
        trusted = TrustedKeys(registry)
        trusted.use_allow_lists(lambda: [frozenset({allowed})])
        trusted.remember_peers([("2001:db8::7", 4242)])
        assert trusted(peer) and trusted(pinned) and trusted(allowed)
        assert not trusted(stranger) and not trusted(later)
        registry.set_pin("bob", later, 2.0)  # a pin made later counts at once
        assert trusted(later)


HOSTS = (
    "2001:db8::1",
    "2001:db8::2",
    "2001:db8:0:1::1",
    "2001:db8:1::1",
    "2001:db9::1",
    "192.0.2.1",
    "192.0.2.2",
    "::ffff:192.0.2.1",
    "198.51.100.1",
    "127.0.0.1",
    "::1",
)
KEYS = tuple(bytes([i]) * 32 for i in range(10))
TRUSTED_KEYS = frozenset(KEYS[:2])


def _sources(host: str, port: int) -> tuple[str, str]:
    addr = ipaddress.ip_address(host)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return f"{addr}|{port}", f"{addr}|{port}"
    bits = (64, 48) if addr.version == 6 else (32, 24)
    return tuple(  # type: ignore[return-value]
        str(ipaddress.ip_network(f"{addr}/{b}", strict=False)) for b in bits
    )


class AdmissionMachine(RuleBasedStateMachine):
    """A model of what is in the table, checked against every bound after each step."""

    @initialize()
    def start(self) -> None:
        self.busy: set[int] = set()
        self.table = table(busy=self.busy)
        self.next = 0
        self.inbound: dict[int, tuple[str, str]] = {}  # handle -> (host, network) source
        self.pending: set[int] = set()
        self.keys: dict[int, bytes] = {}  # authenticated handle -> key
        self.trusted: set[int] = set()  # trusted or outbound

    def _apply_evictions(self, decision: Admit[int] | Refuse, key: bytes | None = None) -> None:
        if not isinstance(decision, Admit):
            return
        for h in decision.evicted:
            assert h in self.inbound, "only inbound links are evicted"
            # a trusted link gives way only to a newer link of its own key
            assert h not in self.trusted or self.keys[h] == key, "a trusted link was evicted"
            assert h in self.pending or h not in self.busy, "a busy link was evicted"
            assert h not in self.table
            self._forget(h)

    def _forget(self, h: int) -> None:
        self.inbound.pop(h, None)
        self.pending.discard(h)
        self.keys.pop(h, None)
        self.trusted.discard(h)
        self.busy.discard(h)

    def _evictable_exists(self) -> bool:
        return bool(self.pending) or any(
            h not in self.busy and h not in self.trusted for h in self.keys if h in self.inbound
        )

    @precondition(lambda self: len(self.pending) < 3)  # room to authenticate, too
    @rule(host=st.sampled_from(HOSTS), port=st.integers(1, 3))
    def connect(self, host: str, port: int) -> None:
        h, self.next = self.next, self.next + 1
        evictable = self._evictable_exists()
        decision = self.table.connected(h, host, port, 0.0)
        if isinstance(decision, Refuse):
            if decision.reason == "links-full":
                assert not evictable, "refused for room while an evictable link exists"
            assert h not in self.table
            return
        self._apply_evictions(decision)
        self.inbound[h] = _sources(host, port)
        self.pending.add(h)

    @rule(host=st.sampled_from(HOSTS), port=st.integers(1, 3))
    def connect_in_a_flood(self, host: str, port: int) -> None:
        self.connect(host, port)

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def authenticate(self, data: st.DataObject, key: bytes) -> None:
        h = data.draw(st.sampled_from(sorted(self.pending)))
        trusted = key in TRUSTED_KEYS
        same_key_idle = any(
            k == key and g not in self.busy and g in self.inbound for g, k in self.keys.items()
        )
        decision = self.table.authenticated(h, key, trusted, 0.0)
        if isinstance(decision, Refuse):
            assert h not in self.table
            if trusted:
                assert decision.reason == "links-per-key" and not same_key_idle
            self._forget(h)
            return
        self._apply_evictions(decision, key)
        self.pending.discard(h)
        self.keys[h] = key
        if trusted:
            self.trusted.add(h)

    @precondition(lambda self: len(self.trusted - set(self.inbound)) < 2)  # a few dials
    @rule()
    def dial(self) -> None:
        h, self.next = self.next, self.next + 1
        evictable = self._evictable_exists()
        decision = self.table.dialled(h, 0.0)
        if isinstance(decision, Refuse):
            assert not evictable
            return
        self._apply_evictions(decision)
        self.trusted.add(h)
        assert self.table.authenticated(h, KEYS[-1], False, 0.0) == Admit()
        self.keys[h] = KEYS[-1]

    def _handles(self) -> list[int]:
        return sorted(set(self.inbound) | self.trusted)

    @precondition(lambda self: bool(self.inbound or self.trusted))
    @rule(data=st.data())
    def make_busy(self, data: st.DataObject) -> None:
        self.set_busy(data, True)

    @precondition(lambda self: bool(self.inbound or self.trusted))
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self._handles()))
        self.table.closed(h)
        self.table.closed(h)  # idempotent
        self._forget(h)

    @precondition(lambda self: bool(self.inbound or self.trusted))
    @rule(data=st.data(), busy=st.booleans())
    def set_busy(self, data: st.DataObject, busy: bool) -> None:
        h = data.draw(st.sampled_from(self._handles()))
        if busy:
            self.busy.add(h)
            self.table.touch(h)
        else:
            self.busy.discard(h)

    @invariant()
    def bounds_hold(self) -> None:
        t, limits = self.table, SMALL
        assert len(t) == len(set(self.inbound) | self.trusted) <= limits.max_links
        assert len(self.pending) <= limits.pending_total
        untrusted = [h for h in self.keys if h in self.inbound and h not in self.trusted]
        assert len(untrusted) <= limits.max_links - limits.reserved_links
        by_host = Counter(src[0] for src in self.inbound.values())
        by_network = Counter(src[1] for src in self.inbound.values())
        pending_by_host = Counter(self.inbound[h][0] for h in self.pending)
        by_key = Counter(k for h, k in self.keys.items() if h in self.inbound)
        assert max(by_host.values(), default=0) <= limits.links_per_host
        assert max(by_network.values(), default=0) <= limits.links_per_network
        assert max(pending_by_host.values(), default=0) <= limits.pending_per_source
        assert max(by_key.values(), default=0) <= limits.links_per_key
        assert t.describe()["pending"] == len(self.pending)


AdmissionMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=80)
test_admission_machine = AdmissionMachine.TestCase


def test_a_link_that_carries_circuits_is_busy_and_not_evicted() -> None:
    """The node's link table asks the circuit router too: a relay's neighbour with no
    stream but circuits through it is not an idle link."""

    class Core:
        streams: dict[int, object] = {}

    class Link:
        core = Core()

    with_circuits, without = Link(), Link()
    links = LinkTable(AdmissionLimits(), lambda _: None, lambda _: False)
    links.use_circuit_check(lambda link: link is with_circuits)
    links._links = {1: with_circuits, 2: without}  # type: ignore[dict-item]
    assert links._busy(1)
    assert not links._busy(2)
