"""The intro point (docs/hidden.md sections 4 and 7): registration, introductions, every
refusal and bound, replacement, rate limits on a fake clock, and random input sequences."""

from __future__ import annotations

from collections.abc import Hashable
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vx6.core.hidden.intro_point import IntroLimits, IntroPointCore
from vx6.core.hidden.relay_actions import DestroyCircuit, SendOnCircuit
from vx6.crypto.keys import Identity
from vx6.errors import DestroyReason, UsageError
from vx6.wire.cells import RelayCommand
from vx6.wire.hidden import (
    EstablishIntro,
    Introduce1,
    encode_establish_intro,
    encode_introduce1,
    establish_intro_signed_bytes,
)

ESTABLISHED = RelayCommand.INTRO_ESTABLISHED
ACK = RelayCommand.INTRODUCE_ACK


@cache
def _identity(n: int) -> Identity:
    return Identity.generate(n.to_bytes(4, "big") * 8)


def _binding(circuit: Hashable) -> bytes:
    return (hash(circuit) & 0xFFFFFFFF).to_bytes(4, "big") * 8


def _establish(key: Identity, binding: bytes, rate: int = 25, burst: int = 200) -> bytes:
    signed = establish_intro_signed_bytes(binding, key.public, rate, burst)
    return encode_establish_intro(EstablishIntro(key.public, rate, burst, key.sign(signed)))


def _introduce(auth_key: bytes, tag: int = 0) -> bytes:
    return encode_introduce1(Introduce1(auth_key, bytes([tag]) * 32, bytes([tag]) * 336))


def _register(
    core: IntroPointCore, circuit: Hashable, key: Identity, source: Hashable = "src", **kw: int
) -> list[object]:
    binding = _binding(circuit)
    return list(core.establish(circuit, source, binding, _establish(key, binding, **kw), 0.0))


def _destroyed(reason: DestroyReason, actions: list[object], circuit: Hashable) -> bool:
    return [(a.circuit, a.reason) for a in actions if isinstance(a, DestroyCircuit)] == [
        (circuit, reason)
    ]


def test_register_then_introduce_forwards_and_acks() -> None:
    core = IntroPointCore(IntroLimits())
    service = _identity(1)
    assert _register(core, ("l1", 3), service) == [SendOnCircuit(("l1", 3), ESTABLISHED, b"")]
    assert core.registered(service.public) == ("l1", 3)
    data = _introduce(service.public)
    assert core.introduce(("l2", 8), data, 0.5) == [
        SendOnCircuit(("l1", 3), RelayCommand.INTRODUCE2, data),
        SendOnCircuit(("l2", 8), ACK, b"\x00"),
    ]
    assert core.counts == {"intro_registered": 1, "introduce_forwarded": 1}


def test_introduce_for_an_unknown_key_is_acked_unknown_and_not_forwarded() -> None:
    core = IntroPointCore(IntroLimits())
    _register(core, "svc", _identity(1))
    assert core.introduce("cli", _introduce(_identity(2).public), 0.0) == [
        SendOnCircuit("cli", ACK, b"\x01")
    ]
    assert core.counts["introduce_unknown"] == 1
    assert core.counts["introduce_forwarded"] == 0


@pytest.mark.parametrize(
    ("make_data", "counter"),
    [
        (lambda b: _establish(_identity(1), bytes(32)), "intro_bad_signature"),  # other circuit
        (
            lambda b: _establish(_identity(1), b)[:36] + _establish(_identity(2), b)[36:],
            "intro_bad_signature",
        ),
        (lambda b: _establish(_identity(1), b)[:-1], "intro_malformed"),
        (lambda b: _establish(_identity(1), b) + b"\x00", "intro_malformed"),
        (lambda b: _establish(_identity(1), b)[:32] + bytes(4) + bytes(64), "intro_malformed"),
    ],
)
def test_bad_establish_intro_destroys_the_circuit(make_data, counter: str) -> None:  # type: ignore[no-untyped-def]
    core = IntroPointCore(IntroLimits())
    binding = _binding("svc")
    actions = core.establish("svc", "src", binding, make_data(binding), 0.0)
    assert _destroyed(DestroyReason.PROTOCOL_ERROR, actions, "svc")
    assert core.counts == {counter: 1}
    assert len(core) == 0


def test_rate_and_burst_change_the_signed_bytes() -> None:
    core = IntroPointCore(IntroLimits())
    binding = _binding("svc")
    good = bytearray(_establish(_identity(1), binding, rate=25))
    good[33] = 26  # rate 25 -> 26 under the same signature
    actions = core.establish("svc", "src", binding, bytes(good), 0.0)
    assert _destroyed(DestroyReason.PROTOCOL_ERROR, actions, "svc")
    assert core.counts == {"intro_bad_signature": 1}


