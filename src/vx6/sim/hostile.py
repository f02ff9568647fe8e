"""Hostile DHT nodes for the simulator: they join and route like anyone, but lie.

They hold real keys (the simulator's stand-in signatures), so they cannot forge; what
they do instead, each according to its `style`:

    liar   answers FIND_NODE / FIND_VALUE with contacts "closer" to the target: the
           other hostile nodes, and ids next to the target at addresses where nobody
           listens (each of those costs a lookup a timeout)
    stale  answers FIND_VALUE with an old, validly signed version of the record it was
           given (a replay), else lies like `liar`
    junk   answers FIND_VALUE with records that break the rules (a bad signature, a
           record under the wrong key), else lies like `liar`

Every style acknowledges STOREs and throws the record away, and answers PING so that
honest nodes keep it in their tables.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable

from vx6.core.dht import Contact, Credentials, DhtConfig, DhtNode
from vx6.wire import dht as wire

STYLES = ("liar", "stale", "junk")
FAKE_BASE = int(ipaddress.IPv6Address("2c00::"))


class HostileNode(DhtNode):
    def __init__(
        self,
        credentials: Credentials,
        *,
        entropy: Callable[[int], bytes],
        now: float,
        config: DhtConfig,
        rng: random.Random,
        style: str,
        accomplices: list[Contact],
        stale_records: dict[bytes, bytes],
        junk_records: dict[bytes, bytes],
    ) -> None:
        super().__init__(credentials, entropy=entropy, now=now, config=config)
        self.style = style
        self._rng = rng
        self._accomplices = accomplices  # shared list, filled as hostile nodes are made
        self._stale = stale_records
        self._junk = junk_records
        self.lies = 0

    def _fake_contacts(self, target: bytes) -> tuple[wire.WireContact, ...]:
        target_int = int.from_bytes(target, "big")
        friends = sorted(self._accomplices, key=lambda c: c.id_int ^ target_int)[:10]
        out = [
            wire.WireContact(c.node_id, c.address[0], c.address[1])
            for c in friends
            if c.node_id != self.node_id
        ]
        while len(out) < wire.MAX_CONTACTS:
            fake_id = target_int ^ self._rng.getrandbits(200)
            host = str(ipaddress.IPv6Address(FAKE_BASE + (self._rng.getrandbits(32) << 80) + 1))
            out.append(wire.WireContact(fake_id.to_bytes(32, "big"), host, 4242))
        return tuple(out)

    def _serve(self, message: wire.Message, sender: Contact, now: float) -> None:
        me, to = self.credentials.public, sender.address
        if isinstance(message, wire.Ping):
            super()._serve(message, sender, now)
            return
        self.lies += 1
        if isinstance(message, wire.Store):
            self._send(to, wire.Stored(message.txid, me, wire.StoreStatus.OK, ""))
            return
        if not isinstance(message, wire.FindNode | wire.FindValue):
            return
        token = self._tokens.issue(to[0])
        if isinstance(message, wire.FindValue):
            bad = {"stale": self._stale, "junk": self._junk}.get(self.style, {})
            record = bad.get(message.target)
            if record is not None:
                self._send(to, wire.Values(message.txid, me, token, (record,)))
                return
        self._send(to, wire.Nodes(message.txid, me, token, self._fake_contacts(message.target)))
