"""The handoff transfer encoding: parts of at most 253 fds, exact round trip, bounds."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swapctl.handoff.manifest import (
    DELTA_FORMAT,
    HEAD_STARTED,
    NO_FD,
    RECORD,
    TAIL,
    Assembler,
    ConnState,
    Transfer,
    to_parts,
)
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


def _tail_delta(owed: int, head: bytes = b"") -> Envelope:
    """A delta-v1 part 0 as the Rust relay sends it with the `tail` extension: one
    pre-copied connection (TAIL, owed the last `owed` bytes), one with a partial frame,
    then the section (unit lengths, units)."""
    units = [b"unit-one|", b"unit-two|", b"three|"]
    records = RECORD.pack(1, NO_FD, 0, owed, TAIL | HEAD_STARTED, 10, 1, 2, 0)
    records += RECORD.pack(2, NO_FD, len(head), 0, 0, 5, 0, 0, 0)
    section = b"".join(struct.pack("<I", len(u)) for u in units) + b"".join(units)
    msg = {"type": "manifest", "part": 0, "parts": 1, "table": DELTA_FORMAT, "connections": 2,
           "closed": 0, "listener": None, "tail": {"units": 3, "bytes": sum(map(len, units))},
           "from_tail": 1}
    return Envelope(msg, records + head + section, [])


def test_a_tail_record_takes_the_end_of_the_tail_section_and_the_copy_stands_alone() -> None:
    transfer = Assembler("manifest").feed(_tail_delta(owed=10, head=b"half"))
    (first, fd1), (second, _) = transfer.conns
    assert (first.id, fd1, first.unsent_out) == (1, -1, b"two|three|"), "the last 10, mid-unit"
    assert second.pending_in == b"half"
    assert transfer.owed[1] == (HEAD_STARTED, 0), "TAIL is resolved: the bytes are inline now"
    assert "tail" not in transfer.meta and transfer.meta["from_tail"] == 1
    # re-sent from the orchestrator's copy (a rollback): inline bytes, no section needed
    again = round_trip(Transfer(None, transfer.conns, {}, DELTA_FORMAT, [], transfer.owed), "adopt")
    assert again.conns[0][0].unsent_out == first.unsent_out


def test_a_tail_record_owing_more_than_the_section_is_refused() -> None:
    with pytest.raises(HandoffError, match="owes 25 bytes of a tail of 24"):
        Assembler("manifest").feed(_tail_delta(owed=25))
    env = _tail_delta(owed=3)
    env.msg["tail"] = {"units": 3, "bytes": 500}
    with pytest.raises(HandoffError, match="runs past the blob"):
        Assembler("manifest").feed(env)
