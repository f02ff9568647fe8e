"""Reloading config.toml (issue 11 defect f): the pure diff between two configs, and the
Reloader against fake owner and client sides: only the difference is applied, a refused
file changes nothing and says why in one log line, command-line flags still win, and
settings read only at start are reported as needing a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vx6.errors import UsageError
from vx6.node.reload import (
    RESTART_FIELDS,
    ConfigDiff,
    Reloader,
    TableDiff,
    diff_config,
    running_after,
)
from vx6.store.config import ForwardConfig, NodeConfig, ServiceConfig, load_config

NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
SERVICES = st.dictionaries(
    NAMES,
    st.builds(
        ServiceConfig,
        st.just("x"),
        st.just("127.0.0.1"),
        st.integers(1, 3),
        public=st.booleans(),
    ),
)
FORWARDS = st.dictionaries(
    NAMES,
    st.builds(
        ForwardConfig,
        st.just("f"),
        st.sampled_from(["o.s", "o.t"]),
        st.just("127.0.0.1"),
        st.integers(0, 2),
    ),
)


def config(services: dict[str, ServiceConfig], forwards: dict[str, ForwardConfig]) -> NodeConfig:
    return NodeConfig(services=services, forwards=forwards)


def apply(old: dict[str, object], new: dict[str, object], diff: TableDiff) -> dict[str, object]:
    """What a table becomes when only the diff is applied to it."""
    result = {k: v for k, v in old.items() if k not in diff.removed}
    for name in diff.added + diff.changed:
        result[name] = new[name]
    return result


@given(SERVICES, SERVICES, FORWARDS, FORWARDS)
def test_applying_the_diff_gives_the_new_tables(
    s1: dict[str, ServiceConfig],
    s2: dict[str, ServiceConfig],
    f1: dict[str, ForwardConfig],
    f2: dict[str, ForwardConfig],
) -> None:
    diff = diff_config(config(s1, f1), config(s2, f2))
    assert apply(dict(s1), dict(s2), diff.services) == s2
    assert apply(dict(f1), dict(f2), diff.forwards) == f2
    for table, old, new in ((diff.services, s1, s2), (diff.forwards, f1, f2)):
        touched = set(table.added) | set(table.removed) | set(table.changed)
        assert len(touched) == len(table.added) + len(table.removed) + len(table.changed)
        untouched = old.keys() & new.keys() - touched
        assert all(old[k] == new[k] for k in untouched)  # unchanged ones are left alone
    assert diff.restart_needed == ()


@given(SERVICES, FORWARDS)
def test_the_same_config_is_no_change(
    s: dict[str, ServiceConfig], f: dict[str, ForwardConfig]
) -> None:
    diff = diff_config(config(s, f), config(dict(s), dict(f)))
    assert diff == ConfigDiff()
    assert diff.summary() == "no changes"


def test_the_summary_line() -> None:
    svc = ServiceConfig("x", "127.0.0.1", 1)
    fwd = ForwardConfig("db", "o.db", "127.0.0.1", 0)
    old = config({"old": svc, "ssh": svc, "keep": svc}, {})
    new = config(
        {"web": svc, "ssh": dataclasses.replace(svc, target_port=2), "keep": svc}, {"db": fwd}
    )
    assert diff_config(old, new).summary() == "services +web -old ~ssh; forwards +db"


def test_settings_read_at_start_are_reported_not_applied() -> None:
    old = NodeConfig(listen=[("::1", 1)], services={"a": ServiceConfig("a", "127.0.0.1", 1)})
    new = dataclasses.replace(old, listen=[("::1", 2)], relay=True, circuit_lifetime=5.0)
    diff = diff_config(old, new)
    assert diff.restart_needed == ("listen", "relay", "circuit_lifetime")
    assert diff.summary() == "no changes"
    after = running_after(old, new)
    assert (after.listen, after.relay, after.circuit_lifetime) == (old.listen, False, 600.0)
    assert "services" not in RESTART_FIELDS and "name" in RESTART_FIELDS


# ---------------------------------------------------------------- the Reloader
class FakeOwner:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def configure(self, svc: ServiceConfig) -> None:
        self.calls.append(f"configure {svc.name}:{svc.target_port}")

    def unconfigure(self, name: str) -> None:
        self.calls.append(f"unconfigure {name}")


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def start_config_forwards(self, forwards: Iterable[ForwardConfig]) -> None:
        self.calls += [f"start {f.name}" for f in forwards]

    async def retire(self, name: str) -> bool:
        self.calls.append(f"retire {name}")
        return True


SERVICE = '[services.{name}]\ntarget = "127.0.0.1:{port}"\npublic = true\n'
FORWARD = '[forwards.{name}]\nservice = "o.{name}"\nlocal = "127.0.0.1:{port}"\n'


def write(path: Path, *sections: str, head: str = "") -> None:
    path.write_text(head + "\n".join(sections))


def start(path: Path, flags: NodeConfig) -> tuple[Reloader, FakeOwner, FakeClient]:
    owner, client = FakeOwner(), FakeClient()
    running = load_config(path).with_flags(flags)
    return Reloader(path, flags, running, services=owner, forwards=client), owner, client


def test_only_the_difference_is_applied(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "config.toml"
    write(
        path,
        SERVICE.format(name="a", port=1),
        SERVICE.format(name="b", port=2),
        SERVICE.format(name="s", port=3),
        FORWARD.format(name="f", port=0),
        FORWARD.format(name="g", port=0),
        FORWARD.format(name="h", port=0),
    )
    reloader, owner, client = start(path, NodeConfig())
    write(
        path,
        SERVICE.format(name="b", port=2),
        SERVICE.format(name="c", port=4),
        SERVICE.format(name="s", port=5),
        FORWARD.format(name="f", port=0),
        FORWARD.format(name="g", port=7),
        FORWARD.format(name="k", port=0),
    )
    with caplog.at_level(logging.INFO, "vx6.reload"):
        diff = asyncio.run(reloader.reload())
    assert diff.summary() == "services +c -a ~s; forwards +k -h ~g"
    assert owner.calls == ["unconfigure a", "configure c:4", "configure s:5"]
    assert client.calls == ["retire h", "retire g", "start g", "start k"]
    assert [r.getMessage() for r in caplog.records] == [
        "reloaded config.toml: services +c -a ~s; forwards +k -h ~g"
    ]
    # Reloading the same file again changes nothing.
    owner.calls.clear()
    client.calls.clear()
    assert asyncio.run(reloader.reload()).summary() == "no changes"
    assert owner.calls == client.calls == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[services.a\ntarget = 1", "Expected ']'"),
        (SERVICE.format(name="a", port=99999), "port"),
        ('[services.a]\ntarget = "10.0.0.1:22"\n', "not a loopback address"),
        (FORWARD.format(name="f", port=0) + "hops = 9\n", "hops must be 1..5"),
        ('[forwards.f]\nservice = "o.f"\nlocal = "1"\nhops = "x"\n', "must be an integer"),
        ("services = 5\n", "services must be a table"),
        ('[services.a]\ntarget = "127.0.0.1:1"\nallow = "abc"\n', "allow must be a list"),
        ('listen = "x"\n', "listen must be a list"),
    ],
)
def test_an_invalid_file_is_refused_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, problem: str
) -> None:
    path = tmp_path / "config.toml"
    write(path, SERVICE.format(name="a", port=1))
    reloader, owner, client = start(path, NodeConfig())
    before = reloader.running
    path.write_text(text)
    with caplog.at_level(logging.INFO, "vx6.reload"), pytest.raises(UsageError, match=problem):
        asyncio.run(reloader.reload())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith("config.toml not reloaded (running configuration kept): ")
    assert problem in lines[0]
    assert owner.calls == client.calls == []
    assert reloader.running is before
    asyncio.run(reloader.hangup())  # SIGHUP: the same refusal, and no exception


def test_flags_still_win_and_start_only_settings_need_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.toml"
    write(path, head='name = "filename"\nlisten = ["[::1]:1000"]\n')
    flags = NodeConfig(name="flagname", listen=[("::1", 2000)])
    reloader, _, _ = start(path, flags)
    write(path, head='name = "other"\nlisten = ["[::1]:1001"]\nrelay = true\n')
    with caplog.at_level(logging.INFO, "vx6.reload"):
        diff = asyncio.run(reloader.reload())
    assert diff.restart_needed == ("relay",)  # name and listen come from the flags
    assert reloader.running.name == "flagname"
    assert reloader.running.listen == [("::1", 2000)]
    assert reloader.running.relay is False
    assert [r.getMessage() for r in caplog.records] == [
        "reloaded config.toml: no changes",
        "config.toml: relay changed; that takes a restart (running values kept)",
    ]
