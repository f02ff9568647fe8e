"""Dialling a link: a TCP connection, then the handshake, within one deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from vx6.core.link_config import LinkConfig
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import CloseCode
from vx6.net.link import LinkOwner, LinkProtocol


async def dial(
    owner: LinkOwner,
    host: str,
    port: int,
    *,
    identity: Identity,
    link_key: StaticKey,
    remote_link_key: bytes | None = None,
    expected_identity: bytes | None = None,
    timeout: float = 5.0,
    config: LinkConfig | None = None,
    clock: Callable[[], float] | None = None,
) -> LinkProtocol:
    """Open a TCP connection and complete the handshake, or raise OSError/LinkError."""
    loop = asyncio.get_running_loop()

    def factory() -> LinkProtocol:
        return LinkProtocol(
            owner,
            initiator=True,
            identity=identity,
            link_key=link_key,
            remote_link_key=remote_link_key,
            expected_identity=expected_identity,
            config=config,
            clock=clock,
        )

    async with asyncio.timeout(timeout):
        _, proto = await loop.create_connection(factory, host, port)
        try:
            await proto.established
        except BaseException:
            proto.close(CloseCode.HANDSHAKE_FAILED, "dial abandoned")
            raise
    return proto
