"""A real node against one authenticated peer that floods PINGs and never reads: the node
closes that link (RATE_LIMITED, after the bucket's burst) and honest peers dialling while
the flood is sent get their handshakes and pings answered (on the base commit the flood
kept the node's event loop busy and their handshakes timed out)."""

from __future__ import annotations

import asyncio
import os
import time

from kit.net import RawPeer
from vx6.app.localnet import LocalNet, wait_for
from vx6.crypto.keys import Identity, StaticKey
from vx6.net.addresses import parse_endpoint
from vx6.net.dial import dial
from vx6.net.link import LinkProtocol
from vx6.wire import frames as fr

FLOOD_LIMIT = 64 * 1024 * 1024  # bytes of PINGs at most
FLOOD_SECONDS = 20.0


class StubOwner(RawPeer):
    def __init__(self) -> None:
        self.closed: asyncio.Future[tuple[int, str, bool]] = (
            asyncio.get_running_loop().create_future()
        )

    def link_closed(self, link: LinkProtocol, code: int, reason: str, by_peer: bool) -> None:
        if not self.closed.done():
            self.closed.set_result((code, reason, by_peer))


async def _dial(host: str, port: int) -> tuple[LinkProtocol, StubOwner]:
    owner = StubOwner()
    identity, link_key = Identity(os.urandom(32)), StaticKey(os.urandom(32))
    link = await dial(owner, host, port, identity=identity, link_key=link_key, timeout=5.0)
    return link, owner


def test_a_ping_flood_is_closed_and_does_not_stall_the_node() -> None:
    with LocalNet() as net:
        node = net.start("flooded", listen="127.0.0.1:0", claim=False)
        host, port = parse_endpoint(node.listen)

        async def run() -> tuple[int, int]:
            flooder, flood_owner = await _dial(host, port)
            transport = flooder.transport
            assert transport is not None
            transport.pause_reading()  # never reads a PONG
            sent = 0

            async def flood() -> None:
                nonlocal sent
                deadline = time.monotonic() + FLOOD_SECONDS
                while (
                    not flood_owner.closed.done()
                    and sent < FLOOD_LIMIT
                    and time.monotonic() < deadline
                ):
                    for token in range(2000):
                        flooder.core._send_frame(fr.Ping(token))
                    chunk = flooder.core.data_to_send()
                    sent += sum(map(len, chunk))
                    if transport.is_closing():
                        return
                    transport.writelines(chunk)
                    while transport.get_write_buffer_size() > 1024 * 1024:
                        if flood_owner.closed.done() or time.monotonic() > deadline:
                            return
                        await asyncio.sleep(0.005)  # pacing our own send buffer
                    await asyncio.sleep(0)

            task = asyncio.create_task(flood())
            answered = 0
            for _ in range(5):  # honest peers meanwhile: handshake and a ping each
                honest, _ = await _dial(host, port)
                async with asyncio.timeout(5):
                    await honest.ping()
                answered += 1
                honest.close()
            async with asyncio.timeout(FLOOD_SECONDS + 5):
                await task
            flooder.close()
            return answered, sent

        answered, sent = asyncio.run(run())
        assert answered == 5
        wait_for(lambda: "closed (RATE_LIMITED, we)" in node.log_text(), 15, "rate-limit close")
        assert sent < FLOOD_LIMIT  # the node ended the flood, not our budget
        assert node.process.poll() is None
        assert node.call("status")["links"] == 0
