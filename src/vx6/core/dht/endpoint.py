"""The serving half of a DHT node: the inbound pipeline, requests we answer, requests we
have outstanding. `DhtNode` (node.py) adds the work a node starts on its own.

Theory of operation: the adapter feeds `datagram_received(data, source, now)` and
`handle_timer(now)`, then drains `datagrams_to_send()` (address, bytes) and `events()`
and asks `next_timer()` when to call again. Randomness comes from the `entropy`
callable; there is no clock, socket or OS randomness here.

Every inbound datagram goes through, cheapest first: size (<= 1232), the per-source
rate limit, the canonical parse, then (responses only) a match against an outstanding
request to that very address, then the signature by the sender key it carries. Only
then is the sender's id (the hash of that key) trusted and the sender admitted to the
routing table under the address it spoke from. A response whose key does not hash to
the id we asked counts as a failure of that id: nobody answers under an id whose key it
does not hold.

Requests we serve: PING (answered with the address we saw), FIND_NODE (the k closest
contacts, at most `prefix_cap_answer` per /48 or /24, plus a store token for the
requester's address), FIND_VALUE (the records held under the key, else as FIND_NODE),
STORE (a valid token first, then the record rules of `values.check_value`). Every
refusal is counted in `stats`; refused records are also reported as events.

Anti-amplification (guards.ProvenSources). A source has proved its address if it
answered a request of ours or echoed a token we issued to its IP (in a FIND or a
STORE); only then is it admitted to the routing table, and only then may an answer be
larger than the request that asked for it. An unproved FIND_NODE / FIND_VALUE gets a
NODES answer cut to the request's size: for a plain 138-byte request that is the token
and no contacts (123 bytes), which the requester takes as "retry with the token": it
sends the request once more with the token (`Pending.retried`), is proved, and gets the
full answer. Our own requests echo the token a responder gave us (guards.PeerTokens),
so the retry is paid once per responder and token lifetime, and our PINGs are padded
to the size of any PONG. A spoofed source never sees the token, so it can only ever
reflect as many bytes as the spoofer sent.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from vx6.core.budget import SourceLimiter
from vx6.core.dht import events as ev
from vx6.core.dht.config import DEFAULT_CONFIG, DhtConfig
from vx6.core.dht.contacts import Address, Contact, normalize_host, prefix_of
from vx6.core.dht.directory import sample, store_source_ok
from vx6.core.dht.guards import PeerTokens, ProvenSources, TokenIssuer
from vx6.core.dht.keys import Credentials, is_relay_directory_key
from vx6.core.dht.routing import Added, RoutingTable
from vx6.core.dht.values import REASON_FULL, Checked, Held, Outcome, RecordStore
from vx6.errors import DecodeError
from vx6.wire import dht as wire


class Purpose(Enum):
    PING = "ping"  # bootstrap or a manual ping: no id expected
    PROBE = "probe"  # ping-before-evict
    LOOKUP = "lookup"
    PUBLISH = "publish"
    CORRECTION = "correction"


@dataclass(slots=True)
class Pending:
    address: Address
    expected_id: bytes | None
    purpose: Purpose
    deadline: float
    lookup_id: int = 0
    build: Callable[[int, bytes], wire.Request] | None = None  # to ask again with a token
    retried: bool = False


class DhtEndpoint:
    def __init__(
        self,
        credentials: Credentials,
        *,
        entropy: Callable[[int], bytes],
        now: float,
        config: DhtConfig = DEFAULT_CONFIG,
    ) -> None:
        self.credentials = credentials
        self.node_id = credentials.id_of(credentials.public)
        self.config = config
        self.table = RoutingTable(self.node_id, config, now)
        self.store = RecordStore(config.max_records, config.max_slots_per_target)
        self.stats: Counter[str] = Counter()
        self._entropy = entropy
        self._tokens = TokenIssuer(entropy, config.token_rotation, now)
        self._limiter = SourceLimiter(
            config.rate_per_second, config.rate_burst, config.rate_sources
        )
        self._proven = ProvenSources(config.proof_lifetime, config.proven_sources)
        self._peer_tokens = PeerTokens(config.peer_tokens)
        self._answer_limit: int | None = None  # bytes an answer may take (None: proved)
        self._pending: dict[int, Pending] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._outbox: list[tuple[Address, bytes]] = []
        self._events: list[ev.Event] = []
        self._housekeeping_at = now + config.housekeeping_interval

    # --- adapter interface ------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[Address, bytes]]:
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[ev.Event]:
        out, self._events = self._events, []
        return out

    def next_timer(self) -> float:
        """When `handle_timer` must run next (virtual or real seconds, like `now`)."""
        while self._deadlines and self._deadlines[0][1] not in self._pending:
            heapq.heappop(self._deadlines)
        if self._deadlines:
            return min(self._deadlines[0][0], self._housekeeping_at)
        return self._housekeeping_at

    def handle_timer(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, txid = heapq.heappop(self._deadlines)
            pending = self._pending.get(txid)
            if pending is not None and pending.deadline <= now:
                del self._pending[txid]
                self.stats["timeout"] += 1
                self._request_failed(pending, now)
        if now >= self._housekeeping_at:
            self._housekeeping_at = now + self.config.housekeeping_interval
            self._housekeeping(now)

    def ping(self, address: Address, now: float, expected_id: bytes | None = None) -> None:
        host = normalize_host(address[0])
        if host is not None:
            purpose = Purpose.PING if expected_id is None else Purpose.PROBE
            self._request((host, address[1]), expected_id, purpose, now, wire.Ping)

    # --- hooks for the node -----------------------------------------------------------

    def _on_response(
        self, message: wire.Message, pending: Pending, sender: Contact, now: float
    ) -> None:
        """A verified answer from the id we asked (or from anyone, for PING)."""

    def _request_failed(self, pending: Pending, now: float) -> None:
        if pending.expected_id is not None:
            self.table.failed(pending.expected_id)

    def _housekeeping(self, now: float) -> None:
        self._tokens.maybe_rotate(now)
        self.store.expire(now)

    # --- sending ----------------------------------------------------------------------

    def _send(self, address: Address, message: wire.Message) -> None:
        self._outbox.append((address, wire.encode_message(message, self.credentials.sign)))

    def _request(
        self,
        address: Address,
        expected_id: bytes | None,
        purpose: Purpose,
        now: float,
        build: Callable[[int, bytes], wire.Request],
        lookup_id: int = 0,
        *,
        retried: bool = False,
    ) -> None:
        txid = int.from_bytes(self._entropy(8), "big")
        while txid in self._pending:
            txid = int.from_bytes(self._entropy(8), "big")
        deadline = now + self.config.request_timeout
        pending = Pending(address, expected_id, purpose, deadline, lookup_id, build, retried)
        self._pending[txid] = pending
        heapq.heappush(self._deadlines, (deadline, txid))
        message = build(txid, self.credentials.public)
        if isinstance(message, wire.FindNode | wire.FindValue) and not message.token:
            token = self._peer_tokens.token_for(address)
            if token:
                message = dataclasses.replace(message, token=token)
        elif isinstance(message, wire.Ping) and message.padding < wire.PING_PADDING:
            message = dataclasses.replace(message, padding=wire.PING_PADDING)
        self._send(address, message)

    # --- receiving --------------------------------------------------------------------

    def datagram_received(self, data: bytes, source: Address, now: float) -> None:
        host = normalize_host(source[0])
        if host is None or len(data) > wire.MAX_DATAGRAM:
            self.stats["refused-datagram"] += 1
            return
        # Per source host; on loopback and the test prefixes every node shares a host,
        # so there the source is host and port (see contacts.EXEMPT_NETWORKS).
        source_key = host if prefix_of(host) is not None else f"{host}:{source[1]}"
        if not self._limiter.allow(source_key, now):
            self.stats["rate-limited"] += 1
            return
        address = (host, source[1])
        try:
            signed = wire.decode_message(data)
        except DecodeError:
            self.stats["malformed"] += 1
            return
        message = signed.message
        pending = None
        if isinstance(message, wire.Pong | wire.Nodes | wire.Values | wire.Stored):
            pending = self._pending.get(message.txid)
            if pending is None or pending.address != address:
                self.stats["unsolicited"] += 1
                return
        if not self.credentials.verify(message.sender, signed.signed, signed.signature):
            self.stats["bad-signature"] += 1
            return
        sender = Contact(self.credentials.id_of(message.sender), address)
        if sender.node_id == self.node_id:
            self.stats["own-id"] += 1
            return
        if pending is None:
            self._request_received(message, sender, source_key, len(data), now)
            return
        self._proven.prove(source_key, now)  # it answered what we sent to that address
        self._admit(sender, now)
        del self._pending[message.txid]
        if pending.expected_id is not None and pending.expected_id != sender.node_id:
            self.stats["wrong-id"] += 1
            self._request_failed(pending, now)
            return
        if isinstance(message, wire.Nodes | wire.Values):
            self._peer_tokens.remember(address, message.token)
            if self._retry_with_token(message, pending, now):
                return
        self._on_response(message, pending, sender, now)

    def _retry_with_token(self, message: wire.Message, pending: Pending, now: float) -> bool:
        """An empty NODES to a FIND of ours is what an unproved source gets: ask once
        more, now with the token (a responder with an empty table costs one more RPC)."""
        if not isinstance(message, wire.Nodes) or message.contacts or pending.retried:
            return False
        if pending.purpose is not Purpose.LOOKUP or pending.build is None:
            return False
        self.stats["retried-with-token"] += 1
        self._request(
            pending.address,
            pending.expected_id,
            pending.purpose,
            now,
            pending.build,
            pending.lookup_id,
            retried=True,
        )
        return True

    def _request_received(
        self, message: wire.Message, sender: Contact, source_key: str, size: int, now: float
    ) -> None:
        """A request: proved sources (keyed like the rate limit: per IP, per IP and port
        on loopback and the test prefixes) join the table and get full answers."""
        token = message.token if isinstance(message, wire.FindNode | wire.FindValue) else b""
        if isinstance(message, wire.Store):
            token = message.token
        if token and self._tokens.valid(sender.address[0], token):
            self._proven.prove(source_key, now)  # it received what we sent to that address
        proven = self._proven.proven(source_key, now)
        if proven:
            self._admit(sender, now)  # never a spoofed address into the table
        self._answer_limit = None if proven else size
        try:
            self._serve(message, sender, now)
        finally:
            self._answer_limit = None

    def _admit(self, contact: Contact, now: float) -> None:
        if not wire.can_encode_host(contact.address[0]):
            return
        outcome, probe = self.table.seen(contact, now)
        if outcome is Added.PROBING and probe is not None:
            self.ping(probe.address, now, probe.node_id)

    # --- serving ----------------------------------------------------------------------

    def _serve(self, message: wire.Message, sender: Contact, now: float) -> None:
        me, to = self.credentials.public, sender.address
        if isinstance(message, wire.Ping):
            pong_size = wire.OVERHEAD + wire.contact_size(to[0]) - wire.NODE_ID_LEN
            if self._answer_limit is not None and pong_size > self._answer_limit:
                self.stats["unproved-answer-dropped"] += 1  # decided before signing
                return
            self._answer(to, wire.Pong(message.txid, me, to[0], to[1]))
        elif isinstance(message, wire.FindNode | wire.FindValue):
            token = self._tokens.issue(to[0])
            if isinstance(message, wire.FindValue):
                live = self.store.live(message.target, now)
                if is_relay_directory_key(message.target):
                    live = sample(live, self._entropy)  # each answer a different few
                records = self._fitting(live)
                if records and self._answer_limit is None:
                    self._answer(to, wire.Values(message.txid, me, token, records))
                    return
            contacts = self._answer_contacts(message.target, sender.node_id)
            if self._answer_limit is not None:
                contacts = self._cut_to_fit(contacts, self._answer_limit)
            self._answer(to, wire.Nodes(message.txid, me, token, contacts))
        elif isinstance(message, wire.Store):
            status, reason = self._accept_store(message, sender, now)
            self._answer(to, wire.Stored(message.txid, me, status, reason))
        else:
            self.stats["unexpected"] += 1

    def _answer(self, to: Address, message: wire.Message) -> None:
        """Send an answer, unless it would be larger than the unproved request."""
        data = wire.encode_message(message, self.credentials.sign)
        if self._answer_limit is not None and len(data) > self._answer_limit:
            self.stats["unproved-answer-dropped"] += 1
            return
        self._outbox.append((to, data))

    def _cut_to_fit(
        self, contacts: tuple[wire.WireContact, ...], limit: int
    ) -> tuple[wire.WireContact, ...]:
        size, count = wire.NODES_BASE, 0
        for contact in contacts:
            size += wire.contact_size(contact.host)
            if size > limit:
                break
            count += 1
        if count < len(contacts):
            self.stats["unproved-answer-cut"] += 1
        return contacts[:count]

    def _answer_contacts(self, target: bytes, requester: bytes) -> tuple[wire.WireContact, ...]:
        k = self.config.k
        closest = self.table.closest(target, k + 1, self.config.prefix_cap_answer)
        chosen = [c for c in closest if c.node_id != requester][:k]
        return tuple(wire.WireContact(c.node_id, c.address[0], c.address[1]) for c in chosen)

    @staticmethod
    def _fitting(records: list[bytes]) -> tuple[bytes, ...]:
        """As many records as one VALUES datagram carries, in the order given."""
        room = wire.MAX_DATAGRAM - wire.OVERHEAD - wire.TOKEN_LEN - 1
        chosen: list[bytes] = []
        for raw in records:
            if len(raw) + 2 <= room and len(chosen) < 255:
                chosen.append(raw)
                room -= len(raw) + 2
        return tuple(chosen)

    def _accept_store(
        self, message: wire.Store, sender: Contact, now: float
    ) -> tuple[wire.StoreStatus, str]:
        if not self._tokens.valid(sender.address[0], message.token):
            self.stats["refused:bad-token"] += 1
            self._events.append(ev.RecordRefused("bad-token", message.target, sender.address))
            return wire.StoreStatus.BAD_TOKEN, "bad-token"
        held_before = self.store.held(message.target)
        # A relay directory entry is stored only by its relay (core/dht/directory.py).
        if is_relay_directory_key(message.target) and not store_source_ok(
            message.record, sender.address[0]
        ):
            self.stats["refused:not-from-listed-address"] += 1
            self._events.append(
                ev.RecordRefused("not-from-listed-address", message.target, sender.address)
            )
            return wire.StoreStatus.REFUSED, "not-from-listed-address"
        checked = self.store.offer(message.record, message.target, now)
        if checked.acceptable:
            if checked.outcome is Outcome.NEW and checked.record is not None:
                self.stats["stored"] += 1
                record = checked.record
                self._events.append(
                    ev.ValueStored(message.target, record.signer, record.seq, sender.address)
                )
            return wire.StoreStatus.OK, ""
        held = held_before.get(checked.slot) if checked.slot is not None else None
        self._report(checked, message.target, message.record, held, sender.address)
        full = checked.reason == REASON_FULL
        return (wire.StoreStatus.FULL if full else wire.StoreStatus.REFUSED), checked.reason

    def _report(
        self, checked: Checked, target: bytes, raw: bytes, held: Held | None, source: Address
    ) -> None:
        self.stats[f"refused:{checked.reason}"] += 1
        if checked.outcome is Outcome.CONFLICT and checked.record is not None:
            held_raw = b"" if held is None else held.raw
            self._events.append(
                ev.EquivocationDetected(checked.record.signer, target, held_raw, raw, source)
            )
        else:
            self._events.append(ev.RecordRefused(checked.reason, target, source))
