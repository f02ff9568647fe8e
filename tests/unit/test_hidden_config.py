"""`[hidden.NAME]` tables in config.toml (docs/hidden.md, "CLI and config"): defaults,
every refusal with a message naming the file, table and key, the editor that writes
and removes one table leaving the rest of the file as it was, and the reload diff that
reports hidden-service changes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vx6.core.hidden.target import MAX_DESCRIPTOR_CLIENTS
from vx6.errors import UsageError
from vx6.node.reload import RESTART_FIELDS, diff_config, running_after
from vx6.store.config import NodeConfig, load_config
from vx6.store.config_edit import with_hidden_table, without_hidden_table
from vx6.store.hidden_config import (
    HiddenServiceConfig,
    hidden_service_config,
    render_hidden_table,
)

KEY = "a" * 52  # a canonical key text (all-zero bits)


def load(tmp_path: Path, text: str) -> NodeConfig:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path)


def test_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[hidden.web]\ntarget = "127.0.0.1:8080"\npublic = true\n')
    assert cfg.hidden == {
        "web": HiddenServiceConfig("web", "127.0.0.1", 8080, "fast", (), True, False, 25, 200)
    }
    assert cfg.hidden["web"].target == "127.0.0.1:8080"


def test_every_setting(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[hidden.db]\ntarget = "[::1]:5432"\nprofile = "balanced"\n'
        f'allow = ["bob", "{KEY}", "bob"]\nintro_rate = 100\nintro_burst = 1\n',
    )
    svc = cfg.hidden["db"]
    assert (svc.target, svc.profile, svc.allow) == ("[::1]:5432", "balanced", ("bob", KEY))
    assert (svc.intro_rate, svc.intro_burst, svc.public) == (100, 1, False)


def test_remote_target_needs_the_explicit_option(tmp_path: Path) -> None:
    text = '[hidden.web]\ntarget = "192.0.2.1:80"\npublic = true\n'
    with pytest.raises(UsageError, match="allow_remote_target = true"):
        load(tmp_path, text)
    cfg = load(tmp_path, text + "allow_remote_target = true\n")
    assert cfg.hidden["web"].target_host == "192.0.2.1"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('profile = "fast"', "hidden.web needs a target"),
        ('target = "127.0.0.1"', "hidden.web.target"),
        ('target = "127.0.0.1:0"', "hidden.web.target: the port"),
        ("target = 80", "hidden.web.target must be a string"),
        ('target = "127.0.0.1:1"\nprofile = "quick"', "hidden.web.profile must be one of"),
        ('target = "127.0.0.1:1"\nallow = "bob"', "hidden.web.allow must be a list"),
        ('target = "127.0.0.1:1"\nallow = ["bad key!"]', "hidden.web.allow: "),
        ('target = "127.0.0.1:1"\npublic = "yes"', "hidden.web.public must be true or false"),
        ('target = "127.0.0.1:1"\npublic = true\nallow = ["bob"]', "hidden.web.public"),
        ('target = "127.0.0.1:1"\nintro_rate = 0', "hidden.web.intro_rate .* 1 to 100"),
        ('target = "127.0.0.1:1"\nintro_rate = 101', "hidden.web.intro_rate"),
        ('target = "127.0.0.1:1"\nintro_rate = true', "hidden.web.intro_rate"),
        ('target = "127.0.0.1:1"\nintro_burst = 501', "hidden.web.intro_burst .* 1 to 500"),
        ('target = "127.0.0.1:1"\nhops = 3', "hidden.web: unknown key 'hops'"),
    ],
)
def test_refusals_name_file_table_and_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        load(tmp_path, f"[hidden.web]\n{body}\n")
    assert str(tmp_path / "config.toml") in str(info.value)


def test_too_many_clients_names_the_bound(tmp_path: Path) -> None:
    names = [f"c{i}" for i in range(MAX_DESCRIPTOR_CLIENTS + 1)]
    allow = ", ".join(f'"{n}"' for n in names)
    with pytest.raises(UsageError, match=r"at most 12 .*MAX_DESCRIPTOR_CLIENTS"):
        load(tmp_path, f'[hidden.web]\ntarget = "127.0.0.1:1"\nallow = [{allow}]\n')
    ok = ", ".join(f'"{n}"' for n in names[:-1])
    assert (
        len(
            load(tmp_path, f'[hidden.web]\ntarget="127.0.0.1:1"\nallow=[{ok}]\n')
            .hidden["web"]
            .allow
        )
        == 12
    )


def test_bad_names_and_shapes(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="hidden service name 'we_b'"):
        load(tmp_path, '[hidden.we_b]\ntarget = "127.0.0.1:1"\n')
    with pytest.raises(UsageError, match=r"hidden\.web must be a table"):
        load(tmp_path, "[hidden]\nweb = 3\n")
    with pytest.raises(UsageError, match="hidden must be a table"):
        load(tmp_path, "hidden = 3\n")
    with pytest.raises(UsageError, match="declared twice"):
        load(tmp_path, '[hidden.web]\ntarget="127.0.0.1:1"\n[hidden.WEB]\ntarget="127.0.0.1:2"\n')


def test_command_line_messages_name_the_flags() -> None:
    with pytest.raises(UsageError, match="--allow-remote-target"):
        hidden_service_config("web", "192.0.2.1:80", public=True)
    with pytest.raises(UsageError, match="--intro-rate"):
        hidden_service_config("web", "127.0.0.1:80", public=True, intro_rate=0)


@given(
    profile=st.sampled_from(["fast", "balanced"]),
    allow=st.lists(st.sampled_from(["bob", "carol", KEY]), max_size=3, unique=True),
    rate=st.integers(1, 100),
    burst=st.integers(1, 500),
    remote=st.booleans(),
)
def test_rendered_table_parses_back(
    profile: str, allow: list[str], rate: int, burst: int, remote: bool
) -> None:
    svc = hidden_service_config(
        "web",
        "127.0.0.1:8080",
        profile=profile,
        allow=allow,
        public=not allow,
        allow_remote_target=remote,
        intro_rate=rate,
        intro_burst=burst,
    )
    from vx6.store.hidden_config import parse_hidden_tables

    data = tomllib.loads(render_hidden_table(svc))
    assert parse_hidden_tables(data["hidden"], Path("x")) == {"web": svc}


ORIGINAL = """\
name = "alice"   # kept as written
# services
[services.ssh]
target = "127.0.0.1:22"
public = true

