"""One classifier: the bulk stream's checks agree with the load checker's PublisherTrack.

Each case feeds the same arrivals to a bare `PublisherTrack` (intact: `arrive`, damaged:
`arrive_damaged`, END: the `sent` of `result`) and, as bytes on the wire, to the bulk
`Classifier` (message by message), to a `Reassembler` (split anywhere) and to a
`StreamCheck` (memcmp fast path, then the parser), and asserts the verdicts are equal.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swapctl.probes.bulk.stream import (
    MESSAGE_SIZE,
    Classifier,
    Reassembler,
    StreamCheck,
    build_stream,
    end_message,
)
from swapctl.probes.tracker import PublisherAudit, PublisherTrack

COUNT = 40
STREAM = bytes(build_stream(COUNT))

Arrival = tuple[int, bool]  # (message number, damaged)


def message(n: int, damaged: bool = False) -> bytes:
    """Data message n of the stream; damaged: one payload byte flipped."""
    msg = bytearray(STREAM[(n - 1) * MESSAGE_SIZE : n * MESSAGE_SIZE])
    if damaged:
        msg[50] ^= 0xFF
    return bytes(msg)


def wire(arrivals: list[Arrival], sent: int | None) -> bytes:
    return b"".join(message(n, bad) for n, bad in arrivals) + (
        end_message(sent) if sent is not None else b"")


def reference(arrivals: list[Arrival], sent: int) -> PublisherAudit:
    track = PublisherTrack()
    for n, damaged in arrivals:
        if damaged:
            track.arrive_damaged(n)
        else:
            track.arrive(n)
    return track.result(0, sent)


def classified(arrivals: list[Arrival], sent: int | None) -> Classifier:
    classifier = Classifier()
    for n, bad in arrivals:
        classifier.message(message(n, bad))
    if sent is not None:
        classifier.message(end_message(sent))
    return classifier


def checked(data: bytes, chunk: int) -> StreamCheck:
    check = StreamCheck(STREAM)
    for i in range(0, len(data), chunk):
        check.feed(data[i : i + chunk])
    return check


# in order, a gap (4, 5), a duplicate (3), a reorder (4), a damaged one (8), the END
# (12 sent: 11 and 12 never came)
MIXED: list[Arrival] = [(1, False), (2, False), (3, False), (6, False), (7, False),
                        (3, False), (4, False), (8, True), (9, False), (10, False)]


def test_mixed_arrivals_agree_with_the_tracker() -> None:
    expected = reference(MIXED, 12)
    assert (expected.received, expected.lost, expected.duplicated, expected.reordered,
            expected.damaged, expected.lost_samples) == (8, 3, 1, 1, 1, (5, 11, 12))
    classifier = classified(MIXED, 12)
    assert classifier.end == 12
    assert classifier.audit() == expected
    assert classifier.corrupted == 1  # the damaged message, counted once


def test_timestamps_only_for_first_intact_arrivals() -> None:
    classifier = Classifier()
    got = [classifier.message(message(n, bad)) is not None for n, bad in MIXED]
    # the duplicate of 3 and the damaged 8 give no latency sample; reordered 4 does
    assert got == [True, True, True, True, True, False, True, False, True, True]


@pytest.mark.parametrize("chunk", [1, 7, MESSAGE_SIZE, 1000])
def test_mixed_arrivals_split_anywhere(chunk: int) -> None:
    data = wire(MIXED, 12)
    classifier = Classifier()
    reassembler = Reassembler(classifier)
    for i in range(0, len(data), chunk):
        for msg in reassembler.feed(data[i : i + chunk]):
            classifier.message(msg)
    assert classifier.audit() == reference(MIXED, 12)
    assert checked(data, chunk).audit() == reference(MIXED, 12)


@pytest.mark.parametrize("chunk", [1, 33, MESSAGE_SIZE, 500])
def test_fast_path_hands_over_to_the_tracker(chunk: int) -> None:
    """20 messages match the expected stream byte for byte, then a gap and a duplicate:
    the matched prefix counts as 20 in-order arrivals, the rest one by one."""
    arrivals = [(n, False) for n in range(1, 21)] + [(23, False), (24, False), (22, False),
                                                     (24, False), (25, True)]
    check = checked(wire(arrivals, 30), chunk)
    assert check.done
    audit = check.audit()
    assert audit == reference(arrivals, 30)
    assert (audit.received, audit.lost, audit.reordered, audit.duplicated,
            audit.damaged) == (23, 6, 1, 1, 1)  # lost: 21 and 26..30


def test_fast_path_only_without_end() -> None:
    """No difference and no END (the stream went quiet): what matched is delivered and
    judged against the highest number seen; a partial message is not counted."""
    check = checked(STREAM[: 15 * MESSAGE_SIZE + 30], 64)
    assert not check.done
    audit = check.audit()
    assert audit == reference([(n, False) for n in range(1, 16)], 15)
    assert (audit.sent, audit.received, audit.lost) == (15, 15, 0)


def test_exact_stream_then_end() -> None:
    check = checked(STREAM + end_message(COUNT), 4096)
    audit = check.audit()
    assert check.done and (audit.received, audit.lost) == (COUNT, 0)
    assert check.classifier.corrupted == 0


@pytest.mark.parametrize("chunk", [1, 3, 16, 40, 1000])
def test_garbage_is_corruption_not_loss(chunk: int) -> None:
    """A garbage run is one corruption however the reads split it, and the message
    after it is found (with reads of 40 bytes, message 2's magic is split across two
    reads, both after 32 bytes of garbage)."""
    data = message(1) + b"\x00" * 84 + message(2) + b"\xff" * 5 + message(3) + end_message(3)
    check = checked(data, chunk)
    assert check.classifier.corrupted == 2  # two resyncs
    assert check.audit() == reference([(1, False), (2, False), (3, False)], 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, COUNT), st.booleans()), max_size=60),
       st.integers(0, COUNT), st.integers(1, 3 * MESSAGE_SIZE))
def test_any_arrivals_agree(arrivals: list[Arrival], sent: int, chunk: int) -> None:
    """Whatever arrives, in whatever order and however it is split, the bulk checks
    and the tracker give the same verdict."""
    expected = reference(arrivals, sent)
    assert classified(arrivals, sent).audit() == expected
    assert checked(wire(arrivals, sent), chunk).audit() == expected
