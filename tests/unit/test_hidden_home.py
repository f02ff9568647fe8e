"""A hidden service's files in the home (docs/hidden.md 1, 6): the alias key (0600 in a
0700 directory, made once, stable), the state file (atomic, strict, a damaged one moved
aside), removal, petnames in the registry, and the client address parser."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vx6.core.hidden.alias import AliasError, encode_alias, parse_alias
from vx6.core.hidden.target import AliasTarget, parse_target, validate_petname
from vx6.core.names import ServiceAddress
from vx6.crypto.keys import Identity
from vx6.errors import UsageError
from vx6.store.hidden_state import (
    GuardState,
    HiddenState,
    HiddenStateError,
    decode_state,
    encode_state,
)
from vx6.store.home import Home
from vx6.store.registry import Registry, RegistryError

GUARD = GuardState(bytes(range(32)), 1767000000.5, None)
DOWN = GuardState(bytes(32), 1767000001.0, 1767000100.25)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_alias_key_is_private_stable_and_a_valid_alias(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    seed = home.hidden_alias_seed("web")
    assert len(seed) == 32
    folder = home.path / "hidden" / "web"
    assert mode(folder) == 0o700 and mode(folder.parent) == 0o700
    assert mode(folder / "alias.key") == 0o600
    assert Home(tmp_path / "h").hidden_alias_seed("web") == seed  # stable across restarts
    assert home.hidden_alias_seed("blog") != seed  # one key per service
    public = Identity(seed).public
    assert parse_alias(encode_alias(public)) == public
    assert public != home.identity().public  # never the node's key


def test_alias_key_of_another_size_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.hidden_alias_seed("web")
    (home.path / "hidden" / "web" / "alias.key").write_bytes(b"short")
    with pytest.raises(UsageError, match="damaged"):
        home.hidden_alias_seed("web")


def test_state_round_trip_and_missing_file(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    assert home.hidden_state("web") == HiddenState()
    state = HiddenState((GUARD, DOWN), 1767000000123, 1767000000.5)
    home.save_hidden_state("web", state)
    file = home.path / "hidden" / "web" / "state.json"
    assert mode(file) == 0o600
    assert home.hidden_state("web") == state
    assert not list(file.parent.glob("*.tmp"))


def test_state_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Home(tmp_path / "h")
    first = HiddenState((GUARD,), 5, 1.0)
    home.save_hidden_state("web", first)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(Exception, match="cannot write"):
        home.save_hidden_state("web", HiddenState((), 6, 2.0))
    monkeypatch.undo()
    assert home.hidden_state("web") == first  # the old file is whole


def test_damaged_state_is_moved_aside_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = Home(tmp_path / "h")
    home.save_hidden_state("web", HiddenState((GUARD,), 5, 1.0))
    file = home.path / "hidden" / "web" / "state.json"
    file.write_text('{"version": 1, "guards": "no"}')
    with caplog.at_level(logging.WARNING, logger="vx6.home"):
        assert home.hidden_state("web") == HiddenState()
    assert "damaged" in caplog.text and "state.json.bad" in caplog.text
    assert not file.exists()
    assert (file.parent / "state.json.bad").read_text() == '{"version": 1, "guards": "no"}'


def _doc(**changes: object) -> bytes:
    doc = json.loads(encode_state(HiddenState((GUARD,), 7, 3.0)))
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff", "not JSON"),
        (b"[1, 2", "not JSON"),
        (b"[]", "must be an object"),
        (b"[" * 50000 + b"]" * 50000, "larger than"),
        (b"[" * 30000 + b"]" * 30000, "not JSON|must be an object"),
        (_doc(version=2), "version 2"),
        (_doc(version=True), "version True"),
        (_doc(extra=1), "must be an object with"),
        (_doc(guards=[{}] * 3), "at most 2"),
        (_doc(guards=[{"identity": "x"}]), r"guards\[0\] must have exactly"),
        (
            _doc(guards=[{"identity": "a" * 51 + "b", "chosen_at": 1, "down_since": None}]),
            "canonical",
        ),
        (_doc(guards=[{"identity": "1" * 52, "chosen_at": 1, "down_since": None}]), "not a key"),
        (_doc(guards=[{"identity": "a" * 52, "chosen_at": "x", "down_since": None}]), "chosen_at"),
        (_doc(guards=[{"identity": "a" * 52, "chosen_at": 1, "down_since": -1}]), "negative"),
        (_doc(last_revision=-1), "last_revision"),
        (_doc(last_revision=2**63), "last_revision"),
        (_doc(last_revision=1.5), "last_revision must be an integer"),
        (_doc(last_published="now"), "last_published"),
        (
            b'{"version": 1, "guards": [], "last_revision": 0, "last_published": NaN}',
            "last_published",
        ),
    ],
)
def test_state_decoding_is_strict(raw: bytes, message: str) -> None:
    with pytest.raises(HiddenStateError, match=message):
        decode_state(raw)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=8,
)
FIELDS = st.sampled_from(["version", "guards", "last_revision", "last_published"])


@given(st.binary(max_size=200) | st.builds(lambda f, v: _doc(**{f: v}), FIELDS, JSON))
def test_state_decoder_raises_only_its_error(raw: bytes) -> None:
    with contextlib.suppress(HiddenStateError):
        decode_state(raw)


def test_remove_deletes_key_and_state(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    seed = home.hidden_alias_seed("web")
    home.save_hidden_state("web", HiddenState((), 1, None))
    assert home.hidden_alias_exists("web")
    assert home.remove_hidden("web") is True
    assert not (home.path / "hidden" / "web").exists()
    assert list((home.path / "hidden").iterdir()) == []
    assert home.remove_hidden("web") is False
    assert home.hidden_alias_seed("web") != seed  # made anew: a different alias


def test_petnames_in_the_registry(tmp_path: Path) -> None:
    key, other = Identity(bytes(32)).public, Identity(bytes([1]) * 32).public
    with Registry(tmp_path / "r.sqlite") as reg:
        reg.set_petname("web", key, limit=2)
        reg.set_petname("shop", other, limit=2)
        reg.set_petname("web", other, limit=2)  # replacing does not count twice
        with pytest.raises(RegistryError, match="2 petnames already"):
            reg.set_petname("third", key, limit=2)
        assert reg.petnames() == [("shop", other), ("web", other)]
        assert reg.get_petname("web") == other and reg.get_petname("nope") is None
        assert reg.remove_petname("web") and not reg.remove_petname("web")


def test_a_registry_from_before_petnames_gains_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vx6.store import schema

    path = tmp_path / "r.sqlite"
    with monkeypatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
        with Registry(path) as reg:
            assert reg.schema_version == 1
            reg.set_meta("name", "alice")
    with Registry(path) as reg:
        assert reg.schema_version == len(schema.MIGRATIONS) >= 2
        assert reg.get_meta("name") == "alice"
        reg.set_petname("web", bytes(32), limit=1)
        assert reg.petnames() == [("web", bytes(32))]


def test_petnames_are_labels_never_aliases() -> None:
    alias = encode_alias(Identity(bytes(32)).public)
    assert validate_petname("My-Web") == "my-web"
    for bad in (alias, "a.b", "we_b", "", "x" * 33):
        with pytest.raises(UsageError):
            validate_petname(bad)


def test_parse_target_tells_the_three_forms_apart() -> None:
    key = Identity(bytes(32)).public
    alias = encode_alias(key)
    names = {"web": key}
    assert parse_target(alias.upper(), names.get) == AliasTarget(key)
    assert parse_target("web", names.get) == AliasTarget(key, "web")
    assert str(parse_target("web", names.get)) == "web"
    assert isinstance(parse_target("alice.ssh", names.get), ServiceAddress)
    with pytest.raises(UsageError, match=r"NAME\.SERVICE"):
        parse_target("alice", names.get)
    with pytest.raises(AliasError, match="checksum"):
        parse_target(alias[:-3] + ("a" if alias[-3] != "a" else "b") + alias[-2:], names.get)
    with pytest.raises(AliasError, match="56 characters, not 57"):
        parse_target(alias + "a", names.get)
