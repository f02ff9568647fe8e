"""Rejoining without a bootstrap: the peers a node reached before, kept in the registry."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from vx6.core.dht.contacts import Contact, prefix_of
from vx6.net.addresses import network_of
from vx6.store.registry import Registry, RegistryError

log = logging.getLogger("vx6.node")


def remembered_peers(registry: Registry, own_key: bytes, count: int = 3) -> list[tuple[str, int]]:
    """With no peer given, rejoin through nodes we reached before: the most recently
    seen, at most one per network (/48 for IPv6, /24 for IPv4) for diversity."""
    chosen: list[tuple[str, int]] = []
    networks: set[str] = set()
    for peer in registry.peers(limit=200):
        if peer.key == own_key:
            continue
        # Loopback and the test prefixes count per host, like the DHT's caps.
        net = network_of(peer.host) if prefix_of(peer.host) is not None else peer.host
        if net in networks:
            continue
        networks.add(net)
        chosen.append((peer.host, peer.port))
        if len(chosen) == count:
            break
    if chosen:
        log.info("rejoining through remembered peers: %s", chosen)
    return chosen


def remember_contacts(
    registry: Registry, contacts: Sequence[Contact], now: float, count: int = 8
) -> None:
    """Keep a few DHT contacts that are in our table now (they answered recently),
    so a restart without any bootstrap can rejoin through them."""
    with contextlib.suppress(RegistryError):  # background write: dropped if degraded
        for contact in contacts[:count]:
            host, port = contact.address
            registry.upsert_peer(host, port, now)


async def every(
    seconds: float, job: Callable[[], None], sleep: Callable[[float], Awaitable[None]]
) -> None:
    """Run `job` every `seconds` (a periodic timer, not synchronisation)."""
    while True:
        await sleep(seconds)
        job()
