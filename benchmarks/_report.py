"""Measuring and reporting for the benchmarks: /proc readers, py-spy, the table.

Theory of operation. Node memory comes from /proc/PID/status (VmRSS now, VmHWM the peak
since the last reset through /proc/PID/clear_refs); CPU share from utime + stime in
/proc/PID/stat around a measured block. `Profiler` runs `py-spy record` against given
processes for the length of a `with` block and condenses its collapsed-stack output into
the functions with the most samples. `Row` is one line of the result table: a metric,
its direct and vx6 values, their ratio and the issue's target for the vx6 value.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT_SHARE = 0.95


# ---------------------------------------------------------------------------- measuring processes
def proc_status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # "5" resets VmHWM to VmRSS
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    except (OSError, ValueError, IndexError):
        return 0.0


def machine_busy_seconds() -> float:
    """CPU time spent busy by all cores together, from the first line of /proc/stat."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLOCK_TICKS  # minus idle, iowait
    except (OSError, ValueError, IndexError):
        return 0.0


class CpuMeter:
    """CPU share (100 = one core) of each named process over the measured block, and of
    the whole machine ("machine"; what it has beyond our processes is other load)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.result: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        seconds = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return {**seconds, "machine": machine_busy_seconds()}

    def __enter__(self) -> CpuMeter:
        self._start = time.monotonic()
        self._before = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self._start, 1e-9)
        after = self._sample()
        self.result = {k: round(100 * (after[k] - self._before[k]) / wall, 1) for k in after}


class Profiler:
    """py-spy record on the given processes for the duration of a `with` block."""

    def __init__(self, directory: Path | None, pids: dict[str, int]) -> None:
        self.directory = directory
        self.pids = pids
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.summary: dict[str, Any] = {}

    def __enter__(self) -> Profiler:
        if self.directory is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            out = self.directory / f"{name}.txt"
            self.procs[name] = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        time.sleep(0.5)  # py-spy needs a moment to attach before the load starts
        return self

    def __exit__(self, *exc: object) -> None:
        for name, proc in self.procs.items():
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            path = self.directory / f"{name}.txt" if self.directory else None
            if path is not None and path.exists():
                self.summary[name] = summarize_profile(path.read_text())
            else:
                self.summary[name] = {"error": err.decode(errors="replace")[-500:]}


def summarize_profile(raw: str, top: int = 12) -> dict[str, Any]:
    """Top functions from py-spy's raw (collapsed) output: by own samples, and vx6 functions
    by inclusive samples (leaving out the entry frames that sit under nearly every sample)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: dict[str, int]) -> list[tuple[str, float]]:
        best = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * n / max(total, 1), 1)) for name, n in best]

    vx6_inner = {
        f: n for f, n in inclusive.items() if "vx6/" in f and n < ROOT_SHARE * max(total, 1)
    }
    return {
        "samples": total,
        "own_percent": ranked(own),
        "vx6_inclusive_percent": ranked(vx6_inner),
    }


# ---------------------------------------------------------------------------- reporting
def machine_details() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def package(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cryptography": package("cryptography"),
        "vx6": package("vx6"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def percentile(samples: list[int] | list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))
    return float(ordered[int(rank) - 1])


@dataclass
class Row:
    metric: str
    unit: str
    direct: float | None
    vx6: float | None
    target: tuple[str, float] | None = None
    lower_is_better: bool = False

    @property
    def ratio(self) -> float | None:
        if self.direct is None or self.vx6 is None or self.direct == 0:
            return None
        return self.vx6 / self.direct

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.vx6 is None:
            return None
        op, limit = self.target
        return self.vx6 >= limit if op == ">=" else self.vx6 <= limit

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "pass": self.passed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        target = (str(d["target"][0]), float(d["target"][1])) if d["target"] else None
        return cls(
            d["metric"],
            d["unit"],
            d["direct"],
            d["vx6"],
            target,
            d["lower_is_better"],
        )


DIGITS = {"MB/s": 0, "us": 1, "ms": 3, "MiB": 1, "s/GB": 2}


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.{DIGITS.get(unit, 2)}f}"


def render_table(
    machine: dict[str, Any],
    rows: list[Row],
    details: dict[str, Any],
    errors: list[str],
    title: str = "VX6 named-direct forward vs direct TCP on loopback",
    measured: str = "vx6",
) -> str:
    out = [
        title,
        "machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
    ]
    header = ("metric", "unit", "direct", measured, f"{measured}/direct", "target", "result")
    table = [header]
    for r in rows:
        table.append(
            (
                r.metric,
                r.unit,
                _fmt(r.direct, r.unit),
                _fmt(r.vx6, r.unit),
                "-" if r.ratio is None else f"{r.ratio:.2f}",
                "-" if r.target is None else f"{r.target[0]} {_fmt(r.target[1], r.unit)}",
                {True: "pass", False: "FAIL", None: "-"}[r.passed],
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        cells = [
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        out.append("  ".join(cells))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    if details.get("event_loop"):
        out += ["", f"nodes' event loop: {details['event_loop']}"]
    cpu = details.get("cpu_percent", {})
    if cpu:
        out += ["", "CPU during the bulk runs (100 = one core):"]
        for phase, paths in cpu.items():
            for path, shares in paths.items():
                used = ", ".join(f"{k} {v:.0f}%" for k, v in shares.items() if v >= 0.5)
                out.append(f"  {phase}, {path}: {used}")
    for node, summary in details.get("profile", {}).items():
        out += [
            "",
            f"py-spy, {node}, {details.get('profile_phase', 'bulk one way')} "
            f"({summary.get('samples', 0)} samples), own time:",
        ]
        out += [f"  {pct:5.1f}%  {name}" for name, pct in summary.get("own_percent", [])]
        out.append("  vx6 functions, inclusive:")
        out += [f"  {pct:5.1f}%  {name}" for name, pct in summary.get("vx6_inclusive_percent", [])]
        if "error" in summary:
            out.append(f"  error: {summary['error']}")
    if errors:
        out += ["", "ERRORS:"] + [f"  {e}" for e in errors]
    return "\n".join(out)


def node_event_loop(node: Any) -> str | None:
    """The event loop a node says it runs on (its first log lines)."""
    for line in node.log_text().splitlines():
        _, found, loop = line.partition("event loop: ")
        if found:
            return loop
    return None


def run_main(run: Callable[[], int], log: Callable[[str], None]) -> int:
    """Run a benchmark: SIGTERM and SIGINT stop it cleanly (exit 130), a crash is
    printed and exits 2; the benchmark's own cleanup runs in both cases."""

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)  # also when started with SIGINT ignored (`cmd &`)
    try:
        return run()
    except KeyboardInterrupt:
        log("interrupted; nodes and servers stopped")
        return 130
    except Exception:
        traceback.print_exc()
        return 2
