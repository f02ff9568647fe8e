"""The DHT node: the serving endpoint plus the work a node starts on its own.

Theory of operation (the inbound pipeline and the requests we answer are described in
endpoint.py): a node starts lookups (`find_node`, `find_value`, `join` = a lookup of its
own id after `bootstrap` pinged any live node), each a `Lookup` state machine that this
class feeds with answers and timeouts and asks for the next requests to send. A value
lookup reports `RecordFound` as soon as it holds a valid record at least as new as the
local one, finishes one more round in the background, then sends STOREs that correct
stale holders, and reports `LookupFinished`.

Owned records: `publish(raw)` holds the record locally (so we answer for it), runs a
node lookup on its key and STOREs it on the k closest nodes that answered, with the
tokens they gave us (`PublishFinished` counts the acknowledgements). A relay's node
record goes under its relay directory key as well (keys.record_keys), the same way, and a
hidden-service descriptor under both its replica keys (`publish_under_each_key` returns
every lookup id, so its caller can count the STOREs of both). Housekeeping
re-publishes every owned record each `republish_interval`, reports `RepublishDue` once
when a record is within `republish_margin` of its expiry (the owner signs a fresh one
with a higher sequence number and publishes it), and refreshes, one per pass, the
buckets nobody has looked into for `refresh_interval`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vx6.core.dht import events as ev
from vx6.core.dht.config import DEFAULT_CONFIG, DhtConfig
from vx6.core.dht.contacts import Address, Contact
from vx6.core.dht.endpoint import DhtEndpoint, Pending, Purpose
from vx6.core.dht.keys import Credentials, is_relay_directory_key, record_keys
from vx6.core.dht.lookup import Lookup
from vx6.core.dht.values import Outcome, check_value
from vx6.core.records import RecordSlot, record_slot
from vx6.errors import DecodeError, RecordRejected
from vx6.wire import dht as wire
from vx6.wire.records import decode_record

MAX_VALUES_CHECKED = 8  # records verified per VALUES answer: bounds what one peer costs us


@dataclass(slots=True)
class _Running:
    lookup: Lookup
    publish: bytes | None = None  # the record to STORE once the lookup ends
    reported_found: bool = False


@dataclass(slots=True)
class _Publishing:
    target: bytes
    outstanding: int
    stored: int
    attempted: int


@dataclass(slots=True)
class _Owned:
    raw: bytes
    expires: int
    republish_at: float
    due_reported: bool = False


class DhtNode(DhtEndpoint):
    def __init__(
        self,
        credentials: Credentials,
        *,
        entropy: Callable[[int], bytes],
        now: float,
        config: DhtConfig = DEFAULT_CONFIG,
    ) -> None:
        super().__init__(credentials, entropy=entropy, now=now, config=config)
        self._lookups: dict[int, _Running] = {}
        self._publishing: dict[int, _Publishing] = {}
        self._owned: dict[tuple[bytes, RecordSlot], _Owned] = {}
        self._next_lookup_id = 1
        self._join_after_pong = False

    @property
    def active_lookups(self) -> int:
        return len(self._lookups)

    # --- starting work ----------------------------------------------------------------

    def bootstrap(self, addresses: list[Address], now: float) -> None:
        """Ping each address (ids unknown); the first answer starts the join lookup."""
        self._join_after_pong = True
        for address in addresses:
            self.ping(address, now)

    def join(self, now: float) -> int:
        """A lookup of our own id: fills the table around us and makes us known there."""
        return self.find_node(self.node_id, now, interactive=True)

    def find_node(self, target: bytes, now: float, *, interactive: bool = False) -> int:
        return self._start(target, now, want_value=False, interactive=interactive)

    def find_value(self, target: bytes, now: float, *, interactive: bool = True) -> int:
        return self._start(target, now, want_value=True, interactive=interactive)

    def publish(self, raw: bytes, now: float) -> int:
        """Hold `raw` (one of our own records) and store it on the k closest nodes to each
        of its keys, again every `republish_interval`; return the lookup id of its own
        key's publish. RecordRejected if it fails the rules."""
        return self.publish_under_each_key(raw, now)[0]

    def publish_under_each_key(self, raw: bytes, now: float) -> tuple[int, ...]:
        """`publish`, returning the lookup id of every key's publish (each ends in one
        `PublishFinished`), its own key's first."""
        try:
            record = decode_record(raw)
            targets = record_keys(record)
        except (DecodeError, ValueError):
            raise RecordRejected("malformed") from None
        slot = record_slot(record)
        for gone in [key for key in self._owned if key[1] == slot and key[0] not in targets]:
            del self._owned[gone]  # e.g. a node that stopped relaying leaves the directory
        lookup_ids: list[int] = []
        for i, target in enumerate(targets):
            checked = self.store.offer(raw, target, now)
            if not checked.acceptable:
                if i == 0:
                    raise RecordRejected(checked.reason or checked.outcome.value)
                continue  # our own directory key is full here: the other holders decide
            self._owned[(target, slot)] = _Owned(
                raw,
                record.expires,
                now + self.config.republish_interval,
                due_reported=i > 0,  # one RepublishDue per record is enough
            )
            lookup_ids.append(
                self._start(target, now, want_value=False, interactive=True, publish=raw)
            )
        return tuple(lookup_ids)

    def _start(
        self,
        target: bytes,
        now: float,
        *,
        want_value: bool,
        interactive: bool,
        publish: bytes | None = None,
    ) -> int:
        cfg = self.config
        lookup_id = self._next_lookup_id
        self._next_lookup_id += 1
        lookup = Lookup(
            lookup_id,
            target,
            self.table.closest(target, cfg.k, cfg.prefix_cap_lookup),
            k=cfg.k,
            alpha=cfg.alpha_interactive if interactive else cfg.alpha_background,
            cap=cfg.prefix_cap_lookup,
            want_value=want_value,
            held=dict(self.store.held(target)) if want_value else {},
            own_id=self.node_id,
            background_answers=cfg.background_answers,
            background_alpha=cfg.alpha_background,
        )
        self._lookups[lookup_id] = _Running(lookup, publish)
        self._drive(lookup_id, now)
        return lookup_id

    # --- answers and failures ---------------------------------------------------------

    def _on_response(
        self, message: wire.Message, pending: Pending, sender: Contact, now: float
    ) -> None:
        if pending.purpose is Purpose.LOOKUP:
            running = self._lookups.get(pending.lookup_id)
            if running is not None:
                self._lookup_answer(running.lookup, message, sender, now)
                self._drive(pending.lookup_id, now)
        elif pending.purpose is Purpose.PUBLISH and isinstance(message, wire.Stored):
            self._store_settled(pending.lookup_id, message.status is wire.StoreStatus.OK)
        elif pending.purpose is Purpose.PING and self._join_after_pong:
            self._join_after_pong = False
            self.join(now)

    def _lookup_answer(
        self, lookup: Lookup, message: wire.Message, sender: Contact, now: float
    ) -> None:
        if isinstance(message, wire.Nodes):
            contacts = [
                Contact(c.node_id, (c.host, c.port))
                for c in message.contacts
                if c.node_id != self.node_id
            ]
            lookup.answered_nodes(sender.node_id, contacts, message.token)
        elif isinstance(message, wire.Values) and lookup.want_value:
            verdicts = []
            for raw in message.records[:MAX_VALUES_CHECKED]:
                checked = check_value(raw, lookup.target, now, lookup.held)
                if checked.outcome in (Outcome.REFUSED, Outcome.CONFLICT):
                    held = lookup.held.get(checked.slot) if checked.slot is not None else None
                    self._report(checked, lookup.target, raw, held, sender.address)
                verdicts.append((raw, checked))
            lookup.answered_values(sender.node_id, verdicts, message.token)
        else:
            self.stats["wrong-answer"] += 1
            lookup.failed(sender.node_id)

    def _request_failed(self, pending: Pending, now: float) -> None:
        super()._request_failed(pending, now)
        if pending.purpose is Purpose.LOOKUP and pending.lookup_id in self._lookups:
            if pending.expected_id is not None:
                self._lookups[pending.lookup_id].lookup.failed(pending.expected_id)
            self._drive(pending.lookup_id, now)
        elif pending.purpose is Purpose.PUBLISH:
            self._store_settled(pending.lookup_id, False)

    # --- lookups ----------------------------------------------------------------------

    def _drive(self, lookup_id: int, now: float) -> None:
        running = self._lookups[lookup_id]
        lookup = running.lookup
        target = lookup.target
        build = wire.FindValue if lookup.want_value else wire.FindNode

        def request(txid: int, me: bytes) -> wire.Request:
            return build(txid, me, target)

        for contact in lookup.next_requests():
            self._request(contact.address, contact.node_id, Purpose.LOOKUP, now, request, lookup_id)
        if lookup.found and not running.reported_found:
            running.reported_found = True
            records = tuple(lookup.records.values())
            self._events.append(
                ev.RecordFound(lookup_id, target, records, lookup.rounds, lookup.found_rpcs)
            )
        if lookup.finished:
            del self._lookups[lookup_id]
            self._finish(lookup_id, running, now)

    def _finish(self, lookup_id: int, running: _Running, now: float) -> None:
        lookup = running.lookup
        self.table.touch_bucket_of(lookup.target, now)
        closest = lookup.closest_answered()
        self._events.append(
            ev.LookupFinished(
                lookup_id,
                lookup.target,
                lookup.found,
                tuple(lookup.records.values()),
                tuple(c.contact for c in closest),
                lookup.rounds,
                lookup.found_rpcs if lookup.found else lookup.rpcs,
            )
        )
        if running.publish is not None:
            raw = running.publish
            holders = [(c.contact, c.token) for c in closest if c.token is not None]
            self._publishing[lookup_id] = _Publishing(lookup.target, len(holders), 0, len(holders))
            for contact, token in holders:
                self._store_at(contact, token, lookup.target, raw, now, lookup_id)
            if not holders:
                self._store_settled(lookup_id, None)
        elif lookup.found and not is_relay_directory_key(lookup.target):
            # (A directory entry is stored only by its relay: directory.store_source_ok.)
            for contact, token, raw in lookup.corrections(self.config.stale_corrections):
                self.stats["corrections"] += 1
                self._store_at(contact, token, lookup.target, raw, now, 0)

    def _store_at(
        self, contact: Contact, token: bytes, target: bytes, raw: bytes, now: float, lookup_id: int
    ) -> None:
        def request(txid: int, me: bytes) -> wire.Request:
            return wire.Store(txid, me, target, token, raw)

        purpose = Purpose.PUBLISH if lookup_id else Purpose.CORRECTION
        self._request(contact.address, contact.node_id, purpose, now, request, lookup_id)

    def _store_settled(self, lookup_id: int, ok: bool | None) -> None:
        publishing = self._publishing.get(lookup_id)
        if publishing is None:
            return
        if ok is not None:
            publishing.outstanding -= 1
            publishing.stored += int(ok)
        if publishing.outstanding <= 0:
            del self._publishing[lookup_id]
            self._events.append(
                ev.PublishFinished(
                    lookup_id, publishing.target, publishing.stored, publishing.attempted
                )
            )

    # --- housekeeping -----------------------------------------------------------------

    def _housekeeping(self, now: float) -> None:
        super()._housekeeping(now)
        for key, owned in list(self._owned.items()):
            if owned.expires <= now:
                del self._owned[key]
                continue
            if not owned.due_reported and owned.expires - now <= self.config.republish_margin:
                owned.due_reported = True
                self._events.append(ev.RepublishDue(key[0], owned.raw))
            if now >= owned.republish_at:
                owned.republish_at = now + self.config.republish_interval
                self._start(key[0], now, want_value=False, interactive=False, publish=owned.raw)
        due = self.table.buckets_due(now, self.config.refresh_interval)
        if due:
            index = due[0]  # one refresh per pass keeps background traffic smooth
            self.table.mark_refreshed(index, now)
            target = self.table.random_id_in_bucket(index, self._entropy(32))
            self.find_node(target, now, interactive=False)
