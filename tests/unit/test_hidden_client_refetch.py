"""node/hidden_client.py: a cached descriptor whose every intro fails is dropped and
fetched again once (the service replaced its intros: a restart, a changed config).
The e2e counterpart is test_e2e_hidden.py's stale-descriptor test."""

from __future__ import annotations

import asyncio
import os

import pytest

from kit.clock import FakeClock
from vx6.core.hidden.descriptor import (
    DESCRIPTOR_LIFETIME,
    PERIOD_LENGTH,
    seal_descriptor_body,
    time_period,
)
from vx6.core.hidden.profiles import PathProfile
from vx6.core.records import make_record
from vx6.core.routes import RelayCandidate
from vx6.crypto.hidden import AliasKey
from vx6.crypto.keys import Identity
from vx6.errors import StreamError, StreamFailed
from vx6.node.hidden_client import HiddenClient
from vx6.wire.hidden_desc import InnerPlaintext, IntroEntry
from vx6.wire.records import HiddenDescriptorBody, Record


class Directory:
    """Answers each fetch with the next of `answers` (then nothing)."""

    def __init__(self, answers: list[list[Record]]) -> None:
        self.answers = answers
        self.fetches = 0

    async def fetch(self, blinded_key: bytes) -> list[Record]:
        self.fetches += 1
        return self.answers.pop(0) if self.answers else []


class NoRelays:
    def relay_candidates(self) -> list[RelayCandidate]:
        return []  # no intro relay is known: every intro "fails" at once


class NeverBuild:
    async def build(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("no circuit is built in these tests")


def descriptor(alias: AliasKey, clock: FakeClock, revision: int) -> Record:
    wall = clock.wall()
    period = time_period(wall)
    intro = IntroEntry(os.urandom(32), Identity(os.urandom(32)).public, os.urandom(32))
    body = seal_descriptor_body(
        alias, period, revision, InnerPlaintext((intro,), proof_required=False), [], os.urandom
    )
    blinded = alias.blinded(period, PERIOD_LENGTH)
    record, _ = make_record(
        blinded, HiddenDescriptorBody(body), revision, wall, DESCRIPTOR_LIFETIME
    )
    return record


def client(directory: Directory, clock: FakeClock) -> HiddenClient:
    me = Identity(os.urandom(32))
    return HiddenClient(
        me,
        me.private_bytes(),
        builder=NeverBuild(),  # type: ignore[arg-type]
        relays=NoRelays(),
        descriptors=directory,
        clock=clock,
        random=os.urandom,
        spawn=lambda coro: None,
        count=lambda name, n=1: None,
    )


def connect(hc: HiddenClient, alias: AliasKey) -> StreamFailed:
    with pytest.raises(StreamFailed) as caught:
        asyncio.run(hc.connect(alias.public, PathProfile.FAST))
    return caught.value


def test_a_fresh_descriptor_whose_intros_fail_is_not_fetched_again() -> None:
    clock = FakeClock()
    alias = AliasKey(os.urandom(32))
    directory = Directory([[descriptor(alias, clock, 1)]])
    assert connect(client(directory, clock), alias).code is StreamError.INTROS_UNREACHABLE
    assert directory.fetches == 1


def test_a_cached_descriptor_whose_intros_fail_is_dropped_and_fetched_once() -> None:
    clock = FakeClock()
    alias = AliasKey(os.urandom(32))
    stale, newer = descriptor(alias, clock, 1), descriptor(alias, clock, 2)
    directory = Directory([[stale], [newer]])
    hc = client(directory, clock)
    connect(hc, alias)  # caches the stale one
    assert directory.fetches == 1
    # The second connect finds the cached intros dead, refetches once, and the newer
    # descriptor's intros fail too: the answer is still INTROS_UNREACHABLE, no loop.
    assert connect(hc, alias).code is StreamError.INTROS_UNREACHABLE
    assert directory.fetches == 2
    # The newer one is cached now; it fails, is dropped, and the DHT has nothing more.
    assert connect(hc, alias).code is StreamError.NO_DESCRIPTOR
    assert directory.fetches == 3
