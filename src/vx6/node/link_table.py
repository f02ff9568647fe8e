"""The node's table of links: the admission policy applied to real links.

Theory of operation. `vx6.core.admission` decides, sans-IO, who may hold a link; this
module is the glue between it and the `LinkProtocol`s. Every link gets a number in the
admission table: an inbound connection is numbered and judged by its source address
*before* a LinkProtocol (handshake state, read buffer) is made for it, so a refused
connection costs one accept and one close. When a link's handshake completes the table
judges it again, now by key and trust (`TrustedKeys`); a refusal closes it with
RESOURCE_LIMIT. Whatever the table evicts to make room is closed the same way; the link's
own close path then calls `closed`, which forgets it.

Refusals and evictions go through RATELOG (a peer decides how many there are) and are
counted exactly: `links_refused_<reason>`, `links_evicted`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from vx6.core.admission import AdmissionLimits, AdmissionTable, Refuse
from vx6.crypto.keys import fingerprint
from vx6.errors import CloseCode
from vx6.net.addresses import format_endpoint
from vx6.net.link import LinkProtocol
from vx6.net.ports import SYSTEM_CLOCK, Clock
from vx6.net.ratelog import RATELOG
from vx6.store.memo import RegistryMemo
from vx6.store.registry import Registry

log = logging.getLogger("vx6.node")


class TrustedKeys:
    """Keys this node has reason to trust, asked once per inbound handshake: the --peer
    nodes it dialled (and remembered from earlier runs), owners its client pinned, and
    keys on its private services' allow-lists."""

    def __init__(self, registry: Registry, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.peer_keys: set[bytes] = set()
        self._registry = registry
        self._allow_lists: Callable[[], Iterable[frozenset[bytes]]] = tuple
        self._pins: RegistryMemo[str, frozenset[bytes]] = RegistryMemo(registry)

    def use_allow_lists(self, allow_lists: Callable[[], Iterable[frozenset[bytes]]]) -> None:
        """Where the private services' allow-lists come from (the owner side)."""
        self._allow_lists = allow_lists

    def remember_peers(self, peers: Iterable[tuple[str, int]]) -> None:
        """The keys our configured peers had when we last reached them: one of them may
        dial us before we get to dial it."""
        wanted = set(peers)
        for peer in self._registry.peers(limit=1000):
            if peer.key is not None and (peer.host, peer.port) in wanted:
                self.peer_keys.add(peer.key)

    def __call__(self, key: bytes) -> bool:
        if key in self.peer_keys:
            return True
        pins = self._pins.get("pins", self.clock.wall())
        if pins is None:
            pins = frozenset(k for _, k, _ in self._registry.pins())
            self._pins.put("pins", pins)
        return key in pins or any(key in allowed for allowed in self._allow_lists())


class LinkTable:
    """See the module docstring. A link that carries circuits is busy (never evicted as
    idle): `use_circuit_check` says how to tell (the router)."""

    def __init__(
        self,
        limits: AdmissionLimits,
        count: Callable[[str], None],
        is_trusted: Callable[[bytes], bool],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock
        self.admission: AdmissionTable[int] = AdmissionTable(limits, self._busy)
        self._carries_circuits: Callable[[LinkProtocol], bool] = lambda _: False
        self._count = count
        self._is_trusted = is_trusted
        self._ids: dict[LinkProtocol, int] = {}
        self._links: dict[int, LinkProtocol] = {}
        self._next_id = 0

    def use_circuit_check(self, carries_circuits: Callable[[LinkProtocol], bool]) -> None:
        self._carries_circuits = carries_circuits

    def admit(
        self, source: tuple[str, int], make_link: Callable[[], LinkProtocol]
    ) -> LinkProtocol | None:
        """An accepted connection from `source`: None (refused: close it), or the new
        link made for it, after closing what had to make room."""
        number = self._new_id()
        decision = self.admission.connected(number, source[0], source[1], self.clock.monotonic())
        if isinstance(decision, Refuse):
            self._refused(decision.reason, format_endpoint(*source))
            return None
        self._evict(decision.evicted)
        link = make_link()
        self._ids[link] = number
        self._links[number] = link
        return link

    def established(self, link: LinkProtocol) -> bool:
        """The handshake of `link` is done: keep it (True) or close it (False)."""
        key = link.peer_identity
        assert key is not None
        now = self.clock.monotonic()
        if link.core.initiator:  # a link we dialled: counted from now, never evicted
            number = self._new_id()
            decision = self.admission.dialled(number, now)
            if not isinstance(decision, Refuse):
                self._ids[link] = number
                self._links[number] = link
                decision = self.admission.authenticated(number, key, True, now)
        else:
            number = self._ids.get(link, 0)
            decision = self.admission.authenticated(number, key, self._is_trusted(key), now)
        if isinstance(decision, Refuse):
            self._refused(decision.reason, fingerprint(key))
            link.close(CloseCode.RESOURCE_LIMIT, f"link refused: {decision.reason}")
            return False
        self._evict(decision.evicted)
        return True

    def closed(self, link: LinkProtocol) -> None:
        number = self._ids.pop(link, None)
        if number is not None:
            self.admission.closed(number)
            del self._links[number]

    def touch(self, link: LinkProtocol) -> None:
        """`link` carried a stream or cells: the last to be evicted among the idle."""
        number = self._ids.get(link)
        if number is not None:
            self.admission.touch(number)

    def describe(self) -> dict[str, int]:
        return self.admission.describe()

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _busy(self, number: int) -> bool:
        # Busy: it carries a stream, or circuits this node relays or ends (an idle-looking
        # link of a relay's neighbour must not be evicted under its circuits).
        link = self._links.get(number)
        return link is not None and (len(link.core.streams) > 0 or self._carries_circuits(link))

    def _refused(self, reason: str, who: str) -> None:
        self._count("links_refused_" + reason.replace("-", "_"))
        RATELOG.warning(log, "link-refused-" + reason, "refused link from %s: %s", who, reason)

    def _evict(self, evicted: Sequence[int]) -> None:
        for number in evicted:
            link = self._links.get(number)
            if link is None:
                continue
            self._count("links_evicted")
            who = fingerprint(link.peer_identity) if link.peer_identity else link.peer_address
            RATELOG.info(log, "link-evicted", "evicting link %s: link table full", who)
            link.close(CloseCode.RESOURCE_LIMIT, "link table full: evicted")
