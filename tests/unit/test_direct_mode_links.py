"""Direct mode's bookkeeping, in process: two links that share a key (a `--via` link and a
named one) in the link hub, and the records a dialled peer may send us (only its own
node record and name claim, only when asked)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kit.clock import FakeClock
from vx6.core.admission import AdmissionLimits
from vx6.core.names import solve_name_pow
from vx6.core.records import make_record
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import CloseCode
from vx6.node.link_table import LinkTable
from vx6.node.links import Links
from vx6.node.records import RecordHub
from vx6.store.registry import Registry
from vx6.wire.records import Endpoint, Kind, NameClaimBody, NodeBody

OWNER, OTHER = Identity(bytes([7]) * 32), Identity(bytes([8]) * 32)


class FakeLink:
    """What the hub and the table read of a LinkProtocol we dialled."""

    def __init__(self, key: bytes, dialled: tuple[str, int]) -> None:
        self.peer_identity = key
        self.dialled = dialled
        self.peer_address = dialled
        self.is_open = True
        self.core = SimpleNamespace(initiator=True, streams={})
        self.closed_future = SimpleNamespace(done=lambda: not self.is_open)

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        self.is_open = False


def make_links() -> Links:
    counts: dict[str, int] = {}

    def count(what: str, n: int = 1) -> None:
        counts[what] = counts.get(what, 0) + n

    clock = FakeClock()
    table = LinkTable(AdmissionLimits(), count, lambda _key: False, clock)
    return Links(
        OTHER,
        StaticKey(bytes([9]) * 32),
        table,
        node_records=None,  # type: ignore[arg-type]  (never dialled here)
        peers=None,  # type: ignore[arg-type]
        count=count,
        clock=clock,
        listen_addresses=[],
    )


def establish(links: Links, link: FakeLink) -> Any:
    links.link_established(link)  # type: ignore[arg-type]
    return link


def test_a_second_link_to_the_same_key_hands_over_when_it_closes() -> None:
    links = make_links()
    named = establish(links, FakeLink(OWNER.public, ("::1", 4242)))
    via = establish(links, FakeLink(OWNER.public, ("127.0.0.1", 4243)))
    assert links.open_link(OWNER.public) is via  # the newest
    via.close()
    links.link_closed(via, CloseCode.NORMAL, "", False)
    # The named link is still open and still found by key: no needless redial.
    assert links.open_link(OWNER.public) is named
    named.close()
    links.link_closed(named, CloseCode.NORMAL, "", False)
    assert links.open_link(OWNER.public) is None


def test_open_link_at_finds_only_a_link_dialled_to_that_endpoint() -> None:
    links = make_links()
    named = establish(links, FakeLink(OWNER.public, ("::1", 4242)))
    assert links.open_link_at("::1", 4242, OWNER.public) is named
    assert links.open_link_at("::1", 4242, None) is named
    assert links.open_link_at("127.0.0.1", 4243, OWNER.public) is None
    assert links.open_link_at("::1", 4242, OTHER.public) is None  # another key there


def own_records(identity: Identity, name: str) -> list[bytes]:
    now = time.time()
    body = NodeBody(bytes(32), bytes(32), (Endpoint("::1", 4242),), 0)
    _, node = make_record(identity, body, 1, now, 3600)
    claim_body = NameClaimBody(name, pow_nonce=solve_name_pow(name, identity.public))
    _, claim = make_record(identity, claim_body, 2, now, 3600)
    return [node, claim]


def test_a_dialled_peer_gives_only_its_own_records_and_only_when_asked(tmp_path: Path) -> None:
    counts: dict[str, int] = {}

    def count(what: str, n: int = 1) -> None:
        counts[what] = counts.get(what, 0) + n

    with Registry(tmp_path / "registry.sqlite") as registry:
        hub = RecordHub(
            registry,
            dht=None,  # type: ignore[arg-type]  (no lookups here)
            trusted=lambda _key: False,
            count=count,
            clock=SimpleNamespace(wall=time.time, monotonic=time.monotonic),  # type: ignore[arg-type]
        )
        link: Any = FakeLink(OWNER.public, ("::1", 4242))
        owner, other = own_records(OWNER, "alice"), own_records(OTHER, "alice")

        hub.received(link, tuple(owner))  # not asked: dropped, and no sync dump begins
        assert counts.get("records_dropped_unasked") == 1
        assert registry.count_records(time.time()) == 0
        assert link not in hub.neighbours

        hub.expect_identity(link)
        hub.received(link, (other[1], owner[0]))  # another key's claim of the name: ignored
        held = registry.records(now=time.time())
        assert {(r.kind, r.signer) for r in held} == {(int(Kind.NODE), OWNER.public)}

        hub.received(link, (owner[1],))  # asked once, answered once: dropped
        assert counts.get("records_dropped_unasked") == 2
        assert registry.records(kind=int(Kind.NAME_CLAIM), now=time.time()) == []

        hub.expect_identity(link)
        hub.received(link, tuple(owner))
        claims = registry.records(kind=int(Kind.NAME_CLAIM), subject="alice", now=time.time())
        assert [r.signer for r in claims] == [OWNER.public]
        assert claims[0].source == "via [::1]:4242"
        assert link not in hub.neighbours  # and nothing was sent back: no sync began
