"""Memory a node spends on idle TCP connections to its link port (loopback only).

Theory of operation. One node starts with vx6.app.localnet; its RSS is read from /proc, then
N connections are opened to its listening port, each sends one byte (so the node offers
it a read buffer) and then stays idle; RSS is read again with them open and once more
after they are closed. Everything is bounded: N connections, a few seconds of settling,
and the node is stopped on the way out.

Run: `PYTHONPATH=$PWD/src python3 benchmarks/bench_idle_links.py [--connections N]`.
"""

from __future__ import annotations

import argparse
import socket
import time

import _setup  # noqa: F401  (first: makes vx6 importable from a checkout)

from vx6.app.localnet import LocalNet, wait_for
from vx6.net.addresses import parse_endpoint


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    args = parser.parse_args()
    count = max(1, min(args.connections, 5000))
    with LocalNet() as net:
        node = net.start("idle", listen="127.0.0.1:0", claim=False)
        host, port = parse_endpoint(node.listen)
        pid = node.process.pid
        time.sleep(1.0)  # let start-up allocations settle (a measurement pause)
        before = rss_kib(pid)
        socks = []
        try:
            for _ in range(count):
                sock = socket.create_connection((host, port), timeout=10)
                sock.sendall(b"\x00")
                socks.append(sock)
            wait_for(lambda: "links" in node.call("status"), 10, "status")
            time.sleep(2.0)  # the node reads each byte (a measurement pause)
            during = rss_kib(pid)
        finally:
            for sock in socks:
                sock.close()
        time.sleep(3.0)
        after = rss_kib(pid)
    print(
        f"{count} idle connections: RSS {before} KiB -> {during} KiB "
        f"({(during - before) / count:.1f} KiB each); {after} KiB after they closed"
    )


if __name__ == "__main__":
    main()
