"""StreamPipe reads whole frames or cells (net/pipe.py): the read buffer it offers is the
largest multiple of its carrier's unit that fits, so a full read leaves no nearly empty
frame or cell behind (through five relays a 256 KiB read used to be 16 full cells and
one of 1824 bytes, as costly at every hop as a full one)."""

from __future__ import annotations

import pytest

from vx6.core.circuit.session import CircuitStreams
from vx6.crypto.onion import relay_plaintext_size
from vx6.net.pipe import READ_BUFFER, StreamPipe
from vx6.wire.cells import RELAY_HEADER
from vx6.wire.frames import MAX_DATA_PAYLOAD


class Carrier:
    """Just enough of a StreamCarrier for `bind`."""

    def __init__(self, quantum: int) -> None:
        self.send_quantum = quantum
        self.paused = False
        self.sent: list[int] = []

    def send(self, sid: int, data: bytes | memoryview) -> bool:
        self.sent.append(len(data))
        return True

    def finish(self, sid: int) -> None:
        pass


def _per_cell(hops: int) -> int:
    return relay_plaintext_size(hops) - RELAY_HEADER


@pytest.mark.parametrize("quantum", [MAX_DATA_PAYLOAD, *(_per_cell(h) for h in range(1, 7)), 1])
def test_a_full_read_is_whole_units(quantum: int) -> None:
    pipe = StreamPipe()
    pipe.bind(Carrier(quantum), 1)  # type: ignore[arg-type]
    size = len(pipe.get_buffer(-1))
    assert size % quantum == 0
    assert READ_BUFFER - quantum < size <= READ_BUFFER


def test_a_circuit_session_cuts_a_full_read_into_full_cells() -> None:
    """The same numbers as the session uses: a full read through 5 relays (6 hops) is
    exactly 16 full DATA messages."""
    session = CircuitStreams(initiator=True, max_data=_per_cell(6))
    sid = session.open_stream("bulk")
    session.messages()
    pipe = StreamPipe()
    pipe.bind(Carrier(session.max_data), sid)  # type: ignore[arg-type]
    session.send(sid, bytes(len(pipe.get_buffer(-1))))
    sizes = [len(m.data) for m in session.messages()]
    assert sizes == [session.max_data] * 16
