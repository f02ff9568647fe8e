"""Who gets a link: the admission policy for the node's link table (sans-IO).

Theory of operation. Every link the node holds is an entry here, keyed by an opaque
handle (the node numbers its links, vx6/link_table.py). It asks twice per inbound link:

* `connected(handle, host, port, now)` when TCP accepts it, before any handshake state
  exists: only the source address is known;
* `authenticated(handle, key, trusted, now)` when its handshake completes: now the peer's
  identity key is known, and whether the node has reason to trust it.

Links we dial are `dialled(handle, now)`: our own choice, so they count as trusted. Each
call answers `Admit(evicted)` (the handles in `evicted` left the table and the daemon
must close them) or `Refuse(reason)` (the newcomer is not in the table; close it). The
reason is a short category name for the rate-limited log and the counters. (`now` is
passed for the record; no rule depends on time yet.)

The bounds, all in `AdmissionLimits`:

* pending (not yet authenticated) inbound connections: at most `pending_per_source`
  from one host and `pending_total` in all; at the total the *oldest* pending one is
  evicted, so a slowloris cannot hold the door shut: an honest handshake finishes in
  milliseconds and would have to be outlived by `pending_total` newer connections.
* inbound links (pending or authenticated) per source: `links_per_host` from one IPv6
  /64 or IPv4 /32, `links_per_network` from one /48 or /24; beyond them newcomers are
  refused. Hosts in `per_port_networks` (loopback and the test prefixes by default, as
  for the DHT's caps) count per address and port, so many honest nodes on one test host
  are not one source.
* inbound links per identity key: `links_per_key`; at it the key's own least recently
  used idle link gives way (a restarted client replaces its stale link).
* all links: `max_links`. Untrusted authenticated links may fill only
  `max_links - reserved_links`; the rest is kept for trusted keys and our own dials.
  At a bound the least useful link is evicted instead of refusing: pending ones first
  (oldest first), then idle untrusted inbound links, least recently used first. Idle
  means no open stream (the `busy` callable, asked at eviction time); use (`touch`)
  moves a link to the back of the queue. Trusted and outbound links are never evicted.

So a trusted key is never refused for room while an untrusted pending or idle link
exists, and the table never holds more than `max_links` entries (property-tested in
tests/unit/test_admission.py).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar

from vx6.errors import UsageError

H = TypeVar("H", bound=Hashable)
K = TypeVar("K", str, bytes)

PER_PORT_NETWORKS = ("127.0.0.0/8", "::1/128", "fd76:7836::/48", "198.18.0.0/15")


@dataclass(frozen=True)
class AdmissionLimits:
    max_links: int = 1024
    reserved_links: int = 64
    pending_total: int = 256
    pending_per_source: int = 8
    links_per_host: int = 32
    links_per_network: int = 128
    links_per_key: int = 4
    per_port_networks: tuple[str, ...] = PER_PORT_NETWORKS

    def __post_init__(self) -> None:
        for name in (
            "max_links",
            "pending_total",
            "pending_per_source",
            "links_per_host",
            "links_per_network",
            "links_per_key",
        ):
            if getattr(self, name) < 1:
                raise UsageError(f"link_limits: {name} must be at least 1")
        if not 0 <= self.reserved_links < self.max_links:
            raise UsageError("link_limits: reserved_links must be from 0 to max_links - 1")
        for text in self.per_port_networks:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError as exc:
                raise UsageError(f"link_limits: per_port_networks: {exc}") from None


@dataclass(frozen=True)
class Admit(Generic[H]):
    evicted: tuple[H, ...] = ()


@dataclass(frozen=True)
class Refuse:
    reason: str


Decision = Admit[H] | Refuse


@dataclass
class _Entry:
    host_source: str | None = None  # None: an outbound link
    network_source: str | None = None
    key: bytes | None = None
    trusted: bool = False


class _Tally(Generic[K]):
    """How many entries count against each source or key; zero counts are dropped, so
    the table is as small as what it counts."""

    def __init__(self) -> None:
        self._counts: dict[K, int] = {}

    def add(self, what: K | None, delta: int) -> None:
        if what is None:
            return
        n = self._counts.get(what, 0) + delta
        if n > 0:
            self._counts[what] = n
        else:
            self._counts.pop(what, None)

    def get(self, what: K | None) -> int:
        return 0 if what is None else self._counts.get(what, 0)

    def __len__(self) -> int:
        return len(self._counts)


class AdmissionTable(Generic[H]):
    def __init__(
        self, limits: AdmissionLimits | None = None, busy: Callable[[H], bool] | None = None
    ) -> None:
        self.limits = limits or AdmissionLimits()
        self._busy = busy or (lambda handle: False)
        self._sources = _SourceMap(self.limits.per_port_networks)
        self._entries: dict[H, _Entry] = {}
        self._pending: OrderedDict[H, None] = OrderedDict()  # inbound, oldest first
        self._untrusted: OrderedDict[H, None] = OrderedDict()  # least recently used first
        self._pending_by_host: _Tally[str] = _Tally()
        self._inbound_by_host: _Tally[str] = _Tally()
        self._inbound_by_network: _Tally[str] = _Tally()
        self._inbound_by_key: _Tally[bytes] = _Tally()

    # ------------------------------------------------------------------ questions
    def connected(self, handle: H, host: str, port: int, now: float) -> Decision[H]:
        """An inbound TCP connection from (host, port), nothing read from it yet."""
        limits = self.limits
        host_source, network_source = self._sources.of(host, port)
        if self._pending_by_host.get(host_source) >= limits.pending_per_source:
            return Refuse("pending-per-source")
        if self._inbound_by_host.get(host_source) >= limits.links_per_host:
            return Refuse("links-per-host")
        if self._inbound_by_network.get(network_source) >= limits.links_per_network:
            return Refuse("links-per-network")
        evicted: list[H] = []
        if len(self._pending) >= limits.pending_total:
            evicted.append(self._remove(next(iter(self._pending))))
        if len(self._entries) >= limits.max_links:
            victim = self._room_victim()
            if victim is None:
                return Refuse("links-full")
            evicted.append(self._remove(victim))
        self._entries[handle] = _Entry(host_source, network_source)
        self._pending[handle] = None
        self._pending_by_host.add(host_source, 1)
        self._inbound_by_host.add(host_source, 1)
        self._inbound_by_network.add(network_source, 1)
        return Admit(tuple(evicted))

    def dialled(self, handle: H, now: float) -> Decision[H]:
        """A link we are about to dial (our choice: trusted, never evicted)."""
        evicted: list[H] = []
        if len(self._entries) >= self.limits.max_links:
            victim = self._room_victim()
            if victim is None:
                return Refuse("links-full")
            evicted.append(self._remove(victim))
        self._entries[handle] = _Entry(trusted=True)
        return Admit(tuple(evicted))

    def authenticated(self, handle: H, key: bytes, trusted: bool, now: float) -> Decision[H]:
        """The handshake of `handle` finished: the peer holds `key`. On a refusal the
        handle has left the table."""
        entry = self._entries.get(handle)
        if entry is None:
            return Refuse("unknown-link")  # evicted meanwhile: the daemon closes it
        if entry.host_source is None:  # outbound: admitted when we dialled
            entry.key = key
            return Admit()
        del self._pending[handle]
        self._pending_by_host.add(entry.host_source, -1)
        evicted: list[H] = []
        if self._inbound_by_key.get(key) >= self.limits.links_per_key:
            victim = self._first_idle(
                h for h, e in self._entries.items() if e.key == key and e.host_source is not None
            )
            if victim is None:
                self._remove(handle)
                return Refuse("links-per-key")
            evicted.append(self._remove(victim))
        if not trusted:
            if len(self._untrusted) >= self.limits.max_links - self.limits.reserved_links:
                victim = self._first_idle(self._untrusted)
                if victim is None:
                    self._remove(handle)
                    return Refuse("links-untrusted-full")
                evicted.append(self._remove(victim))
            self._untrusted[handle] = None
        entry.key, entry.trusted = key, trusted
        self._inbound_by_key.add(key, 1)
        return Admit(tuple(evicted))

    # ------------------------------------------------------------------ updates
    def touch(self, handle: H) -> None:
        """`handle` did useful work: it goes to the back of the eviction queue."""
        if handle in self._untrusted:
            self._untrusted.move_to_end(handle)

    def closed(self, handle: H) -> None:
        """The link is gone (idempotent: an evicted or refused handle is already out)."""
        if handle in self._entries:
            self._remove(handle)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, handle: object) -> bool:
        return handle in self._entries

    def is_trusted(self, handle: H) -> bool:
        entry = self._entries.get(handle)
        return entry is not None and entry.trusted

    def describe(self) -> dict[str, int]:
        return {
            "links": len(self._entries),
            "pending": len(self._pending),
            "untrusted": len(self._untrusted),
            "trusted": len(self._entries) - len(self._pending) - len(self._untrusted),
            "max_links": self.limits.max_links,
        }

    # ------------------------------------------------------------------ internals
    def _room_victim(self) -> H | None:
        """Who leaves when the table is full: the oldest pending link, else the least
        recently used idle untrusted one."""
        if self._pending:
            return next(iter(self._pending))
        return self._first_idle(self._untrusted)

    def _first_idle(self, candidates: Iterable[H]) -> H | None:
        """The first of `candidates` with no open stream; busy ones passed on the way
        go to the back of the queue (they were in use until now)."""
        busy: list[H] = []
        found: H | None = None
        for handle in candidates:
            if self._busy(handle):
                busy.append(handle)
            else:
                found = handle
                break
        for handle in busy:
            self.touch(handle)
        return found

    def _remove(self, handle: H) -> H:
        entry = self._entries.pop(handle)
        if handle in self._pending:
            del self._pending[handle]
            self._pending_by_host.add(entry.host_source, -1)
        self._untrusted.pop(handle, None)
        if entry.host_source is not None:
            self._inbound_by_host.add(entry.host_source, -1)
            self._inbound_by_network.add(entry.network_source, -1)
            if entry.key is not None:
                self._inbound_by_key.add(entry.key, -1)
        return handle


class _SourceMap:
    """The (host, network) a source address counts against: IPv6 /64 and /48, IPv4 /32
    and /24 (an IPv4-mapped IPv6 address is IPv4); in a per-port network both are the
    address and port, and a host name that is not an address is itself."""

    def __init__(self, per_port: Iterable[str]) -> None:
        self._per_port = tuple(ipaddress.ip_network(n, strict=False) for n in per_port)
        self.of = lru_cache(maxsize=4096)(self._of)

    def _of(self, host: str, port: int) -> tuple[str, str]:
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return host, host
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr in net for net in self._per_port if net.version == addr.version):
            where = f"{addr}|{port}"
            return where, where
        host_bits, network_bits = (64, 48) if addr.version == 6 else (32, 24)
        return (
            str(ipaddress.ip_network(f"{addr}/{host_bits}", strict=False)),
            str(ipaddress.ip_network(f"{addr}/{network_bits}", strict=False)),
        )