def test_binding_must_be_32_bytes() -> None:
    core = IntroPointCore(IntroLimits())
    with pytest.raises(UsageError):
        core.establish("svc", "src", bytes(31), _establish(_identity(1), bytes(32)), 0.0)


def test_malformed_introduce_destroys_the_client_circuit() -> None:
    core = IntroPointCore(IntroLimits())
    _register(core, "svc", _identity(1))
    actions = core.introduce("cli", _introduce(_identity(1).public)[:-1], 0.0)
    assert _destroyed(DestroyReason.PROTOCOL_ERROR, actions, "cli")
    assert core.counts["introduce_malformed"] == 1
    assert core.client_circuits == 0


def test_node_limit_refuses_the_next_and_counts_it() -> None:
    core = IntroPointCore(IntroLimits())
    for n in range(1024):
        assert _register(core, ("c", n), _identity(n), source=n // 64)[0] == SendOnCircuit(
            ("c", n), ESTABLISHED, b""
        )
    assert len(core) == 1024
    actions = _register(core, ("c", 1024), _identity(1024), source="fresh")
    assert _destroyed(DestroyReason.RESOURCE_LIMIT, actions, ("c", 1024))
    assert core.counts["intro_refused_full"] == 1
    # Full, but a key's holder still moves its intro: the replacement frees its slot.
    actions = _register(core, ("c", 2000), _identity(5), source="fresh")
    assert actions[-1] == SendOnCircuit(("c", 2000), ESTABLISHED, b"")
    assert len(core) == 1024


def test_source_limit_refuses_the_next_and_counts_it() -> None:
    core = IntroPointCore(IntroLimits())
    for n in range(64):
        _register(core, ("c", n), _identity(n), source="one")
    actions = _register(core, ("c", 64), _identity(64), source="one")
    assert _destroyed(DestroyReason.RESOURCE_LIMIT, actions, ("c", 64))
    assert core.counts["intro_refused_source"] == 1
    assert _register(core, ("c", 65), _identity(65), source="other")[0].command is ESTABLISHED  # type: ignore[attr-defined]
    core.circuit_closed(("c", 0))
    assert _register(core, ("c", 66), _identity(66), source="one")[0].command is ESTABLISHED  # type: ignore[attr-defined]


def test_second_establish_for_the_same_key_replaces_the_first() -> None:
    core = IntroPointCore(IntroLimits())
    service = _identity(1)
    _register(core, "old", service)
    actions = _register(core, "new", service)
    assert actions == [
        DestroyCircuit("old", DestroyReason.NONE, "intro replaced"),
        SendOnCircuit("new", ESTABLISHED, b""),
    ]
    assert core.counts["intro_replaced"] == 1 and len(core) == 1
    data = _introduce(service.public)
    assert core.introduce("cli", data, 0.0)[0] == SendOnCircuit(
        "new", RelayCommand.INTRODUCE2, data
    )
    core.circuit_closed("old")  # the adapter reports the destroyed circuit: no effect
    assert core.registered(service.public) == "new"
    assert core.counts["intro_closed"] == 0


def test_one_circuit_holds_at_most_one_registration() -> None:
    core = IntroPointCore(IntroLimits())
    _register(core, "svc", _identity(1))
    actions = _register(core, "svc", _identity(2))
    assert _destroyed(DestroyReason.PROTOCOL_ERROR, actions, "svc")
    assert core.counts["intro_second_on_circuit"] == 1
    assert len(core) == 0  # its first registration went with it


def test_client_and_service_circuits_do_not_mix() -> None:
    core = IntroPointCore(IntroLimits())
    service = _identity(1)
    core.introduce("cli", _introduce(service.public), 0.0)
    actions = _register(core, "cli", service)
    assert _destroyed(DestroyReason.PROTOCOL_ERROR, actions, "cli")
    assert core.counts["intro_on_client_circuit"] == 1 and len(core) == 0
    _register(core, "svc", service)
    actions = core.introduce("svc", _introduce(service.public), 0.0)
    assert _destroyed(DestroyReason.PROTOCOL_ERROR, actions, "svc")
    assert core.counts["introduce_on_service_circuit"] == 1 and len(core) == 0


def test_a_closed_circuit_drops_its_registration() -> None:
    core = IntroPointCore(IntroLimits())
    service = _identity(1)
    _register(core, "svc", service)
    core.introduce("cli", _introduce(service.public), 0.0)
    assert core.circuit_closed("svc") == []
    assert core.circuit_closed("cli") == []
    assert core.counts["intro_closed"] == 1 and len(core) == 0 and core.client_circuits == 0
    assert core.introduce("cli2", _introduce(service.public), 1.0) == [
        SendOnCircuit("cli2", ACK, b"\x01")
    ]
    assert core.circuit_closed("never seen") == []