# the forwards
[forwards.web]
service = "bob.web"
local = "8080"
"""


def test_editor_adds_replaces_and_removes_one_table() -> None:
    web = hidden_service_config("web", "127.0.0.1:80", public=True)
    added = with_hidden_table(ORIGINAL, web)
    assert added.startswith(ORIGINAL)
    other = hidden_service_config("blog", "127.0.0.1:81", allow=["bob"])
    both = with_hidden_table(added, other)
    changed = with_hidden_table(both, hidden_service_config("web", "127.0.0.1:82", public=True))
    data = tomllib.loads(changed)
    assert data["hidden"]["web"] == {"target": "127.0.0.1:82", "public": True}
    assert data["hidden"]["blog"] == {"target": "127.0.0.1:81", "allow": ["bob"]}
    removed = without_hidden_table(changed, "web")
    assert removed is not None
    assert "web" not in tomllib.loads(removed)["hidden"]
    gone = without_hidden_table(removed, "blog")
    assert gone is not None and gone.rstrip("\n") == ORIGINAL.rstrip("\n")
    assert without_hidden_table(ORIGINAL, "web") is None


def test_editor_keeps_the_next_tables_comments() -> None:
    text = (
        '[hidden.web]\ntarget = "127.0.0.1:1"\npublic = true\n\n'
        '# forwards below\n[forwards.x]\nservice = "a.b"\nlocal = "1"\n'
    )
    out = without_hidden_table(text, "web")
    assert out is not None
    assert out.lstrip("\n") == '# forwards below\n[forwards.x]\nservice = "a.b"\nlocal = "1"\n'


def test_editor_refuses_forms_it_cannot_edit() -> None:
    web = hidden_service_config("web", "127.0.0.1:80", public=True)
    for text in ('hidden.web.target = "127.0.0.1:1"\n', 'hidden = { web = { target = "x" } }\n'):
        with pytest.raises(UsageError, match="edit that file by hand"):
            with_hidden_table(text, web)


def test_reload_reports_hidden_service_changes() -> None:
    web = hidden_service_config("web", "127.0.0.1:80", public=True)
    blog = hidden_service_config("blog", "127.0.0.1:81", public=True)
    old = NodeConfig(hidden={"web": web, "blog": blog})
    new = NodeConfig(
        hidden={
            "web": hidden_service_config("web", "127.0.0.1:80", profile="balanced", public=True),
            "shop": blog,
        }
    )
    diff = diff_config(old, new)
    assert (diff.hidden.added, diff.hidden.removed, diff.hidden.changed) == (
        ("shop",),
        ("blog",),
        ("web",),
    )
    assert diff.summary() == "hidden services +shop -blog ~web"
    assert diff.restart_needed == ()
    assert diff.as_dict()["hidden"] == {
        "added": ("shop",),
        "removed": ("blog",),
        "changed": ("web",),
    }
    assert "hidden" not in RESTART_FIELDS
    assert running_after(old, new).hidden == new.hidden
