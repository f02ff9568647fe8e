"""Which addresses this host has, to publish in the node record (IPv6 first)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path


def parse_endpoint(text: str, default_port: int | None = None) -> tuple[str, int]:
    """'[::1]:4242', '127.0.0.1:4242', '::1' (with default port), 'localhost:22'."""
    text = text.strip()
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad address {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        host, port_text = text, None  # bare IPv6 literal
    else:
        host, port_text = text, None
    if port_text is None:
        if default_port is None:
            raise ValueError(f"bad address {text!r}: no port (use HOST:PORT or [IPv6]:PORT)")
        port = default_port
    else:
        if not port_text.isdigit():
            raise ValueError(f"bad port in {text!r}")
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    return host, port


def format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def network_of(host: str) -> str:
    """The /48 (IPv6) or /24 (IPv4) a host is in: the unit of diversity and of caps."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    prefix = 48 if addr.version == 6 else 24
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def is_wildcard(host: str) -> bool:
    return host in ("", "::", "0.0.0.0")


def local_addresses() -> list[str]:
    """Global IPv6 addresses first, then IPv4, from the kernel's own tables (Linux);
    loopback is left out."""
    v6: list[str] = []
    proc = Path("/proc/net/if_inet6")
    if proc.exists():
        for line in proc.read_text().splitlines():
            fields = line.split()
            if len(fields) < 6:
                continue
            raw, scope, flags = fields[0], int(fields[3], 16), int(fields[4], 16)
            if scope != 0 or flags & 0x20 or flags & 0x40:  # not global, or deprecated/tentative
                continue
            addr = ipaddress.IPv6Address(bytes.fromhex(raw))
            if not addr.is_loopback:
                v6.append(str(addr))
    return v6 + _ipv4_addresses()


def _ipv4_addresses() -> list[str]:
    """Interface IPv4 addresses via SIOCGIFADDR: asks the kernel, sends nothing."""
    try:
        import fcntl
    except ImportError:  # not on Linux/Unix: publish IPv6 (and what the user gives)
        return []
    siocgifaddr = 0x8915
    out: list[str] = []
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                res = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        host = socket.inet_ntoa(res[20:24])
        if not ipaddress.ip_address(host).is_loopback and host not in out:
            out.append(host)
    return out


def dialable(host: str, own_listen: list[tuple[str, int]]) -> bool:
    """May a relay dial `host` for an EXTEND? Never an unspecified or multicast address,
    and a loopback one only on a node that itself listens only on loopback (a local test
    network): a client must not use relays to reach services on their own localhost."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if ip.is_unspecified or ip.is_multicast:
        return False
    if ip.is_loopback:
        return bool(own_listen) and all(is_loopback(h) for h, _ in own_listen)
    return True
