"""The node's link listeners: from the `--listen` endpoints the user gave to bound sockets.

Theory of operation. An endpoint's host is an IP literal (`::`, `127.0.0.1`, `[::1]`) or
a host name. A name is resolved here, at bind time, the way `--target` names are resolved
when the owner connects: every address it has is bound (IPv6 first), so
`--listen localhost:4242` listens on 127.0.0.1 (and ::1 where the resolver gives it).
`localhost` is loopback without asking any resolver (RFC 6761): ::1 and 127.0.0.1, so a
node told `localhost` never listens on a public address whatever /etc/hosts says, and
sends no DNS query. A name that is not a valid host name is refused before the resolver
sees it. What the node
records as its listen addresses are the bound IP literals: they go into its node record,
which holds addresses only.

Every expected failure is one `ListenError` naming the endpoint and the reason (port in
use, address not on this host, permission, a name that does not resolve), so `vx6 run`
prints one line instead of a traceback. Of a name's several addresses, one this host
cannot bind (no IPv6 loopback, say) is skipped if another one bound; port 0 with several
addresses reuses the first one's port where it is free, so the node has one port.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket

from vx6.errors import ListenError
from vx6.net.accept import listen_socket
from vx6.net.addresses import format_endpoint

log = logging.getLogger("vx6.node")

# Of a name's several addresses, these errors skip one (another one bound).
NOT_HERE = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})
LOCALHOST = ("::1", "127.0.0.1")  # IPv6 first, like every other address list
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def resolve_listen_host(host: str, port: int) -> list[str]:
    """The IP literals to bind for `host`: itself if it is one (or empty: the wildcard),
    both loopbacks for `localhost`, else what the resolver gives, IPv6 first, without
    duplicates. Blocking: called once at start-up, before the node serves anything."""
    if host == "" or _is_literal(host):
        return [host]
    if host.lower().rstrip(".") == "localhost":
        return list(LOCALHOST)
    if not _HOST_NAME.fullmatch(host) or len(host) > 253:
        raise ListenError(
            f"cannot listen on {format_endpoint(host, port)}: {host!r} is neither an IP "
            f"address nor a host name"
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ListenError(
            f"cannot listen on {format_endpoint(host, port)}: {host!r} does not resolve "
            f"({reason or exc})"
        ) from exc
    found: list[str] = []
    for family, _, _, _, address in infos:
        if family not in (socket.AF_INET6, socket.AF_INET):
            continue
        literal = str(address[0])
        if literal not in found:
            found.append(literal)
    if not found:
        raise ListenError(f"cannot listen on {format_endpoint(host, port)}: no IP address")
    return sorted(found, key=lambda a: ":" not in a)  # IPv6 first; stable otherwise


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def open_listeners(endpoints: list[tuple[str, int]]) -> list[tuple[socket.socket, str]]:
    """Bound, listening sockets for `endpoints`, each with the IP literal it is bound to.
    All or nothing: on a ListenError the sockets opened so far are closed."""
    opened: list[tuple[socket.socket, str]] = []
    taken: set[tuple[str, int]] = set()
    try:
        for host, port in endpoints:
            _open_endpoint(host, port, opened, taken)
    except BaseException:
        for sock, _ in opened:
            sock.close()
        raise
    return opened


def _open_endpoint(
    host: str, port: int, opened: list[tuple[socket.socket, str]], taken: set[tuple[str, int]]
) -> None:
    addresses = resolve_listen_host(host, port)
    named = addresses != [host]
    first_port = 0
    bound_any = False
    for address in addresses:
        want = port or first_port
        if port and (address, port) in taken:
            bound_any = True  # `--listen localhost:P --listen 127.0.0.1:P`: bound already
            continue
        try:
            sock = _bind(address, want, port)
        except OSError as exc:
            if named and exc.errno in NOT_HERE:
                log.info("not listening on %s: %s", format_endpoint(address, want), _reason(exc))
                continue
            where = format_endpoint(address, want)
            given = f" ({format_endpoint(host, port)})" if named else ""
            raise ListenError(f"cannot listen on {where}{given}: {_reason(exc)}") from exc
        bound_port = int(sock.getsockname()[1])
        first_port = first_port or bound_port
        taken.add((address, bound_port))
        opened.append((sock, address))
        bound_any = True
    if not bound_any:
        raise ListenError(
            f"cannot listen on {format_endpoint(host, port)}: none of its addresses "
            f"({', '.join(addresses)}) is on this host"
        )


def _bind(address: str, want: int, given: int) -> socket.socket:
    try:
        return listen_socket(address, want)
    except OSError as exc:
        if given == 0 and want != 0 and exc.errno == errno.EADDRINUSE:
            return listen_socket(address, 0)  # port 0: any port will do for this address
        raise
