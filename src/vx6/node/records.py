"""Records between the registry, sync neighbours and the DHT.

Theory of operation. Every record from outside, whether a sync neighbour pushed it or a
DHT lookup found it, goes through `accept`: the record rules (size, canonical parse,
time window, sequence above the one held, signature), the claim policy (proof of
work), then the registry, whose SQL re-checks "strictly newer". What was new is pushed
on to the other sync neighbours within their budgets (`core/sync.py`), and a new node
record of a peer we dialled closes links to addresses it no longer publishes. Sync
neighbours also get a full dump when the link comes up and a periodic reconcile.

Hidden-service descriptors are not synced (core/sync.py `synced_kind`): `accept`
drops them, counted, whether a neighbour sent them or a DHT lookup found them, so they
never enter the registry, and `push` filters them out of what it is given.

Bounds: a full dump goes to one peer key at most once a minute and to all together at a
bounded rate (`core/sync.DumpLimiter`); it is sent in batches and stops while the link
is paused (its write buffer is full), going on when the link resumes or at the next
reconcile. A registry that cannot be read or written drops what arrives (counted, and
logged by the registry's health at most once a minute): it never ends the node, and the
records come again by sync or the DHT once the disk has room.

Only a node that accepted a link starts syncing when records arrive on it (the dialler
asked). On a link we dialled and did not make a sync neighbour, records are taken only
when our client asked the peer who it is (`expect_identity`, direct mode): one RECORDS
frame, only the peer's own node record and name claim, through the same `accept`, and
passed on to no one; anything else on such a link is dropped and counted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from vx6.core.budget import RateBudget
from vx6.core.dht import events as dht_events
from vx6.core.dht.directory import select_entries
from vx6.core.dht.keys import is_relay_directory_key
from vx6.core.names import NAME_POW_BITS
from vx6.core.records import check_claim_policy, check_record
from vx6.core.sync import (
    DUMP_BATCH,
    RECONCILE_BATCH,
    RECONCILE_EVERY,
    STRANGER_RECORDS_BURST,
    STRANGER_RECORDS_PER_SECOND,
    SYNC_DUMP_LIMIT,
    DumpLimiter,
    Neighbour,
    synced_kind,
    synced_only,
)
from vx6.crypto.keys import fingerprint
from vx6.errors import DecodeError, RecordRejected
from vx6.net.link import LinkProtocol
from vx6.net.ports import Clock, Count
from vx6.net.ratelog import RATELOG
from vx6.store.registry import Registry, RegistryError, RegistryWriteError
from vx6.wire.records import Kind, NodeBody, decode_record

log = logging.getLogger("vx6.records")

IDENTITY_RECORDS = 2  # a node record and a name claim: all an identity answer holds


class Trust(Protocol):
    def __call__(self, key: bytes) -> bool:
        """Does this node have reason to trust `key` (a peer, a pin, an allow-list)?"""
        ...


class DhtLookups(Protocol):
    async def lookup(self, target: bytes) -> dht_events.RecordFound | dht_events.LookupFinished: ...


class RecordHub:
    def __init__(
        self, registry: Registry, dht: DhtLookups, *, trusted: Trust, count: Count, clock: Clock
    ) -> None:
        self.registry = registry
        self.dht = dht
        self.trusted = trusted
        self.count = count
        self.clock = clock
        self.neighbours: dict[LinkProtocol, Neighbour] = {}
        self.dumps = DumpLimiter.new(clock.wall())
        # Shared by every neighbour we have no reason to trust (core/sync.py).
        self.strangers = RateBudget.full(
            STRANGER_RECORDS_PER_SECOND, STRANGER_RECORDS_BURST, clock.wall()
        )
        self._node_record_handlers: list[Callable[[bytes, NodeBody], None]] = []
        self._asked: set[LinkProtocol] = set()  # dialled links whose peer we asked who it is

    def on_node_record(self, handler: Callable[[bytes, NodeBody], None]) -> None:
        """Call `handler(key, body)` for every new node record accepted from outside."""
        self._node_record_handlers.append(handler)

    async def lookup(self, target: bytes) -> bool:
        """Ask the DHT for the records under `target`; True if it had any. What it
        found is stored by `on_dht_event`, the one place DHT records are accepted."""
        self.count("dht_lookups")
        try:
            result = await self.dht.lookup(target)
        except TimeoutError:
            self.count("dht_lookups_timed_out")
            return False
        return bool(result.records)

    def on_dht_event(self, event: dht_events.Event) -> None:
        if isinstance(event, dht_events.LookupFinished | dht_events.RecordFound):
            records = list(event.records)
            if is_relay_directory_key(event.target):
                # Sybils are cheap: a bounded, network-diverse few per lookup.
                records = select_entries(records)
            if records:
                self.accept(records, source="dht")
        elif isinstance(event, dht_events.ValueStored):
            self.count("dht_values_stored")
        elif isinstance(event, dht_events.RecordRefused):
            self.count(f"dht_refused_{event.reason}")
            RATELOG.info(
                log,
                "dht-refused-record",
                "DHT refused a record from %s: %s",
                event.source,
                event.reason,
            )  # a peer decides how often; the counter above stays exact
        elif isinstance(event, dht_events.EquivocationDetected):
            self.count("dht_equivocations")
            RATELOG.warning(
                log,
                "dht-equivocation",
                "key %s signed two different records with one sequence number (from %s)",
                fingerprint(event.signer),
                event.source,
            )

    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        self.neighbours.pop(link, None)
        self._asked.discard(link)

    def expect_identity(self, link: LinkProtocol) -> None:
        """Our client asked the peer of `link` (a link we dialled) for its own records."""
        self._asked.add(link)

    def link_paused(self, link: LinkProtocol, paused: bool) -> None:
        if not paused:
            self.continue_dump(link)

    def start_sync(self, link: LinkProtocol) -> None:
        """Make `link` a sync neighbour and send it everything we hold (up to
        SYNC_DUMP_LIMIT records), if its key may have a dump now."""
        now = self.clock.wall()
        neighbour = self.neighbours[link] = Neighbour.new(now)
        key = link.peer_identity or b""
        if self.dumps.recent(key, now):
            # It had everything up to its last dump: the reconcile sends what changed since.
            neighbour.cursor = min(now, self.dumps.last[key])
            self.count("sync_dumps_refused")
            RATELOG.info(
                log,
                "sync-dump-refused",
                "no full dump for %s: it had one less than a minute ago",
                fingerprint(key),
            )
            return
        neighbour.dump_wanted = True
        self._begin_dump(link, neighbour, now)

    def _begin_dump(self, link: LinkProtocol, neighbour: Neighbour, now: float) -> None:
        if not self.dumps.grant(link.peer_identity or b"", now):
            self.count("sync_dumps_deferred")  # the shared budget: a later reconcile
            return
        self.count("sync_dumps_sent")
        neighbour.dump_wanted = False
        neighbour.dump_left, neighbour.dump_after = SYNC_DUMP_LIMIT, 0
        self.continue_dump(link)

    def continue_dump(self, link: LinkProtocol) -> None:
        """Send the rest of `link`'s dump in batches until it is done or the link is
        paused (its write buffer is full); called again when the link resumes."""
        neighbour = self.neighbours.get(link)
        if neighbour is None:
            return
        while neighbour.dump_left > 0 and link.is_open and not link.paused:
            try:
                batch, after = self.registry.records_page(
                    neighbour.dump_after, self.clock.wall(), min(DUMP_BATCH, neighbour.dump_left)
                )
            except RegistryError:
                self.count("sync_dumps_failed_registry")
                batch = []
            if not batch:
                neighbour.dump_left = 0
                break
            if not link.send_records([r.raw for r in batch]):
                break  # paused after all: continue_dump runs again when it resumes
            neighbour.dump_left -= len(batch)
            neighbour.dump_after = after

    def push(self, fresh: list[bytes], skip: LinkProtocol | None = None) -> None:
        """Pass newly accepted records on to the sync neighbours, within their budgets."""
        now = self.clock.wall()
        fresh = synced_only(fresh)
        if not fresh:
            return
        for other, neighbour in list(self.neighbours.items()):
            if other is not skip and neighbour.may_push(len(fresh), now):
                other.send_records(fresh)

    def received(self, link: LinkProtocol, records: tuple[bytes, ...]) -> None:
        if link not in self.neighbours and link.core.initiator:
            self._identity_received(link, records)
            return
        if link not in self.neighbours:
            self.start_sync(link)  # the dialler asked to sync: answer in kind
        key = link.peer_identity
        shared = None if key is not None and self.trusted(key) else self.strangers
        if not self.neighbours[link].accept_inbound(len(records), self.clock.wall(), shared):
            self.count("records_dropped_rate_limit")
            RATELOG.info(
                log,
                "records-over-budget",
                "dropped %d records from %s: over its sync budget",
                len(records),
                _source(link),
            )
            return
        fresh = self.accept(records, source=_source(link))
        if fresh:
            self.push(fresh, skip=link)

    async def reconcile_loop(self) -> None:
        """Every RECONCILE_EVERY, send each neighbour what changed since its cursor (and
        go on with a dump that a paused link held up)."""
        while True:
            await self.clock.sleep(RECONCILE_EVERY)  # periodic timer, not synchronisation
            self.reconcile_once()

    def reconcile_once(self) -> None:
        with contextlib.suppress(RegistryError):  # expired records only take room
            self.registry.purge_expired(self.clock.wall())
        for link, neighbour in list(self.neighbours.items()):
            if link.paused:
                continue  # its write buffer is full: the next round catches up
            if neighbour.dump_wanted:
                self._begin_dump(link, neighbour, self.clock.wall())
            else:
                self.continue_dump(link)
            try:
                changed = self.registry.records_changed_since(neighbour.cursor, RECONCILE_BATCH)
            except RegistryError:
                self.count("sync_reconcile_failed_registry")
                continue
            # A neighbour that does not read what we sent gets nothing more and keeps
            # its cursor (LinkProtocol.send_records says False).
            fresh = [r.raw for r in changed if r.expires > self.clock.wall()]
            if changed and link.send_records(fresh):
                neighbour.cursor = max(r.received_at for r in changed)

    def accept(self, records: tuple[bytes, ...] | list[bytes], source: str) -> list[bytes]:
        now = self.clock.wall()
        fresh: list[bytes] = []
        registry = self.registry
        for i, raw in enumerate(records):
            try:
                rec = decode_record(raw)
                if not synced_kind(rec.kind):
                    # A descriptor: its DHT replicas hold it, the registry never does
                    # (so no dump, push or reconcile carries it; core/sync.py).
                    self.count(f"records_not_synced_{rec.kind.name.lower()}")
                    continue
                subject = rec.subject
                held = registry.held_seq(rec.kind, rec.signer, subject)
                rec = check_record(raw, now, held)
                check_claim_policy(rec, NAME_POW_BITS)
                r = rec
                stored = registry.put_record(
                    r.kind, r.signer, subject, r.seq, r.issued, r.expires, raw, source, now
                )
            except (DecodeError, RecordRejected) as exc:
                reason = exc.reason if isinstance(exc, RecordRejected) else "malformed"
                self.count(f"records_refused_{reason}")
                if reason != "stale-sequence":
                    RATELOG.info(
                        log, f"record-refused-{reason}", "refused record from %s: %s", source, exc
                    )
                continue
            except RegistryError as exc:
                # The registry's health logs this (once a minute); the records come again.
                left = len(records) - i if isinstance(exc, RegistryWriteError) else 1
                self.count("records_dropped_registry", left)
                if isinstance(exc, RegistryWriteError):
                    break  # the rest would fail the same way
                continue
            if stored:
                self.count("records_accepted")
                fresh.append(raw)
                if rec.kind == Kind.NODE:
                    self._node_moved(rec.signer, rec.parsed_body())
        return fresh

    def _identity_received(self, link: LinkProtocol, records: tuple[bytes, ...]) -> None:
        """The answer to `expect_identity`: the peer's own node record and name claim."""
        key = link.peer_identity
        if link not in self._asked or key is None:
            self.count("records_dropped_unasked")
            RATELOG.info(
                log,
                "records-unasked",
                "dropped %d records from %s: a link we dialled, not syncing",
                len(records),
                _source(link),
            )
            return
        self._asked.discard(link)
        own: list[bytes] = []
        for raw in records[:IDENTITY_RECORDS]:
            with contextlib.suppress(DecodeError):
                rec = decode_record(raw)
                if rec.signer == key and rec.kind in (Kind.NODE, Kind.NAME_CLAIM):
                    own.append(raw)
        self.count("identity_records_received", len(own))
        self.accept(own, source=f"via {_source(link).removeprefix('peer ')}")

    def _node_moved(self, key: bytes, body: object) -> None:
        if isinstance(body, NodeBody):
            for handler in self._node_record_handlers:
                handler(key, body)


def _source(link: LinkProtocol) -> str:
    if link.peer_address:
        host, port = link.peer_address
        return f"peer [{host}]:{port}" if ":" in host else f"peer {host}:{port}"
    return "peer"
