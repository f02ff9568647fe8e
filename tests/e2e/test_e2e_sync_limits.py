"""A full dump of the registry is the node's most expensive answer to a 2-byte request
(an empty RECORDS frame): one peer key gets it at most once a minute (issue: hardening,
finding 15). A raw peer asks again and again over fresh links with one key; only its
first link gets a dump, the refusals are counted, and a different key still gets one."""

from __future__ import annotations

import asyncio
import os

import pytest

from kit.net import counters
from vx6.app.localnet import LocalNet, LocalNode
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import StreamError
from vx6.net.addresses import parse_endpoint
from vx6.net.dial import dial
from vx6.net.link import LinkProtocol
from vx6.wire import frames

pytestmark = pytest.mark.timeout(60)


class Collector:
    """A LinkOwner that only counts the records the node sends it."""

    def __init__(self) -> None:
        self.records = 0

    def link_established(self, link: LinkProtocol) -> None:
        pass

    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        pass

    def stream_requested(self, link: LinkProtocol, sid: int, service: str, flags: int) -> None:
        link.reject_stream(sid, StreamError.UNKNOWN_SERVICE, "collector")

    def records_received(self, link: LinkProtocol, records: tuple[bytes, ...]) -> None:
        self.records += len(records)

    def link_paused(self, link: LinkProtocol, paused: bool) -> None:
        pass


async def ask_for_a_dump(node: LocalNode, identity: Identity) -> int:
    """Dial `node` as `identity`, send one empty RECORDS frame, and return how many
    records came back before the answer to a second PING. The node may answer a PING
    that arrived with the RECORDS frame before it dispatches the frame (a dump starts
    from that dispatch, in the same turn); by the time it reads the second PING, sent
    after the first answer came back, whatever dump it started is on the wire ahead."""
    host, port = parse_endpoint(node.listen)
    owner = Collector()
    link = await dial(owner, host, port, identity=identity, link_key=StaticKey(os.urandom(32)))
    try:
        link.core._send_frame(frames.Records(()))  # 2 bytes: type and a count of 0
        link._pump()
        async with asyncio.timeout(10):
            await link.ping()
            await link.ping()
        return owner.records
    finally:
        link.close()


def test_one_full_dump_per_key_per_interval() -> None:
    with LocalNet() as net:
        node = net.start("dumper")
        for i in range(3):  # something to dump besides its own records
            node.call("expose", name=f"svc{i}", target="127.0.0.1:1", public=True)
        asker = Identity(os.urandom(32))

        async def run() -> list[int]:
            return [await ask_for_a_dump(node, asker) for _ in range(5)]

        answers = asyncio.run(run())
        assert answers[0] >= 5, answers  # node record, name claim, three services
        assert answers[1:] == [0, 0, 0, 0]
        seen = counters(node)
        assert seen["sync_dumps_sent"] == 1
        assert seen["sync_dumps_refused"] == 4
        other = asyncio.run(ask_for_a_dump(node, Identity(os.urandom(32))))
        assert other == answers[0]  # another key is not held back by this one
        assert node.process.poll() is None
