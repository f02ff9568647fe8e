"""Circuit cells on a link (core/link_cells.py): whole cells in, the same cells out, in
order, whether they were copied in (`send_cells`) or written in place (`cell_slot`), and
a slot that was never confirmed is never sent."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kit.links import Net, make_net
from vx6.core import events as ev
from vx6.wire import frames as fr
from vx6.wire.cells import CELL_SIZE, CELLS_PER_FRAME


def _cell(n: int) -> bytes:
    return n.to_bytes(4, "big") + bytes([n % 251]) * (CELL_SIZE - 4)


def _arrived(net: Net) -> list[bytes]:
    net.pump()
    chunks = [c for e in net.b.of(ev.CellsReceived) for c in e.chunks]
    joined = b"".join(bytes(c) for c in chunks)
    return [joined[i : i + CELL_SIZE] for i in range(0, len(joined), CELL_SIZE)]


def _frames_written(net: Net) -> list[bytes]:
    """The plaintext of every frame a wrote since `net.tap()`, not yet delivered."""
    net.settle()
    return [plain for _, plain in net.ab._in_flight]


def test_copied_cells_arrive_whole_and_in_order_three_to_a_frame() -> None:
    net = make_net()
    net.tap()
    net.a.link.send_cells([_cell(n) for n in range(7)])
    frames = _frames_written(net)
    assert [len(f) for f in frames] == [1 + 3 * CELL_SIZE, 1 + 3 * CELL_SIZE, 1 + CELL_SIZE]
    assert all(f[0] == fr.FrameType.CELLS for f in frames)
    assert _arrived(net) == [_cell(n) for n in range(7)]


def test_cells_written_in_place_over_old_bytes_arrive_exactly() -> None:
    net = make_net()
    link = net.a.link
    for n in range(2 * CELLS_PER_FRAME):  # the second round reuses the first one's places
        slot = link.cell_slot()
        slot[:] = _cell(n)
        link.cell_written()
    slot = link.cell_slot()
    slot[:4] = (99).to_bytes(4, "big")  # only the start: the rest is still cell 3
    link.cell_written()
    assert _arrived(net) == [_cell(n) for n in range(6)] + [_cell(99)[:4] + _cell(3)[4:]]


def test_a_slot_never_confirmed_is_not_sent_and_is_handed_out_again() -> None:
    net = make_net()
    link = net.a.link
    link.cell_slot()[:] = _cell(1)
    link.cell_written()
    abandoned = link.cell_slot()
    abandoned[:] = _cell(666)  # e.g. a layer that failed to decrypt
    again = link.cell_slot()
    assert again.obj is abandoned.obj and len(again) == CELL_SIZE
    again[:] = _cell(2)
    link.cell_written()
    assert _arrived(net) == [_cell(1), _cell(2)]


def test_a_partly_filled_frame_leaves_with_the_next_output() -> None:
    net = make_net()
    net.tap()
    link = net.a.link
    link.cell_slot()[:] = _cell(5)
    link.cell_written()
    frames = _frames_written(net)  # collecting the link's output seals the frame
    assert [len(f) for f in frames] == [1 + CELL_SIZE]
    assert _arrived(net) == [_cell(5)]


def test_close_sends_the_cells_already_written_first() -> None:
    net = make_net()
    link = net.a.link
    link.cell_slot()[:] = _cell(8)
    link.cell_written()
    link.close()
    assert _arrived(net) == [_cell(8)]
    assert net.b.closed_with is not None


ops = st.lists(
    st.one_of(
        st.tuples(st.just("copy"), st.integers(0, 5)),
        st.tuples(st.just("slot"), st.booleans()),
        st.tuples(st.just("collect"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_any_mix_of_copied_and_in_place_cells_keeps_order(steps: list[tuple[str, object]]) -> None:
    """Copied batches, in-place cells (some abandoned half-way) and output collected at
    any moment: exactly the confirmed cells arrive, in the order they were confirmed."""
    net = make_net()
    link = net.a.link
    sent: list[bytes] = []
    for n, (op, arg) in enumerate(steps):
        if op == "copy":
            batch = [_cell(1000 * n + i) for i in range(int(arg))]  # type: ignore[call-overload]
            link.send_cells(batch)
            sent += batch
        elif op == "slot":
            slot = link.cell_slot()
            slot[:] = _cell(n)
            if arg:
                link.cell_written()
                sent.append(_cell(n))
        else:
            net.pump()
    assert _arrived(net) == sent
