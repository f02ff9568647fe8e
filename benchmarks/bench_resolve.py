"""Name resolution on a real loopback network of N nodes (default 50): from the local
registry versus through the DHT.

Every node is a real `python -m vx6 run` process in its own temporary home, started
with `--bootstrap` pointing at node 0 and nothing else (no sync peers), and claims its
own name. One client node then resolves every other node's name twice: the first time
the registry does not know it, so it goes to the DHT; the second time it is answered
from the registry. The figure is the resolution time measured inside the client's
daemon (`resolved_via`, `elapsed_ms` of the `resolve` control op), so the control
socket's own round trip is not counted.

    python benchmarks/bench_resolve.py [--nodes 50] [--json]

Targets (issue 3): registry p50 <= 1 ms, DHT p50 <= 50 ms. Bounded: every node is
stopped at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vx6.app.localnet import LocalNet, LocalNode, wait_for


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    with LocalNet() as net:
        first = net.start("n0")
        nodes: list[LocalNode] = [first]
        for i in range(1, args.nodes):
            nodes.append(net.start(f"n{i}", extra=("--bootstrap", first.listen), wait=False))
        for node in nodes[1:]:
            net.wait_ready(node)
        client = nodes[-1]
        # Let every node finish joining and storing its records (bounded wait).
        wait_for(
            lambda: client.call("status")["dht"]["table_size"] >= min(20, args.nodes - 1),
            60,
            "the client's routing table to fill",
        )
        samples: dict[str, list[float]] = {"dht": [], "registry": []}
        failures = 0
        for node in nodes[:-1]:
            for _ in range(2):  # the first time may need the DHT, the second never does
                reply = client.try_call("resolve", address=f"{node.name}.x")
                if not reply.get("ok"):
                    failures += 1
                    continue
                samples[str(reply["resolved_via"])].append(float(reply["elapsed_ms"]))
        dht, registry = samples["dht"], samples["registry"]
    result = {
        "nodes": args.nodes,
        "names": args.nodes - 1,
        "failures": failures,
        "registry_ms": _summary(registry),
        "dht_ms": _summary(dht),
        "targets": {"registry_p50_ms": 1.0, "dht_p50_ms": 50.0},
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"python": platform.python_version(), "kernel": platform.release()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.nodes} nodes on loopback, {result['names']} names, {failures} failures")
        for label, key, target in (("registry", "registry_ms", 1.0), ("DHT", "dht_ms", 50.0)):
            s = result[key]
            verdict = "pass" if s and s["p50"] <= target else "FAIL"
            print(
                f"  {label:8s} p50 {s.get('p50')} ms  p99 {s.get('p99')} ms"
                f"  (target p50 <= {target} ms: {verdict})"
            )
    return 0 if failures == 0 else 2


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(statistics.median(values), 3),
        "p99": round(percentile(values, 0.99), 3),
        "max": round(max(values), 3),
        "count": len(values),
    }


if __name__ == "__main__":
    raise SystemExit(main())
