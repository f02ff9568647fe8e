"""The honest traffic of bench_hostile.py, in a process of its own (so a busy attacker
or the benchmark's sampling never delays it): `python _honest.py JSON`.

Theory of operation. Two schedules run side by side for `seconds`, one attempt every
`interval` seconds each, started on the schedule whether or not the previous attempt has
finished (so a stalled victim cannot make the honest side try less often):

* probe: a fresh TCP connection to the client node's forward (127.0.0.1:PORT), 16
  random bytes out, the same 16 back within `timeout` - a service reached through the
  victim (direct, or through the victim relaying a circuit);
* handshake: a fresh link to the victim (`vx6.net.dial.dial`, Noise XX with this
  process's own identity), timed to established, then closed. A failed handshake counts
  at `timeout` in the latency figures, so failures show up in the p99.

Every attempt is bounded by `timeout`; the process prints one JSON line and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from typing import Any

import _setup  # noqa: F401  (makes vx6 importable from a bare checkout)
from _attack_kit import LOOPBACK, Peer

from vx6.crypto.keys import Identity, StaticKey
from vx6.net.dial import dial


async def probe(port: int, timeout: float, stats: Counter[str], latencies: list[float]) -> None:
    payload = os.urandom(16)
    writer = None
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            await writer.drain()
            got = await reader.readexactly(len(payload))
        stats["probes_ok" if got == payload else "probes_corrupt"] += 1
        latencies.append(time.perf_counter() - started)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        stats[f"probe_failed_{type(exc).__name__}"] += 1
    finally:
        if writer is not None:
            writer.close()


async def handshake(
    host: str,
    port: int,
    keys: tuple[Identity, StaticKey],
    timeout: float,
    stats: Counter[str],
    latencies: list[float],
) -> None:
    started = time.perf_counter()
    try:
        link = await dial(
            Peer(Counter()), host, port, identity=keys[0], link_key=keys[1], timeout=timeout
        )
    except Exception as exc:  # refused, reset, timed out: all failures of the victim
        stats[f"handshake_failed_{type(exc).__name__}"] += 1
        latencies.append(timeout)
        return
    latencies.append(time.perf_counter() - started)
    stats["handshakes_ok"] += 1
    with contextlib.suppress(Exception):
        link.close()


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["host"] not in LOOPBACK:
        raise SystemExit("loopback only")
    keys = (Identity(bytes.fromhex(spec["identity"])), StaticKey(os.urandom(32)))
    stats: Counter[str] = Counter()
    latencies: list[float] = []
    probe_latencies: list[float] = []
    interval, timeout = float(spec["interval"]), float(spec["timeout"])
    attempts = max(1, int(float(spec["seconds"]) / interval))
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    for i in range(attempts):
        await asyncio.sleep(max(0.0, start + i * interval - time.monotonic()))  # the schedule
        tasks.append(
            asyncio.create_task(probe(int(spec["probe_port"]), timeout, stats, probe_latencies))
        )
        tasks.append(
            asyncio.create_task(
                handshake(spec["host"], int(spec["port"]), keys, timeout, stats, latencies)
            )
        )
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "probes": attempts,
        "probes_ok": stats["probes_ok"],
        "handshakes": attempts,
        "handshakes_ok": stats["handshakes_ok"],
        "handshake_ms": sorted(round(x * 1000, 2) for x in latencies),
        "probe_ok_ms": sorted(round(x * 1000, 2) for x in probe_latencies),
        "failures": {k: v for k, v in stats.items() if "failed" in k or "corrupt" in k},
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))), flush=True)
