"""Service address parsing and the name-claim rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vx6.core.names import (
    ServiceAddress,
    follow_rotations,
    name_pow_ok,
    parse_service_address,
    resolve_owner,
    solve_name_pow,
    validate_label,
)
from vx6.crypto.keys import Identity, fingerprint, key_to_text
from vx6.errors import StreamError, StreamFailed, UsageError

ALICE = Identity(bytes(range(32))).public
MALLORY = Identity(bytes(range(100, 132))).public
CAROL = Identity(bytes(range(200, 232))).public
ALICE_TEXT = key_to_text(ALICE)
ALICE_FP = fingerprint(ALICE)


# --- parsing ------------------------------------------------------------------------


def test_name_form() -> None:
    address = parse_service_address("alice.ssh")
    assert address == ServiceAddress("ssh", "alice", None, None)
    assert str(address) == "alice.ssh"


def test_name_with_fingerprint_form() -> None:
    address = parse_service_address(f"alice#{ALICE_FP}.ssh")
    assert address == ServiceAddress("ssh", "alice", ALICE_FP, None)
    assert str(address) == f"alice#{ALICE_FP}.ssh"


def test_key_form() -> None:
    address = parse_service_address(f"{ALICE_TEXT}.web-1")
    assert address == ServiceAddress("web-1", None, None, ALICE)
    assert str(address) == f"{ALICE_TEXT}.web-1"


def test_key_with_matching_fingerprint() -> None:
    address = parse_service_address(f"{ALICE_TEXT}#{ALICE_FP}.ssh")
    assert address.owner_key == ALICE and address.fingerprint == ALICE_FP
    with pytest.raises(UsageError, match="does not match"):
        parse_service_address(f"{ALICE_TEXT}#{fingerprint(MALLORY)}.ssh")


def test_uppercase_is_normalised() -> None:
    assert str(parse_service_address("Alice.SSH")) == "alice.ssh"
    assert parse_service_address(f"ALICE#{ALICE_FP.upper()}.Ssh").fingerprint == ALICE_FP
    assert parse_service_address(f"{ALICE_TEXT.upper()}.ssh").owner_key == ALICE


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("a", "a"),
        ("A", "a"),
        ("0", "0"),
        ("a-b", "a-b"),
        ("x" * 32, "x" * 32),
        ("9lives", "9lives"),
    ],
)
def test_good_labels(label: str, expected: str) -> None:
    assert validate_label(label, "name") == expected


@pytest.mark.parametrize(
    "label",
    [
        "",
        "-a",
        "a-",
        "-",
        "x" * 33,
        "a_b",
        "a b",
        "a.b",
        "a#b",
        "\u212a",  # KELVIN SIGN: lowercases to ASCII "k", must not be accepted
        "caf\u00e9",
        "a\n",
    ],
)
def test_bad_labels(label: str) -> None:
    with pytest.raises(UsageError, match=r"^service"):
        validate_label(label, "service")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alice",  # no service
        ".ssh",
        "alice.",
        "alice.ssh.extra",
        "a.b.c",
        "alice-.ssh",
        "ali ce.ssh",
        " alice.ssh",
        "alice.ssh\n",
        "al\u00efce.ssh",
        "alice.s_h",
        "x" * 33 + ".ssh",
        "a" * 200 + ".ssh",
        # fingerprints
        "alice#.ssh",
        "#abcdefghabcdefgh.ssh",
        "alice#abcdefgh.ssh",  # too short
        "alice#abcdefghabcdefgha.ssh",  # too long
        "alice#abcdefghabcdefg1.ssh",  # '1' is not base32
        "alice#abcdefghabcdefg=.ssh",
        "alice#abcdefghabcdefgh#abcdefghabcdefgh.ssh",
        # keys
        ALICE_TEXT[:-1] + ".ssh",  # 51 characters: neither key nor label
        ALICE_TEXT + "a.ssh",
        ALICE_TEXT[:-1] + "8.ssh",  # '8' is not base32
        ALICE_TEXT[:-1] + "=.ssh",
    ],
)
def test_bad_addresses(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_service_address(text)
    assert "\n" not in str(info.value)


def test_non_canonical_key_text_refused() -> None:
    # The last base32 character carries 1 bit of key and 4 spare bits that must be 0.
    last = ALICE_TEXT[-1]
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    twin = alphabet[alphabet.index(last) ^ 1]
    with pytest.raises(UsageError, match="canonical"):
        parse_service_address(ALICE_TEXT[:-1] + twin + ".ssh")


def test_service_address_needs_exactly_one_owner() -> None:
    with pytest.raises(ValueError):
        ServiceAddress("ssh", None, None, None)
    with pytest.raises(ValueError):
        ServiceAddress("ssh", "alice", None, ALICE)


labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?", fullmatch=True)


@st.composite
def addresses(draw: st.DrawFn) -> ServiceAddress:
    service = draw(labels)
    key = draw(st.binary(min_size=32, max_size=32))
    form = draw(st.sampled_from(["name", "name#fp", "key", "key#fp"]))
    fp = fingerprint(key) if form.endswith("#fp") else None
    if form.startswith("key"):
        return ServiceAddress(service, None, fp, key)
    return ServiceAddress(service, draw(labels), fp, None)


@given(addresses())
def test_text_round_trip(address: ServiceAddress) -> None:
    assert parse_service_address(str(address)) == address
    assert parse_service_address(str(address).upper()) == address


@given(st.text(max_size=120))
def test_arbitrary_text_raises_only_usage_error(text: str) -> None:
    try:
        address = parse_service_address(text)
    except UsageError:
        return
    assert str(address) == text.lower()


@given(st.text(alphabet="abcz27-#.AZ_1", max_size=80))
def test_near_miss_text_raises_only_usage_error(text: str) -> None:
    try:
        address = parse_service_address(text)
    except UsageError:
        return
    assert str(address) == text.lower()


# --- claim rule ---------------------------------------------------------------------


def resolve(text: str, claims: list[tuple[str, bytes]], pinned: bytes | None) -> bytes:
    return resolve_owner(parse_service_address(text), claims, pinned)


def failure(text: str, claims: list[tuple[str, bytes]], pinned: bytes | None) -> StreamFailed:
    with pytest.raises(StreamFailed) as info:
        resolve(text, claims, pinned)
    return info.value


A = ("alice", ALICE)
M = ("alice", MALLORY)
C = ("alice", CAROL)


@pytest.mark.parametrize(
    ("claims", "pinned", "expected"),
    [
        ([A], None, ALICE),  # one claimant, nothing pinned
        ([A, A], None, ALICE),  # duplicates count once
        ([A, ("bob", MALLORY)], None, ALICE),  # claims for other names are ignored
        ([A], ALICE, ALICE),  # pin agrees
        ([A, M], ALICE, ALICE),  # a thief's later claim does not take over a pinned name
        ([M, A], ALICE, ALICE),
        ([], ALICE, ALICE),  # claim lapsed: the pin still works
    ],
)
def test_name_rule_resolves(
    claims: list[tuple[str, bytes]], pinned: bytes | None, expected: bytes
) -> None:
    assert resolve("alice.ssh", claims, pinned) == expected


def test_no_claim_is_unknown_name() -> None:
    assert failure("alice.ssh", [], None).code == StreamError.UNKNOWN_NAME
    assert failure("alice.ssh", [("bob", ALICE)], None).code == StreamError.UNKNOWN_NAME


def test_several_claimants_are_ambiguous() -> None:
    err = failure("alice.ssh", [A, M, C], None)
    assert err.code == StreamError.UNKNOWN_NAME
    assert err.detail.startswith("ambiguous: several keys claim 'alice'")
    assert "use alice#FINGERPRINT.ssh" in err.detail
    for key in (ALICE, MALLORY, CAROL):
        assert fingerprint(key) in err.detail


def test_pinned_name_claimed_only_by_another_key_is_a_mismatch() -> None:
    err = failure("alice.ssh", [M], ALICE)
    assert err.code == StreamError.KEY_MISMATCH
    assert fingerprint(ALICE) in err.detail and fingerprint(MALLORY) in err.detail


def test_fingerprint_selects_among_claimants() -> None:
    assert resolve(f"alice#{fingerprint(MALLORY)}.ssh", [A, M], None) == MALLORY
    assert resolve(f"alice#{ALICE_FP}.ssh", [A, M], None) == ALICE
    # the explicit fingerprint is the user's choice, even over a pin
    assert resolve(f"alice#{fingerprint(MALLORY)}.ssh", [A, M], ALICE) == MALLORY
    # a pinned key with that fingerprint needs no live claim
    assert resolve(f"alice#{ALICE_FP}.ssh", [], ALICE) == ALICE


def test_fingerprint_without_matching_claim_is_unknown() -> None:
    err = failure(f"alice#{fingerprint(CAROL)}.ssh", [A, M], ALICE)
    assert err.code == StreamError.UNKNOWN_NAME
    assert fingerprint(CAROL) in err.detail


def test_key_form_needs_no_claims_or_pin() -> None:
    assert resolve(f"{ALICE_TEXT}.ssh", [], None) == ALICE
    assert resolve(f"{ALICE_TEXT}.ssh", [M], MALLORY) == ALICE
    assert resolve(f"{ALICE_TEXT}#{ALICE_FP}.ssh", [], None) == ALICE


def test_key_form_with_wrong_fingerprint_is_a_mismatch() -> None:
    address = ServiceAddress("ssh", None, fingerprint(MALLORY), ALICE)
    with pytest.raises(StreamFailed) as info:
        resolve_owner(address, [], None)
    assert info.value.code == StreamError.KEY_MISMATCH


# --- proof of work and rotations ------------------------------------------------------


def test_name_pow_round_trip_and_binding() -> None:
    key = Identity(bytes(range(32))).public
    nonce = solve_name_pow("alice", key, bits=12)
    assert name_pow_ok("alice", key, nonce, bits=12)
    # The work is bound to the name and the key: neither can be swapped.
    other = Identity(bytes(range(1, 33))).public
    assert not all(name_pow_ok("alice", other, nonce + i, bits=12) for i in range(3))
    assert name_pow_ok("x", key, 0, bits=0)


def test_rotation_chain_moves_a_pin() -> None:
    old, mid, new = (Identity(bytes([i]) * 32).public for i in (1, 2, 3))
    addr = parse_service_address("alice.ssh")
    rotations = {old: mid, mid: new}
    assert resolve_owner(addr, [("alice", new)], old, rotations) == new
    assert follow_rotations(old, rotations, {new}) == new


def test_rotation_not_signed_by_the_pinned_key_is_ignored() -> None:
    old, thief, other = (Identity(bytes([i]) * 32).public for i in (4, 5, 6))
    addr = parse_service_address("alice.ssh")
    # A rotation that starts from some other key does not move a pin on `old`.
    with pytest.raises(StreamFailed) as info:
        resolve_owner(addr, [("alice", thief)], old, {other: thief})
    assert info.value.code is StreamError.KEY_MISMATCH


def test_rotation_cycles_end() -> None:
    a, b, c = (Identity(bytes([i]) * 32).public for i in (7, 8, 9))
    assert follow_rotations(a, {a: b, b: a}, {c}) is None
