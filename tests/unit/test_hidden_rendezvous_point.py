"""The rendezvous point (docs/hidden.md sections 5 and 7): cookies, joins, every refusal
and bound, expiry on a fake clock, joined-pair teardown, and random input sequences."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.clock import FakeClock
from vx6.core.hidden.relay_actions import DestroyCircuit, JoinCircuits, SendOnCircuit
from vx6.core.hidden.rendezvous_point import RendezvousCore, RendezvousLimits
from vx6.errors import DestroyReason
from vx6.wire.cells import RelayCommand
from vx6.wire.hidden import (
    EstablishRendezvous,
    Rendezvous1,
    encode_establish_rendezvous,
    encode_rendezvous1,
)

REPLY = bytes(range(64))
PROTOCOL = DestroyReason.PROTOCOL_ERROR


def _cookie(n: int) -> bytes:
    return n.to_bytes(4, "big") * 8


def _establish(n: int) -> bytes:
    return encode_establish_rendezvous(EstablishRendezvous(_cookie(n)))


def _rendezvous1(n: int) -> bytes:
    return encode_rendezvous1(Rendezvous1(_cookie(n), REPLY))


def test_cookie_then_rendezvous1_joins_the_circuits() -> None:
    core = RendezvousCore(RendezvousLimits())
    assert core.establish(("l1", 2), "src", _establish(1), 0.0) == [
        SendOnCircuit(("l1", 2), RelayCommand.RENDEZVOUS_ESTABLISHED, b"")
    ]
    assert core.pending_count == 1 and core.next_deadline() == 30.0
    assert core.rendezvous1(("l2", 5), _rendezvous1(1), 3.0) == [
        SendOnCircuit(("l1", 2), RelayCommand.RENDEZVOUS2, REPLY),
        JoinCircuits(("l1", 2), ("l2", 5)),
    ]
    assert core.pending_count == 0 and core.joined_pairs == 1 and core.next_deadline() is None
    assert core.partner(("l1", 2)) == ("l2", 5) and core.partner(("l2", 5)) == ("l1", 2)
    assert core.counts == {"rendezvous_registered": 1, "rendezvous_joined": 1}


def test_a_cookie_is_used_once() -> None:
    core = RendezvousCore(RendezvousLimits())
    core.establish("cli", "src", _establish(1), 0.0)
    core.rendezvous1("svc", _rendezvous1(1), 0.0)
    assert core.rendezvous1("svc2", _rendezvous1(1), 0.0) == [
        DestroyCircuit("svc2", PROTOCOL, "unknown cookie")
    ]
    assert core.counts["rendezvous1_unknown_cookie"] == 1


def test_a_cookie_already_pending_destroys_the_newcomer() -> None:
    core = RendezvousCore(RendezvousLimits())
    core.establish("first", "src", _establish(1), 0.0)
    actions = core.establish("second", "src", _establish(1), 0.0)
    assert actions == [DestroyCircuit("second", PROTOCOL, "cookie already pending")]
    assert core.counts["establish_cookie_taken"] == 1
    assert core.rendezvous1("svc", _rendezvous1(1), 0.0)[1] == JoinCircuits("first", "svc")


@pytest.mark.parametrize("data", [b"", bytes(31), bytes(33)])
def test_malformed_establish_destroys_the_circuit(data: bytes) -> None:
    core = RendezvousCore(RendezvousLimits())
    assert core.establish("cli", "src", data, 0.0) == [
        DestroyCircuit("cli", PROTOCOL, f"ESTABLISH_RENDEZVOUS is 32 bytes, got {len(data)}")
    ]
    assert core.counts == {"establish_malformed": 1} and core.pending_count == 0


@pytest.mark.parametrize("data", [b"", bytes(95), bytes(97), bytes(32)])
def test_malformed_rendezvous1_destroys_the_circuit(data: bytes) -> None:
    core = RendezvousCore(RendezvousLimits())
    core.establish("cli", "src", _establish(0), 0.0)
    actions = core.rendezvous1("svc", data, 0.0)
    assert [(a.circuit, a.reason) for a in actions] == [("svc", PROTOCOL)]  # type: ignore[union-attr]
    assert core.counts["rendezvous1_malformed"] == 1 and core.pending_count == 1


def test_node_limit_refuses_the_next_and_counts_it() -> None:
    core = RendezvousCore(RendezvousLimits())
    for n in range(4096):
        core.establish(("c", n), n // 256, _establish(n), 0.0)
    assert core.pending_count == 4096
    actions = core.establish(("c", 4096), "fresh", _establish(4096), 0.0)
    assert actions == [
        DestroyCircuit(("c", 4096), DestroyReason.RESOURCE_LIMIT, "too many cookies")
    ]
    assert core.counts["establish_refused_full"] == 1
    core.rendezvous1("svc", _rendezvous1(7), 0.0)  # a join frees a slot
    assert core.establish(("c", 4097), "fresh", _establish(4097), 0.0)[0].command is (  # type: ignore[union-attr]
        RelayCommand.RENDEZVOUS_ESTABLISHED
    )


def test_source_limit_refuses_the_next_and_counts_it() -> None:
    core = RendezvousCore(RendezvousLimits())
    for n in range(256):
        core.establish(("c", n), "one", _establish(n), 0.0)
    actions = core.establish(("c", 256), "one", _establish(256), 0.0)
    assert [(a.circuit, a.reason) for a in actions] == [  # type: ignore[union-attr]
        (("c", 256), DestroyReason.RESOURCE_LIMIT)
    ]
    assert core.counts["establish_refused_source"] == 1
    assert len(core.establish(("c", 257), "two", _establish(257), 0.0)) == 1
    core.circuit_closed(("c", 0), DestroyReason.NONE)
    assert core.counts["pending_closed"] == 1
    assert core.establish(("c", 258), "one", _establish(258), 0.0)[0].command is (  # type: ignore[union-attr]
        RelayCommand.RENDEZVOUS_ESTABLISHED
    )


def test_joined_pairs_are_bounded() -> None:
    core = RendezvousCore(RendezvousLimits(max_joined_pairs=2))
    for n in range(3):
        core.establish(("cli", n), n, _establish(n), 0.0)
    core.rendezvous1(("svc", 0), _rendezvous1(0), 0.0)
    core.rendezvous1(("svc", 1), _rendezvous1(1), 0.0)
    actions = core.rendezvous1(("svc", 2), _rendezvous1(2), 0.0)
    assert [(a.circuit, a.reason) for a in actions] == [  # type: ignore[union-attr]
        (("svc", 2), DestroyReason.RESOURCE_LIMIT)
    ]
    assert core.counts["rendezvous1_refused_full"] == 1
    assert core.pending_count == 1 and core.joined_pairs == 2


def test_a_pending_cookie_expires_after_30_s_and_its_circuit_is_kept() -> None:
    clock = FakeClock()
    core = RendezvousCore(RendezvousLimits())
    start = clock.monotonic()
    core.establish("a", "src", _establish(1), clock.monotonic())
    clock.advance(10)
    core.establish("b", "src", _establish(2), clock.monotonic())
    assert core.next_deadline() == start + 30
    clock.advance(19.5)
    assert core.timer(clock.monotonic()) == [] and core.pending_count == 2
    clock.advance(0.5)
    assert core.timer(clock.monotonic()) == []  # nothing destroyed: just forgotten
    assert core.pending_count == 1 and core.counts["rendezvous_expired"] == 1
    assert core.next_deadline() == start + 40
    assert core.rendezvous1("svc", _rendezvous1(1), clock.monotonic()) == [
        DestroyCircuit("svc", PROTOCOL, "unknown cookie")
    ]
    # Expiry also runs on input: b's cookie is past due at the RENDEZVOUS1.
    clock.advance(10)
    assert core.rendezvous1("svc2", _rendezvous1(2), clock.monotonic())[0].reason is PROTOCOL  # type: ignore[union-attr]
    assert core.counts["rendezvous_expired"] == 2
    # The forgotten circuit may register again.
    assert len(core.establish("a", "src", _establish(3), clock.monotonic())) == 1
    assert core.pending_count == 1


def test_a_clock_stepping_back_never_expires_a_cookie_early() -> None:
    core = RendezvousCore(RendezvousLimits())
    core.establish("a", "src", _establish(1), 100.0)
    core.establish("b", "src", _establish(2), 50.0)  # taken as 100: order kept
    core.timer(129.0)
    assert core.pending_count == 2
    core.circuit_closed("a", DestroyReason.NONE)
    assert core.next_deadline() == 130.0
    core.timer(129.0)  # b, registered when time had reached 100, is not due yet
    assert core.pending_count == 1
    core.timer(130.0)
    assert core.pending_count == 0


def test_closing_one_of_a_joined_pair_destroys_the_other_with_the_same_reason() -> None:
    core = RendezvousCore(RendezvousLimits())
    for n, reason in enumerate([DestroyReason.LINK_LOST, DestroyReason.NONE]):
        core.establish(("cli", n), "src", _establish(n), 0.0)
        core.rendezvous1(("svc", n), _rendezvous1(n), 0.0)
        closed, other = (("cli", n), ("svc", n)) if n == 0 else (("svc", n), ("cli", n))
        assert core.circuit_closed(closed, reason) == [
            DestroyCircuit(other, reason, "its joined circuit closed")
        ]
        assert core.circuit_closed(other, reason) == []  # the adapter's echo: harmless
    assert core.joined_pairs == 0 and core.counts["joined_closed"] == 2


@pytest.mark.parametrize("joined_side", ["cli", "svc"])
def test_a_joined_circuit_cannot_establish_or_serve_again(joined_side: str) -> None:
    for call in ("establish", "rendezvous1"):
        core = RendezvousCore(RendezvousLimits())
        core.establish("cli", "src", _establish(1), 0.0)
        core.rendezvous1("svc", _rendezvous1(1), 0.0)
        core.establish("other", "src", _establish(2), 0.0)
        if call == "establish":
            actions = core.establish(joined_side, "src", _establish(3), 0.0)
        else:
            actions = core.rendezvous1(joined_side, _rendezvous1(2), 0.0)
        partner = "svc" if joined_side == "cli" else "cli"
        assert [(a.circuit, a.reason) for a in actions] == [  # type: ignore[union-attr]
            (joined_side, PROTOCOL),
            (partner, PROTOCOL),
        ]
        assert core.counts[f"{call}_on_joined_circuit"] == 1
        assert core.joined_pairs == 0 and core.pending_count == 1  # "other" still waits


def test_a_pending_circuit_cannot_establish_again_or_serve() -> None:
    core = RendezvousCore(RendezvousLimits())
    core.establish("cli", "src", _establish(1), 0.0)
    assert core.establish("cli", "src", _establish(2), 0.0) == [
        DestroyCircuit("cli", PROTOCOL, "establish on pending circuit")
    ]
    assert core.pending_count == 0  # its cookie went with it
    core.establish("cli", "src", _establish(1), 0.0)
    core.establish("cli2", "src", _establish(2), 0.0)
    actions = core.rendezvous1("cli", _rendezvous1(2), 0.0)
    assert actions == [DestroyCircuit("cli", PROTOCOL, "rendezvous1 on pending circuit")]
    assert core.pending_count == 1 and core.joined_pairs == 0


# -- random sequences ----------------------------------------------------------------

CIRCUITS = 6
LIMITS = RendezvousLimits(
    max_pending=3, max_pending_per_source=2, pending_lifetime=5.0, max_joined_pairs=2
)
ops = st.one_of(
    st.tuples(
        st.just("establish"),
        st.integers(0, CIRCUITS - 1),
        st.integers(0, 2),
        st.integers(0, 3),
        st.booleans(),
    ),
    st.tuples(
        st.just("rendezvous1"), st.integers(0, CIRCUITS - 1), st.integers(0, 3), st.booleans()
    ),
    st.tuples(st.just("closed"), st.integers(0, CIRCUITS - 1), st.sampled_from(DestroyReason)),
    st.tuples(st.just("timer"), st.floats(0, 4)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(ops, max_size=50))
def test_random_inputs_keep_the_tables_bounded_and_consistent(sequence: list[tuple]) -> None:  # type: ignore[type-arg]
    core = RendezvousCore(LIMITS)
    now = 0.0
    for op in sequence:
        if op[0] == "establish":
            _, circuit, source, cookie, good = op
            actions = core.establish(circuit, source, _establish(cookie) if good else b"x", now)
        elif op[0] == "rendezvous1":
            _, circuit, cookie, good = op
            actions = core.rendezvous1(circuit, _rendezvous1(cookie) if good else b"x", now)
        elif op[0] == "closed":
            actions = core.circuit_closed(op[1], op[2])
        else:
            now += op[1]
            actions = core.timer(now)
        for action in actions:
            assert isinstance(action, SendOnCircuit | DestroyCircuit | JoinCircuits)
            if isinstance(action, DestroyCircuit):
                assert core.partner(action.circuit) is None
                assert action.circuit not in core._cookie_of
            if isinstance(action, JoinCircuits):
                assert core.partner(action.client_circuit) == action.service_circuit
        assert core.pending_count <= LIMITS.max_pending
        assert core.joined_pairs <= LIMITS.max_joined_pairs
        per_source = core._per_source  # no public view: the invariant is internal
        assert sum(per_source.values()) == core.pending_count
        assert all(0 < n <= LIMITS.max_pending_per_source for n in per_source.values())
        assert len(core._cookie_of) == core.pending_count
        pending_circuits = set(core._cookie_of)
        assert not pending_circuits & set(core._partner)  # a circuit is in one role
        assert all(core.partner(core.partner(c)) == c for c in core._partner)
        deadline = core.next_deadline()
        assert (deadline is None) == (core.pending_count == 0)
        if deadline is not None:
            assert deadline > now  # nothing overdue is kept once time was seen
