"""The backlog memfd (swapctl/handoff/backlog.py): what the old relay writes after the
resume is what the candidate maps, unit for unit, whatever the buffers were and however
short the kernel's writes."""

from __future__ import annotations

import array
import os

import pytest

from swapctl.handoff import backlog
from swapctl.handoff.messages import HandoffError


def _round_trip(entries):
    fields, fd = backlog.write_backlogs(entries)
    assert fd is not None
    try:
        return fields, backlog.read_backlogs(fd, fields)
    finally:
        os.close(fd)


def _flat(units):
    return b"".join(bytes(u) for u, _ in units)


def test_units_of_every_buffer_kind_come_back_byte_for_byte():
    first = [(b"head-unit", 1), (bytearray(b"x" * 300), 3), (b"", 0), (b"tail", 1)]
    _, earlier = _round_trip([(7, 4, first)])
    mapped = earlier[0][2]  # memoryviews of the first memfd, as after an earlier swap
    ints = array.array("I", [1, 2, 3])  # a view whose items are not bytes
    entries = [(7, 4, mapped), (9, 0, [(memoryview(ints), 1), (b"z" * 70_000, 900)])]
    fields, back = _round_trip(entries)
    assert [(c, h) for c, h, _ in back] == [(7, 4), (9, 0)]
    assert _flat(back[0][2]) == _flat(first)
    assert _flat(back[1][2]) == ints.tobytes() + b"z" * 70_000
    assert fields["data_bytes"] == len(_flat(first)) + 12 + 70_000
    assert back[0][2][0] == (b"head-unit", 1)  # the unit in flight stays alone


@pytest.mark.parametrize("cap", [1, 7, 4096])
def test_short_writes_resume_where_the_kernel_stopped(monkeypatch, cap):
    real = os.writev
    calls = []

    def short_writev(fd, buffers):
        calls.append(len(buffers))
        budget, cut = cap, []
        for buf in buffers:
            if budget <= 0:
                break
            piece = bytes(buf)[:budget]
            cut.append(piece)
            budget -= len(piece)
        return real(fd, cut)

    monkeypatch.setattr(backlog.os, "writev", short_writev)
    units = [(bytes([i]) * (i * 13 % 97 + 1), 1) for i in range(200)]
    _, back = _round_trip([(1, 0, units)])
    assert _flat(back[0][2]) == _flat(units)
    assert len(calls) > 1  # the cap really cut the writes


def test_more_units_than_one_writev_takes():
    units = [(i.to_bytes(4, "little"), 1) for i in range(3 * 1024 + 5)]
    _, back = _round_trip([(3, 0, units)])
    assert _flat(back[0][2]) == _flat(units)


def test_a_memfd_shorter_than_the_message_says_is_refused():
    fields, fd = backlog.write_backlogs([(1, 0, [(b"abc", 1)])])
    assert fd is not None
    try:
        with pytest.raises(HandoffError, match="holds"):
            backlog.read_backlogs(fd, {**fields, "data_bytes": fields["data_bytes"] + 1})
    finally:
        os.close(fd)


def test_nothing_owed_needs_no_memfd():
    fields, fd = backlog.write_backlogs([])
    assert fd is None and fields["connections"] == 0
