"""core/hidden/dir_proxy.py: what a directory proxy admits (docs/hidden.md section 3)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vx6.core.hidden.dir_proxy import DirProxyAdmission, DirProxyLimits, Verdict


def test_one_request_in_flight_per_circuit() -> None:
    proxy = DirProxyAdmission()
    assert proxy.admit("c1", "s", 0.0) is Verdict.ADMITTED
    assert proxy.admit("c1", "s", 0.0) is Verdict.BUSY_CIRCUIT
    assert proxy.admit("c2", "s", 0.0) is Verdict.ADMITTED
    proxy.finished("c1")
    assert proxy.admit("c1", "s", 0.0) is Verdict.ADMITTED
    assert proxy.counts["dir_proxy_busy_circuit"] == 1
    assert proxy.counts["dir_proxy_admitted"] == 3


def test_the_source_bucket_holds_burst_then_refills_at_rate() -> None:
    proxy = DirProxyAdmission(DirProxyLimits(rate=2.0, burst=20.0))
    for i in range(20):
        assert proxy.admit(i, "s", 0.0) is Verdict.ADMITTED
        proxy.finished(i)
    assert proxy.admit("over", "s", 0.0) is Verdict.RATE_LIMITED
    assert proxy.admit("other", "t", 0.0) is Verdict.ADMITTED  # per source
    assert proxy.admit("later", "s", 0.5) is Verdict.ADMITTED  # 0.5 s at 2/s: one token
    assert proxy.admit("again", "s", 0.5) is Verdict.RATE_LIMITED
    assert proxy.counts["dir_proxy_rate_limited"] == 2


def test_node_wide_concurrency_bound() -> None:
    proxy = DirProxyAdmission(DirProxyLimits(max_concurrent=32, burst=100.0))
    for i in range(32):
        assert proxy.admit(i, f"s{i}", 0.0) is Verdict.ADMITTED
    assert proxy.admit(99, "fresh", 0.0) is Verdict.OVERLOADED
    proxy.finished(0)
    assert proxy.admit(99, "fresh", 0.0) is Verdict.ADMITTED
    assert proxy.counts["dir_proxy_overloaded"] == 1


def test_a_closed_circuit_keeps_its_slot_until_its_operation_finishes() -> None:
    proxy = DirProxyAdmission(DirProxyLimits(max_concurrent=1))
    assert proxy.admit("c1", "s", 0.0) is Verdict.ADMITTED
    proxy.circuit_closed("c1")
    assert proxy.admit("c2", "s", 0.0) is Verdict.OVERLOADED  # closing makes no room
    proxy.finished("c1")
    assert proxy.running == 0
    assert proxy.admit("c2", "s", 0.0) is Verdict.ADMITTED


def test_the_source_table_is_bounded_and_forgets_refilled_sources() -> None:
    proxy = DirProxyAdmission(DirProxyLimits(max_sources=2, rate=1.0, burst=2.0))
    for source in ("a", "b"):
        assert proxy.admit(source, source, 0.0) is Verdict.ADMITTED
        proxy.finished(source)
    assert proxy.admit("c", "c", 0.0) is Verdict.RATE_LIMITED  # full, none refilled
    assert proxy.counts["dir_proxy_sources_full"] == 1
    assert proxy.admit("c", "c", 1.0) is Verdict.ADMITTED  # a and b refilled: forgotten


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["admit", "finish", "close"]), st.integers(0, 5), st.integers(0, 3)
        ),
        max_size=200,
    )
)
def test_never_more_than_max_concurrent_running(steps: list[tuple[str, int, int]]) -> None:
    limits = DirProxyLimits(max_concurrent=3, burst=1000.0)
    proxy = DirProxyAdmission(limits)
    running: dict[int, int] = {}  # circuit -> admitted operations not finished
    for at, (what, circuit, source) in enumerate(steps):
        if what == "admit":
            verdict = proxy.admit(circuit, source, float(at))
            if verdict is Verdict.ADMITTED:
                running[circuit] = running.get(circuit, 0) + 1
        elif what == "finish" and running.get(circuit):
            running[circuit] -= 1
            proxy.finished(circuit)
        elif what == "close":
            proxy.circuit_closed(circuit)
        assert proxy.running == sum(running.values()) <= limits.max_concurrent
