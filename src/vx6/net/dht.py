"""asyncio adapter for the sans-IO DHT node (vx6.core.dht): one UDP socket.

Theory of operation. `DhtService` owns a UDP endpoint (for `::` one dual-stack socket,
so IPv4 peers arrive as IPv4-mapped addresses and are sent to the same way) and one
`DhtNode`. Every datagram goes into the core with the wall clock (records carry wall
clock times); after every call into the core the service sends what the core queued,
hands events to waiting lookups and to the node's `on_event`, and keeps one timer armed
at the core's next deadline. `lookup()` turns the core's lookup ids into awaitables;
`publish()` hands a record over and returns at once, `store()` waits for the STOREs
under each of the record's keys and says how many holders acknowledged (what a hidden
service needs to know of its descriptor, node/hidden_dht.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import cast

from vx6.core.dht import events as ev
from vx6.core.dht.contacts import Address
from vx6.core.dht.keys import RELAY_DIRECTORY_KEYS, credentials_for
from vx6.core.dht.node import DhtNode
from vx6.crypto.keys import Identity
from vx6.errors import DecodeError, ListenError, RecordRejected, RemoteProtocolError
from vx6.net.addresses import format_endpoint
from vx6.net.ports import SYSTEM_CLOCK, SYSTEM_RANDOM, Clock, Random
from vx6.net.ratelog import RATELOG
from vx6.wire.records import Kind, decode_record

log = logging.getLogger("vx6.dht")

LOOKUP_TIMEOUT = 10.0
DROP_REPORT_EVERY = 10.0
DROP_KINDS = frozenset(
    {
        "malformed",
        "rate-limited",
        "refused-datagram",
        "bad-signature",
        "unsolicited",
        "unproved-answer-dropped",
    }
)


class DhtService(asyncio.DatagramProtocol):
    def __init__(
        self,
        identity: Identity,
        on_event: Callable[[ev.Event], None],
        clock: Clock = SYSTEM_CLOCK,
        random: Random = SYSTEM_RANDOM,
    ) -> None:
        # The DHT core runs on the wall clock: the values it stores expire by it.
        self._now = clock.wall
        self.node = DhtNode(credentials_for(identity), entropy=random, now=self._now())
        self.on_event = on_event
        self.transport: asyncio.DatagramTransport | None = None
        self.mapped = False  # a dual-stack IPv6 socket: IPv4 peers as ::ffff:a.b.c.d
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: dict[int, asyncio.Future[ev.Event]] = {}
        self._stores: dict[int, asyncio.Future[ev.PublishFinished]] = {}
        self.last_lookup_ok: float | None = None
        self._reported_at = 0.0
        self._report_handle: asyncio.TimerHandle | None = None
        self._reported: dict[str, int] = {}
        self._own: dict[bytes, bytes] = {}  # our records, by slot, to re-store after joining
        self._thresholds = [1, 8, self.node.config.k]
        self.descriptor_stores_originated = 0  # kind-4 STOREs this node started (`store`)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host or host == "" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                wildcard = host in ("", "::")
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if wildcard else 1)
                self.mapped = wildcard
            sock.bind((host or "::", port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            where = format_endpoint(host or "::", port)
            reason = exc.strerror or str(exc)
            raise ListenError(f"cannot listen for DHT datagrams on udp {where}: {reason}") from exc
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        bound = sock.getsockname()
        return bound[0], bound[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        host, port = str(addr[0]), int(cast(int, addr[1]))
        now = self._now()
        try:
            self.node.datagram_received(data, (host, port), now)
        except Exception as exc:
            self._receive_failed(exc, host)
        if self._report_handle is None:
            self._schedule_drop_report(now)
        try:
            self._pump()
        except Exception as exc:
            self._receive_failed(exc, host)

    @staticmethod
    def _receive_failed(exc: Exception, host: str) -> None:
        """The receive rule of errors.py for datagrams: there is no link to close, so
        the datagram is lost either way and the DHT goes on. The peer's protocol error
        (the core drops and counts those itself; this is one that got past it) is one
        rate-limited line; anything else is a bug, logged with its traceback, also
        rate-limited since the peer decides how often it comes."""
        if isinstance(exc, RemoteProtocolError):
            RATELOG.warning(log, "dht-bad-datagram", "DHT datagram from %s dropped: %s", host, exc)
        else:
            RATELOG.exception(
                log, "dht-internal-error", "DHT datagram from %s handling failed", host
            )

    def _schedule_drop_report(self, now: float) -> None:
        """Junk is counted per datagram but logged as one line a while after it starts
        and at most once per interval, so a flood cannot flood the log too."""
        dropped = sum(v for k, v in self.node.stats.items() if k in DROP_KINDS)
        if dropped == sum(self._reported.values()):
            return
        delay = max(1.0, self._reported_at + DROP_REPORT_EVERY - now)
        self._report_handle = asyncio.get_running_loop().call_later(delay, self._report_drops)

    def _report_drops(self) -> None:
        self._report_handle = None
        self._reported_at = self._now()
        dropped = {k: v for k, v in self.node.stats.items() if k in DROP_KINDS}
        fresh = {k: v - self._reported.get(k, 0) for k, v in dropped.items()}
        if any(fresh.values()):
            RATELOG.warning(
                log,
                "dht-dropped",
                "DHT dropped datagrams in the last %.0f s: %s",
                DROP_REPORT_EVERY,
                ", ".join(f"{k} {v}" for k, v in sorted(fresh.items()) if v),
            )
        self._reported = dropped

    def error_received(self, exc: Exception) -> None:
        log.debug("DHT socket error: %s", exc)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._report_handle is not None:
            self._report_handle.cancel()
        if self.transport is not None:
            self.transport.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()
        for stored in self._stores.values():
            if not stored.done():
                stored.cancel()

    # ------------------------------------------------------------------ pumping
    def _pump(self) -> None:
        self._send_queued()
        for event in self.node.events():
            if isinstance(event, ev.RecordFound | ev.LookupFinished | ev.PublishFinished):
                fut = self._waiters.get(event.lookup_id)
                if fut is not None and not fut.done():
                    fut.set_result(event)
            if isinstance(event, ev.PublishFinished):
                stored = self._stores.get(event.lookup_id)
                if stored is not None and not stored.done():
                    stored.set_result(event)
                if isinstance(event, ev.LookupFinished) and event.found:
                    self.last_lookup_ok = self._now()
            try:
                self.on_event(event)
            except Exception:  # a bug of ours; the peer's datagrams decide how often
                RATELOG.exception(
                    log,
                    "dht-internal-error",
                    "DHT event handler failed on %r",
                    type(event).__name__,
                )
        self._store_again_as_we_learn()
        self._arm()

    def _store_again_as_we_learn(self) -> None:
        """Records published while we knew few nodes went to the wrong (or no) holders:
        store them again each time the routing table first reaches 1, 8 and k contacts
        (a first node with no bootstrap learns the network only as others join it)."""
        size = len(self.node.table)
        while self._thresholds and size >= self._thresholds[0]:
            self._thresholds.pop(0)
            for raw in self._own.values():
                with contextlib.suppress(Exception):
                    self.node.publish(raw, self._now())
            self._send_queued()

    def _send_queued(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            for (host, port), payload in self.node.datagrams_to_send():
                # ValueError: uvloop's word for an address of the other family (an IPv4
                # contact while we are bound to ::1), which a peer can hand us.
                with contextlib.suppress(OSError, ValueError):
                    self.transport.sendto(payload, (self._wire_host(host), port))

    def _wire_host(self, host: str) -> str:
        if self.mapped and ":" not in host:
            return f"::ffff:{host}"
        return host

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        when = self.node.next_timer()
        delay = max(0.0, when - self._now())
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.node.handle_timer(self._now())
        self._pump()

    # ------------------------------------------------------------------ API
    def bootstrap(self, addresses: list[Address]) -> None:
        """Ping each address; the first answer starts the join. Nothing reports a ping
        that is never answered: the address just stays out of `contact_addresses()`, which
        is what the caller's bootstrap keeper (vx6.node.peers) watches to try again."""
        usable = [a for a in addresses if _is_ip(a[0])]
        if usable:
            self.node.bootstrap(usable, self._now())
            self._pump()

    def contact_addresses(self) -> list[Address]:
        """The addresses in the routing table now (each answered us recently)."""
        return [contact.address for contact in self.node.table.contacts()]

    async def lookup(
        self, target: bytes, *, want_value: bool = True, timeout: float = LOOKUP_TIMEOUT
    ) -> ev.RecordFound | ev.LookupFinished:
        """The first answer of a lookup: RecordFound as soon as a valid record is held
        (the lookup finishes in the background), else LookupFinished."""
        now = self._now()
        if want_value:
            lookup_id = self.node.find_value(target, now, interactive=True)
        else:
            lookup_id = self.node.find_node(target, now, interactive=True)
        fut: asyncio.Future[ev.Event] = asyncio.get_running_loop().create_future()
        self._waiters[lookup_id] = fut
        self._pump()
        try:
            async with asyncio.timeout(timeout):
                result = await fut
        finally:
            self._waiters.pop(lookup_id, None)
        assert isinstance(result, ev.RecordFound | ev.LookupFinished)
        return result

    def publish(self, raw: bytes, slot: bytes = b"") -> None:
        self._own[slot or raw] = raw
        try:
            self.node.publish(raw, self._now())
        except Exception as exc:  # our own record should always pass: say so if not
            log.warning("DHT publish refused our own record: %s", exc)
        self._pump()

    async def store(self, raw: bytes, *, timeout: float = LOOKUP_TIMEOUT) -> int:
        """Publish `raw` under each of its keys (as `publish`) and wait for the STOREs:
        how many holders acknowledged, over all keys (what was known at `timeout`; 0 if
        our own node refused it)."""
        now = self._now()
        try:
            record = decode_record(raw)
            lookup_ids = self.node.publish_under_each_key(raw, now)
        except (DecodeError, RecordRejected) as exc:  # our own record should pass: say so
            log.warning("DHT store refused our own record: %s", exc)
            return 0
        if record.kind == Kind.HIDDEN_DESCRIPTOR:  # a service should send these via a proxy
            self.descriptor_stores_originated += 1
        # Re-stored after joining like `publish`'s, one per (kind, signer); expired ones go.
        for slot, held in list(self._own.items()):
            if slot[:1] == bytes([record.kind]) and decode_record(held).expires <= now:
                del self._own[slot]
        self._own[bytes([record.kind]) + record.signer] = raw
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in lookup_ids]
        self._stores.update(zip(lookup_ids, futures, strict=True))
        self._pump()
        stored = 0
        try:
            async with asyncio.timeout(timeout):
                for fut in futures:
                    stored += (await fut).stored
        except TimeoutError:
            pass  # the STOREs go on in the background; report what settled in time
        finally:
            for lookup_id in lookup_ids:
                self._stores.pop(lookup_id, None)
        return stored

    def health(self) -> dict[str, object]:
        stats = dict(self.node.stats)
        return {
            "table_size": len(self.node.table),
            "records_held": len(self.node.store),
            # Entries held under each relay directory key (each at most max_slots_per_target).
            "relay_directory_held": [len(self.node.store.held(k)) for k in RELAY_DIRECTORY_KEYS],
            "active_lookups": self.node.active_lookups,
            "last_successful_lookup": self.last_lookup_ok,
            "stats": stats,
            "descriptor_stores_originated": self.descriptor_stores_originated,
        }


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