def test_a_flood_is_held_to_its_rate_while_another_service_passes() -> None:
    core = IntroPointCore(IntroLimits())
    flooded, quiet = _identity(1), _identity(2)
    _register(core, "flooded", flooded, rate=10, burst=20)
    _register(core, "quiet", quiet, rate=1, burst=2)
    forwarded = limited = quiet_passed = 0
    flood, calm = _introduce(flooded.public), _introduce(quiet.public)
    for tick in range(1001):  # 10 s, 100 introductions a second
        now = tick / 100
        ack = core.introduce(("cli", tick % 7), flood, now)[-1]
        assert isinstance(ack, SendOnCircuit)
        forwarded += ack.data == b"\x00"
        limited += ack.data == b"\x02"
        if tick % 100 == 0:  # one a second, within the quiet service's own rate
            quiet_passed += core.introduce("calm", calm, now)[-1].data == b"\x00"  # type: ignore[union-attr]
    assert 10 * 10 + 20 - 1 <= forwarded <= 10 * 10 + 20
    assert limited == 1001 - forwarded
    assert quiet_passed == 11
    assert core.counts["introduce_rate_limited"] == limited
    assert core.counts["introduce_forwarded"] == forwarded + quiet_passed


def test_rate_and_burst_are_clamped_to_the_limits() -> None:
    core = IntroPointCore(IntroLimits())
    service = _identity(1)
    _register(core, "svc", service, rate=1000, burst=10000)
    assert core.counts["intro_rate_clamped"] == 1
    acks = [core.introduce("cli", _introduce(service.public), 0.0)[-1] for _ in range(600)]
    assert sum(a.data == b"\x00" for a in acks) == 500  # type: ignore[union-attr]
    acks = [core.introduce("cli", _introduce(service.public), 1.0)[-1] for _ in range(200)]
    assert sum(a.data == b"\x00" for a in acks) == 100  # type: ignore[union-attr]


def test_client_circuits_remembered_are_bounded() -> None:
    core = IntroPointCore(IntroLimits(max_client_circuits=3))
    for n in range(5):
        core.introduce(("cli", n), _introduce(bytes(32)), 0.0)
    assert core.client_circuits == 3
    assert core.counts["client_circuits_forgotten"] == 2


# -- random sequences ----------------------------------------------------------------

CIRCUITS = 6
KEYS = 3
LIMITS = IntroLimits(max_registrations=3, max_per_source=2, max_client_circuits=3)

ops = st.one_of(
    st.tuples(
        st.just("establish"),
        st.integers(0, CIRCUITS - 1),
        st.integers(0, 2),  # source
        st.integers(0, KEYS - 1),
        st.sampled_from(["good", "bad_sig", "short", "other_binding"]),
    ),
    st.tuples(
        st.just("introduce"),
        st.integers(0, CIRCUITS - 1),
        st.integers(0, KEYS),
        st.booleans(),
    ),
    st.tuples(st.just("closed"), st.integers(0, CIRCUITS - 1)),
    st.tuples(st.just("wait"), st.floats(0, 2)),
)


@cache
def _signed(key: int, circuit: int) -> bytes:
    return _establish(_identity(key), _binding(circuit), rate=2, burst=2)


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, max_size=40))
def test_random_inputs_keep_the_tables_bounded_and_consistent(sequence: list[tuple]) -> None:  # type: ignore[type-arg]
    core = IntroPointCore(LIMITS)
    now = 0.0
    for op in sequence:
        actions: list[object]
        if op[0] == "establish":
            _, circuit, source, key, how = op
            data = _signed(key, circuit)
            if how == "bad_sig":
                data = data[:-1] + bytes([data[-1] ^ 1])
            elif how == "short":
                data = data[:50]
            elif how == "other_binding":
                data = _signed(key, circuit + 1)
            actions = list(core.establish(circuit, source, _binding(circuit), data, now))
        elif op[0] == "introduce":
            _, circuit, key, good = op
            auth_key = _identity(key).public if key < KEYS else bytes(32)
            data = _introduce(auth_key) if good else b"\x00"
            actions = list(core.introduce(circuit, data, now))
        elif op[0] == "closed":
            actions = list(core.circuit_closed(op[1]))
            assert actions == []
        else:
            now += op[1]
            continue
        for action in actions:
            assert isinstance(action, SendOnCircuit | DestroyCircuit)
            if isinstance(action, DestroyCircuit):
                # What the core destroys it has forgotten.
                assert action.circuit not in {
                    core.registered(_identity(k).public) for k in range(KEYS)
                }
        assert len(core) <= LIMITS.max_registrations
        assert core.client_circuits <= LIMITS.max_client_circuits
        registered = [core.registered(_identity(k).public) for k in range(KEYS)]
        held = [c for c in registered if c is not None]
        assert len(held) == len(set(held))  # one registration per circuit
        assert len(core) == len(held)
        per_source = core._per_source  # no public view: the invariant is internal
        assert sum(per_source.values()) == len(core)
        assert all(0 < n <= LIMITS.max_per_source for n in per_source.values())
