"""Records between the registry, sync neighbours and the DHT.

Theory of operation. Every record from outside, whether a sync neighbour pushed it or a
DHT lookup found it, goes through `accept`: the record rules (size, canonical parse,
time window, sequence above the one held, signature), the claim policy (proof of
work), then the registry, whose SQL re-checks "strictly newer". What was new is pushed
on to the other sync neighbours within their budgets (`core/sync.py`), and a new node
record of a peer we dialled closes links to addresses it no longer publishes. Sync
neighbours also get a full dump when the link comes up and a periodic reconcile.

Bounds: a full dump goes to one peer key at most once a minute and to all together at a
bounded rate (`core/sync.DumpLimiter`); it is sent in batches and stops while the link
is paused (its write buffer is full), going on when the link resumes or at the next
reconcile. A registry that cannot be read or written drops what arrives (counted, and
logged by the registry's health at most once a minute): it never ends the node, and the
records come again by sync or the DHT once the disk has room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from vx6.core.budget import RateBudget
from vx6.core.dht import events as dht_events
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
)
from vx6.crypto.keys import fingerprint
from vx6.errors import CloseCode, DecodeError, RecordRejected
from vx6.net.link import LinkProtocol
from vx6.net.ratelog import RATELOG
from vx6.store.registry import RegistryError, RegistryWriteError
from vx6.wire.records import Kind, NodeBody, decode_record

if TYPE_CHECKING:
    from vx6.node.wiring import Node

log = logging.getLogger("vx6.records")


class RecordHub:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.neighbours: dict[LinkProtocol, Neighbour] = {}
        self.dumps = DumpLimiter.new(time.time())
        # Shared by every neighbour we have no reason to trust (core/sync.py).
        self.strangers = RateBudget.full(
            STRANGER_RECORDS_PER_SECOND, STRANGER_RECORDS_BURST, time.time()
        )

    async def lookup(self, target: bytes) -> bool:
        """Ask the DHT for the records under `target` and store what passes the rules
        (if the event handler has not already); True if the DHT had any."""
        self.node.count("dht_lookups")
        try:
            result = await self.node.dht.lookup(target)
        except TimeoutError:
            self.node.count("dht_lookups_timed_out")
            return False
        self.accept(list(result.records), source="dht")
        return bool(result.records)

    def on_dht_event(self, event: dht_events.Event) -> None:
        if isinstance(event, dht_events.LookupFinished | dht_events.RecordFound):
            if event.records:
                self.accept(list(event.records), source="dht")
        elif isinstance(event, dht_events.ValueStored):
            self.node.count("dht_values_stored")
        elif isinstance(event, dht_events.RecordRefused):
            self.node.count(f"dht_refused_{event.reason}")
            RATELOG.info(
                log,
                "dht-refused-record",
                "DHT refused a record from %s: %s",
                event.source,
                event.reason,
            )  # a peer decides how often; the counter above stays exact
        elif isinstance(event, dht_events.EquivocationDetected):
            self.node.count("dht_equivocations")
            RATELOG.warning(
                log,
                "dht-equivocation",
                "key %s signed two different records with one sequence number (from %s)",
                fingerprint(event.signer),
                event.source,
            )
        elif isinstance(event, dht_events.RepublishDue):
            self.node.publisher.publish_all()

    def start_sync(self, link: LinkProtocol) -> None:
        """Make `link` a sync neighbour and send it everything we hold (up to
        SYNC_DUMP_LIMIT records), if its key may have a dump now."""
        now = time.time()
        neighbour = self.neighbours[link] = Neighbour.new(now)
        key = link.peer_identity or b""
        if self.dumps.recent(key, now):
            # It had everything up to its last dump: the reconcile sends what changed since.
            neighbour.cursor = min(now, self.dumps.last[key])
            self.node.count("sync_dumps_refused")
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
            self.node.count("sync_dumps_deferred")  # the shared budget: a later reconcile
            return
        self.node.count("sync_dumps_sent")
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
                batch, after = self.node.registry.records_page(
                    neighbour.dump_after, time.time(), min(DUMP_BATCH, neighbour.dump_left)
                )
            except RegistryError:
                self.node.count("sync_dumps_failed_registry")
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
        now = time.time()
        for other, neighbour in list(self.neighbours.items()):
            if other is not skip and neighbour.may_push(len(fresh), now):
                other.send_records(fresh)

    def received(self, link: LinkProtocol, records: tuple[bytes, ...]) -> None:
        if link not in self.neighbours:
            self.start_sync(link)  # the dialler asked to sync: answer in kind
        key = link.peer_identity
        shared = None if key is not None and self.node.trusted(key) else self.strangers
        if not self.neighbours[link].accept_inbound(len(records), time.time(), shared):
            self.node.count("records_dropped_rate_limit")
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
            await asyncio.sleep(RECONCILE_EVERY)  # periodic timer, not synchronisation
            self.reconcile_once()

    def reconcile_once(self) -> None:
        with contextlib.suppress(RegistryError):  # expired records only take room
            self.node.registry.purge_expired(time.time())
        for link, neighbour in list(self.neighbours.items()):
            if link.paused:
                continue  # its write buffer is full: the next round catches up
            if neighbour.dump_wanted:
                self._begin_dump(link, neighbour, time.time())
            else:
                self.continue_dump(link)
            try:
                changed = self.node.registry.records_changed_since(
                    neighbour.cursor, RECONCILE_BATCH
                )
            except RegistryError:
                self.node.count("sync_reconcile_failed_registry")
                continue
            # A neighbour that does not read what we sent gets nothing more and keeps
            # its cursor (LinkProtocol.send_records says False).
            fresh = [r.raw for r in changed if r.expires > time.time()]
            if changed and link.send_records(fresh):
                neighbour.cursor = max(r.received_at for r in changed)

    def accept(self, records: tuple[bytes, ...] | list[bytes], source: str) -> list[bytes]:
        now = time.time()
        fresh: list[bytes] = []
        registry = self.node.registry
        for i, raw in enumerate(records):
            try:
                rec = decode_record(raw)
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
                self.node.count(f"records_refused_{reason}")
                if reason != "stale-sequence":
                    RATELOG.info(
                        log, f"record-refused-{reason}", "refused record from %s: %s", source, exc
                    )
                continue
            except RegistryError as exc:
                # The registry's health logs this (once a minute); the records come again.
                left = len(records) - i if isinstance(exc, RegistryWriteError) else 1
                self.node.count("records_dropped_registry", left)
                if isinstance(exc, RegistryWriteError):
                    break  # the rest would fail the same way
                continue
            if stored:
                self.node.count("records_accepted")
                fresh.append(raw)
                if rec.kind == Kind.NODE:
                    self._node_moved(rec.signer, rec.parsed_body())
        return fresh

    def _node_moved(self, key: bytes, body: object) -> None:
        """A peer published new addresses: a link we dialled to an address it no longer
        has is stale (its packets go nowhere), so close it now; the next stream redials
        the new address instead of waiting for the idle timeout."""
        if not isinstance(body, NodeBody):
            return
        current = {(ep.host, ep.port) for ep in body.addresses}
        for link in list(self.node.all_links):
            if link.peer_identity == key and link.dialled and link.dialled not in current:
                log.info(
                    "peer %s moved away from %s; closing that link", fingerprint(key), link.dialled
                )
                link.close(CloseCode.NORMAL, "peer moved to a new address")


def _source(link: LinkProtocol) -> str:
    if link.peer_address:
        host, port = link.peer_address
        return f"peer [{host}]:{port}" if ":" in host else f"peer {host}:{port}"
    return "peer"
