"""What the hidden-service roles need of the rest of the node: a circuit builder, the
relays route planning may use, the descriptor directory (node/hidden_dht.py). The
client (node/hidden_client.py) and the service host (node/hidden_service.py) share
these, so neither imports the other. Stateless: protocols and one conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from vx6.core.circuit.client import HopSpec
from vx6.core.routes import RelayCandidate
from vx6.net.circuit import ClientPath
from vx6.wire.records import Record


class Builder(Protocol):
    async def build(
        self,
        owner: HopSpec,
        relays: list[HopSpec],
        *,
        authenticate: bool = True,
        on_control: Callable[[int, bytes], None] | None = None,
        accepts_streams: Callable[[ClientPath, int, str, int], None] | None = None,
    ) -> ClientPath: ...


class Relays(Protocol):
    def relay_candidates(self) -> list[RelayCandidate]: ...


class DescriptorSource(Protocol):
    async def fetch(self, blinded_key: bytes) -> list[Record]: ...


class DescriptorStore(DescriptorSource, Protocol):
    async def publish(self, record_raw: bytes) -> int: ...

    def close(self) -> None: ...


def hop(candidate: RelayCandidate) -> HopSpec:
    return HopSpec(candidate.identity, candidate.onion_key, candidate.endpoints)
