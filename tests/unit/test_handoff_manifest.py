"""The handoff transfer encoding: parts of at most 253 fds, exact round trip, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swapctl.handoff.manifest import RECORD, Assembler, ConnState, Transfer, to_parts
from swapctl.handoff.messages import MAX_FDS, Envelope, HandoffError

states = st.builds(ConnState, st.integers(0, 2**64 - 1), st.binary(max_size=40),
                   st.binary(max_size=40), st.integers(0, 2**64 - 1),
                   st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                   st.integers(0, 2**64 - 1))


def round_trip(transfer: Transfer, kind: str = "manifest") -> Transfer:
    assembler = Assembler(kind)
    for msg, blob, fds in to_parts(transfer, kind):
        assert len(fds) <= MAX_FDS
        assembler.feed(Envelope(msg, blob, fds))
    assert assembler.done
    return assembler.transfer


@settings(max_examples=60, deadline=None)
@given(st.lists(states, max_size=600), st.booleans())
def test_round_trip_across_parts(conns: list[ConnState], listener: bool) -> None:
    transfer = Transfer(7 if listener else None, [(s, 100 + i) for i, s in enumerate(conns)],
                        {"stopped_reading_ns": 5})
    again = round_trip(transfer)
    assert again.listener == transfer.listener
    assert again.conns == transfer.conns
    assert again.meta == {"stopped_reading_ns": 5}


def test_parts_hold_at_most_253_fds_listener_first() -> None:
    transfer = Transfer(3, [(ConnState(i), 10 + i) for i in range(600)])
    parts = to_parts(transfer, "adopt")
    assert [len(fds) for _, _, fds in parts] == [253, 253, 95]
    assert parts[0][2][0] == 3 and parts[0][0]["listener"] == 0
    assert all(msg["parts"] == 3 for msg, _, _ in parts)


def test_parts_must_arrive_in_order_and_of_the_right_kind() -> None:
    parts = to_parts(Transfer(None, [(ConnState(i), i) for i in range(300)]), "manifest")
    with pytest.raises(HandoffError, match="expected manifest part 0"):
        Assembler("manifest").feed(Envelope(*parts[1]))
    with pytest.raises(HandoffError, match="expected adopt part 0"):
        Assembler("adopt").feed(Envelope(*parts[0]))


def test_a_table_running_past_its_blob_is_refused() -> None:
    msg, blob, fds = to_parts(Transfer(None, [(ConnState(1, b"abc"), 5)]), "adopt")[0]
    with pytest.raises(HandoffError, match="runs past"):
        Assembler("adopt").feed(Envelope(msg, blob[: RECORD.size - 1], fds))
    with pytest.raises(HandoffError, match="out of range"):
        Assembler("adopt").feed(Envelope(msg, blob[:-1], fds))
    with pytest.raises(HandoffError, match="out of range"):
        Assembler("adopt").feed(Envelope(msg, blob, []))


def test_unknown_table_format_is_refused() -> None:
    msg, blob, fds = to_parts(Transfer(None, []), "adopt")[0]
    with pytest.raises(HandoffError, match="table format"):
        Assembler("adopt").feed(Envelope({**msg, "table": "conn-v9"}, blob, fds))
