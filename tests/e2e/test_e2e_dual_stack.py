"""A node bound to one address family, told of a peer of the other, keeps running.

The DHT then has contacts it cannot send to from its socket (uvloop says so with a
ValueError, not an OSError); such datagrams are dropped and the node goes on. A peer can
hand any node such a contact, so this was a way to end a node from outside.
"""

from __future__ import annotations

from vx6.app.localnet import LocalNet


def test_an_ipv6_only_node_with_an_ipv4_peer_keeps_running(localnet: LocalNet) -> None:
    hub = localnet.start("hub4", listen="127.0.0.1:0")
    # start() returns once the node answers `status`: by then it has sent its DHT
    # bootstrap to the IPv4 peer from its IPv6-only socket.
    node = localnet.start("v6only", listen="[::1]:0", peers=(hub.listen,))
    assert node.call("status")["ok"] is True
    assert node.process.poll() is None, node.log_text()
    assert "Traceback" not in node.log_text(), node.log_text()
