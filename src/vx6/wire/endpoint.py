"""The one encoding of an IP endpoint, shared by every codec (records, DHT, cells):

    family u8 (4 or 6) | address (4 or 16 bytes) | port u16 (1..65535)

Canonical: IPv4 travels only as family 4 (never IPv4-mapped IPv6), no IPv6 zone, no
port 0, so each endpoint has exactly one encoding.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from vx6.errors import DecodeError

FAMILY_LEN = {4: 4, 6: 16}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(host: str) -> IPAddress:
    """An IP literal an endpoint can carry; ValueError otherwise."""
    if not isinstance(host, str):
        raise ValueError("host must be an IP literal string")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP literal: {host[:64]!r}") from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            raise ValueError("an endpoint cannot carry an IPv6 zone")
        if addr.ipv4_mapped is not None:
            raise ValueError("write an IPv4-mapped address as plain IPv4")
    return addr


def pack_endpoint(host: str, port: int) -> bytes:
    addr = parse_ip(host)
    if not isinstance(port, int) or not 1 <= port <= 0xFFFF:
        raise ValueError(f"port must be 1..65535, got {port!r}")
    return bytes([addr.version]) + addr.packed + port.to_bytes(2, "big")


def unpack_endpoint(
    data: bytes | memoryview, pos: int, limit: int | None = None
) -> tuple[str, int, int]:
    """Decode the endpoint at `pos` (not reading at or past `limit`, default the end of
    `data`); return (host text, port, position after it)."""
    limit = len(data) if limit is None else limit
    if pos >= limit:
        raise DecodeError("endpoint truncated")
    family = data[pos]
    size = FAMILY_LEN.get(family)
    if size is None:
        raise DecodeError(f"unknown address family {family}")
    end = pos + 1 + size + 2
    if end > limit:
        raise DecodeError("endpoint truncated")
    port = int.from_bytes(data[end - 2 : end], "big")
    if port == 0:
        raise DecodeError("endpoint port 0")
    return _host_text(bytes(data[pos + 1 : end - 2])), port, end


@lru_cache(maxsize=1 << 16)
def _host_text(raw: bytes) -> str:
    # Cached: a DHT node decodes the same few hundred contacts over and over.
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    addr = ipaddress.IPv6Address(raw)
    if addr.ipv4_mapped is not None:
        raise DecodeError("IPv4-mapped address must be sent as family 4")
    return str(addr)
