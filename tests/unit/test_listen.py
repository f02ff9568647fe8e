"""The node's link listeners (vx6.net.listen, issue 11 g): host names are resolved to
the addresses bound (`localhost` without any resolver), and every expected failure is
one ListenError that names the endpoint and the reason, with nothing left open."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from vx6.errors import ListenError
from vx6.net.listen import open_listeners, resolve_listen_host


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _no_resolver(*_: Any, **__: Any) -> Any:
    raise AssertionError("the resolver was asked")


def _close(opened: list[tuple[socket.socket, str]]) -> None:
    for sock, _ in opened:
        sock.close()


def test_localhost_is_both_loopbacks_on_one_port_without_asking_a_resolver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _no_resolver)
    assert resolve_listen_host("localhost", 4242) == ["::1", "127.0.0.1"]
    opened = open_listeners([("localhost", 0)])
    try:
        hosts = [host for _, host in opened]
        ports = {sock.getsockname()[1] for sock, _ in opened}
        assert hosts == (["::1", "127.0.0.1"] if _has_ipv6_loopback() else ["127.0.0.1"])
        assert len(ports) == 1 and 0 not in ports
    finally:
        _close(opened)


def test_literals_pass_unresolved_and_a_bad_name_never_reaches_the_resolver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _no_resolver)
    assert resolve_listen_host("::", 1) == ["::"]
    assert resolve_listen_host("127.0.0.1", 1) == ["127.0.0.1"]
    for bad in ("bad_name", "a..b", "-a.example", "a" * 64 + ".example"):
        with pytest.raises(ListenError, match="neither an IP address nor a host name"):
            resolve_listen_host(bad, 1)


def test_a_name_that_does_not_resolve_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: Any, **__: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(ListenError, match=r"node\.example:4242: 'node\.example' does not resolve"):
        open_listeners([("node.example", 4242)])


def test_a_name_binds_every_address_it_resolves_to_ipv6_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake(host: str, port: int, **_: Any) -> Any:
        assert host == "node.example"
        tcp = (socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
        return [
            (socket.AF_INET, *tcp, ("127.0.0.1", port)),
            (socket.AF_INET6, *tcp, ("::1", port, 0, 0)),
            (socket.AF_INET, *tcp, ("127.0.0.1", port)),  # duplicates happen
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert resolve_listen_host("node.example", 0) == ["::1", "127.0.0.1"]


def test_a_port_in_use_is_one_error_and_nothing_stays_open() -> None:
    with socket.socket() as holder, socket.socket() as probe:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
        probe.close()
        with pytest.raises(ListenError, match=rf"cannot listen on 127\.0\.0\.1:{taken}: address"):
            open_listeners([("127.0.0.1", free), ("127.0.0.1", taken)])
        # The first endpoint's socket was closed: its port can be bound again.
        _close(open_listeners([("127.0.0.1", free)]))
