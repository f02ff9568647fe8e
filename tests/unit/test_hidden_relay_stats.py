"""HiddenRelayRole.stats (what `vx6 status` reports as `hidden_relay`): every counter of
the intro and rendezvous cores, and what they hold now, so the hostile suite can read a
bound's peak and a refusal's exact count from a running relay."""

from __future__ import annotations

import asyncio

from tests.kit.clock import FakeClock

from vx6.core.hidden.rendezvous_point import RendezvousLimits
from vx6.errors import DestroyReason
from vx6.net.router_hidden import HiddenRelayMessage
from vx6.node.hidden_relay import HiddenRelayRole
from vx6.wire.cells import RelayCommand
from vx6.wire.hidden import EstablishRendezvous, encode_establish_rendezvous

BINDING = bytes(32)


class Router:
    def __init__(self) -> None:
        self.sent: list[tuple[tuple[int, int], int]] = []
        self.destroyed: list[tuple[tuple[int, int], DestroyReason]] = []

    def send_on(self, circuit: tuple[int, int], command: int, data: bytes) -> None:
        self.sent.append((circuit, command))

    def destroy(self, circuit: tuple[int, int], reason: DestroyReason) -> None:
        self.destroyed.append((circuit, reason))

    def join(self, client: tuple[int, int], service: tuple[int, int]) -> None:
        raise AssertionError("nothing joins here")


def _cookie(n: int) -> bytes:
    return encode_establish_rendezvous(EstablishRendezvous(n.to_bytes(32, "big")))


def test_stats_count_refusals_and_report_holdings() -> None:
    async def run() -> dict[str, int]:
        router, clock = Router(), FakeClock()
        limits = RendezvousLimits(max_pending_per_source=2)
        role = HiddenRelayRole(router, clock, rendezvous_limits=limits)
        for n in range(3):
            role.message(
                HiddenRelayMessage(
                    (1, 2 * n + 1), RelayCommand.ESTABLISH_RENDEZVOUS, _cookie(n), BINDING, "src"
                )
            )
        stats = role.stats()
        assert [c for c, _ in router.destroyed] == [(1, 5)]
        role.circuit_closed((1, 1), DestroyReason.NONE)
        after = role.stats()
        role.close()
        assert after["rendezvous_pending_held"] == 1 and after["pending_closed"] == 1
        return stats

    stats = asyncio.run(run())
    assert stats["rendezvous_registered"] == 2
    assert stats["establish_refused_source"] == 1
    assert stats["rendezvous_pending_held"] == 2
    assert stats["intro_registrations_held"] == 0
    assert stats["rendezvous_joined_pairs_held"] == 0
