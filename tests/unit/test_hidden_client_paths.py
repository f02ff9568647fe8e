"""HiddenClient's joined paths as the benchmark drives them: `close_paths` closes every
path to one alias (any profile) and no other, and `describe_paths` carries each path's
own setup times (the steps of the attempt that made it)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from vx6.core.hidden.profiles import PathProfile
from vx6.crypto.keys import Identity
from vx6.errors import DestroyReason
from vx6.net.circuit import ClientPath
from vx6.node.hidden_client import HiddenClient

ALIAS_A = bytes(range(32))
ALIAS_B = bytes(range(1, 33))


class FakePath:
    def __init__(self) -> None:
        self.closed: list[DestroyReason] = []
        self.active_streams = 0

    @property
    def is_open(self) -> bool:
        return not self.closed

    def close(self, reason: DestroyReason) -> None:
        self.closed.append(reason)

    def describe(self) -> dict[str, object]:
        return {"state": "joined" if self.is_open else "closed"}


def make_client() -> HiddenClient:
    unused = cast(Any, None)
    return HiddenClient(
        Identity.generate(bytes(32)),
        bytes(32),
        builder=unused,
        relays=unused,
        descriptors=unused,
        clock=unused,
        random=lambda n: bytes(n),
        spawn=unused,
        count=lambda _name: None,
    )


def as_path(fake: FakePath) -> ClientPath:
    return cast(ClientPath, fake)


def test_close_paths_closes_every_profile_of_one_alias_only() -> None:
    client = make_client()
    fast, balanced, other = FakePath(), FakePath(), FakePath()
    client.paths[ALIAS_A, PathProfile.FAST] = [as_path(fast)]
    client.paths[ALIAS_A, PathProfile.BALANCED] = [as_path(balanced)]
    client.paths[ALIAS_B, PathProfile.FAST] = [as_path(other)]
    assert client.close_paths(ALIAS_A) == 2
    assert fast.closed == [DestroyReason.NONE] and balanced.closed == [DestroyReason.NONE]
    assert other.closed == []
    assert list(client.paths) == [(ALIAS_B, PathProfile.FAST)]
    assert client.close_paths(ALIAS_A) == 0


def test_a_new_path_keeps_its_own_setup_times() -> None:
    client = make_client()
    made = [FakePath(), FakePath()]
    steps = iter([{"lookup_ms": 20.0, "total_ms": 40.0}, {"lookup_ms": 0.1, "total_ms": 30.0}])

    async def connect(alias_key: bytes, profile: PathProfile) -> ClientPath:
        client.timings = next(steps)
        fake = made.pop(0)
        fake.active_streams = 8  # full: the next stream needs a new path
        return as_path(fake)

    async def scenario() -> None:
        await client.path_for(ALIAS_A, PathProfile.FAST)
        await client.path_for(ALIAS_A, PathProfile.FAST)

    client.connect = connect  # type: ignore[method-assign]
    asyncio.run(scenario())
    described = client.describe_paths(ALIAS_A)
    assert [d["setup_ms"] for d in described] == [
        {"lookup_ms": 20.0, "total_ms": 40.0},
        {"lookup_ms": 0.1, "total_ms": 30.0},
    ]
    assert all(d["profile"] == "fast" for d in described)
