"""Contacts, XOR distance and the address prefixes that the diversity caps count.

A contact is a node id (SHA-256 of the node's identity key) and the UDP address it was
heard from. The diversity caps count contacts per IPv6 /48 or IPv4 /24; loopback and the
test prefixes fd76:7836::/48 and 198.18.0.0/15 are exempt so that a testbed whose nodes
all share one prefix still works.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

ID_BITS = 256
Address = tuple[str, int]

EXEMPT_NETWORKS = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("fd76:7836::/48"),
    ipaddress.ip_network("198.18.0.0/15"),
)


class Contact:
    """A node id and its UDP address. Immutable; equal when id and address are."""

    __slots__ = ("address", "id_int", "node_id")

    def __init__(self, node_id: bytes, address: Address) -> None:
        self.node_id = node_id
        self.address = address
        self.id_int = int.from_bytes(node_id, "big")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Contact):
            return NotImplemented
        return self.node_id == other.node_id and self.address == other.address

    def __hash__(self) -> int:
        return hash((self.node_id, self.address))

    def __repr__(self) -> str:
        return f"Contact({self.node_id.hex()[:16]}, {self.address!r})"


def id_to_int(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def common_prefix_bits(a: int, b: int) -> int:
    """Leading bits two 256-bit ids share (256 if equal)."""
    return ID_BITS - (a ^ b).bit_length()


@lru_cache(maxsize=1 << 16)
def normalize_host(host: str) -> str | None:
    """Canonical text of an IP literal (IPv4-mapped IPv6 becomes IPv4); None if `host`
    is not an IP literal or carries an IPv6 zone (a zone means nothing to other nodes)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            return None
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
    return str(addr)


@lru_cache(maxsize=1 << 16)
def prefix_of(host: str) -> bytes | None:
    """The /48 (IPv6) or /24 (IPv4) a host belongs to, or None if the caps exempt it."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in EXEMPT_NETWORKS if net.version == addr.version):
        return None
    packed = addr.packed
    return bytes([addr.version]) + (packed[:6] if addr.version == 6 else packed[:3])
