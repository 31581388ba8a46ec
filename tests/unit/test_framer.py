"""The streaming framer: same frames however the stream is chunked; garbage resync; bounds."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from swapctl.protocol import (
    BadMagic,
    ChecksumMismatch,
    Framer,
    Frames,
    Oversize,
    Rejected,
    Skipped,
    Tlv,
    TruncatedMessage,
    WrongDomain,
    decode_message,
    encode_message,
    split_frames,
)
from swapctl.protocol.framer import Event
from tests.vectors import load_vectors

V = load_vectors()

tlvs = st.builds(
    Tlv,
    st.integers(1, 254),
    st.binary(max_size=600),
    st.booleans(),
).map(lambda t: Tlv(t.type, t.value, t.extended or len(t.value) > 255))

messages = st.builds(
    lambda dom, src, seq, ts, body, crc: encode_message(
        dom, src, body, sequence=seq, timestamp=ts, checksum=crc
    ),
    st.integers(0, 4),
    st.integers(0, 255),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.lists(tlvs, max_size=4),
    st.booleans(),
)
garbage = st.binary(min_size=1, max_size=40).filter(lambda b: b"\xef\xbe\xad\xde" not in b)


def run(framer: Framer, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events.extend(framer.feed(chunk))
    events.extend(framer.feed_eof())
    return events


def flatten(events: list[Event]) -> list[tuple[str, int, bytes]]:
    """Frames one by one; adjacent skips merged (their split depends on chunking)."""
    out: list[tuple[str, int, bytes]] = []
    for ev in events:
        if isinstance(ev, Frames):
            pos = ev.offset
            for frame in split_frames(ev.data):
                out.append(("frame", pos, frame))
                pos += len(frame)
        elif isinstance(ev, Rejected):
            out.append(("rejected", ev.offset, ev.data))
        elif out and out[-1][0] == "skip" and out[-1][1] + len(out[-1][2]) == ev.offset:
            out[-1] = ("skip", out[-1][1], out[-1][2] + b"?" * ev.length)
        else:
            out.append(("skip", ev.offset, b"?" * ev.length))
    return out


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=6))
def test_round_trip(msgs: list[bytes]) -> None:
    for msg in msgs:
        decoded = decode_message(msg)
        h = decoded.header
        again = encode_message(
            h.relay_domain,
            h.source,
            list(decoded.tlvs),
            sequence=h.sequence,
            timestamp=h.timestamp,
            checksum=h.checksum != 0,
        )
        assert again == msg


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(messages, garbage), max_size=8),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_same_frames_however_chunked(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    whole = flatten(run(Framer(), [stream]))
    assert flatten(run(Framer(), chunked(stream, cuts))) == whole
    assert flatten(run(Framer(), [bytes([b]) for b in stream])) == whole
    # every byte is accounted for, exactly once, in order
    assert sum(len(b) for _, _, b in whole) == len(stream)
    frames = [b for kind, _, b in whole if kind == "frame"]
    for part in parts:
        if part[:4] == b"\xef\xbe\xad\xde":
            assert part in frames


@settings(max_examples=100, deadline=None)
@given(st.lists(messages, min_size=1, max_size=8), st.lists(st.integers(0, 5000), max_size=8))
def test_valid_stream_yields_every_message_in_order(msgs: list[bytes], cuts: list[int]) -> None:
    events = run(Framer(), chunked(b"".join(msgs), cuts))
    assert [b for _, _, b in flatten(events)] == msgs
    assert all(isinstance(e, Frames) for e in events)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(8, 400),
    st.integers(0, 60),
    st.integers(0, 10_000),
    st.sampled_from([0, 1, 2, 3, 4, 24, 25, 26, 27, None]),
    st.integers(1, 255),
)
def test_runs_of_equal_size_messages_take_the_fast_path_exactly(
        count: int, size: int, where: int, offset: int | None, flip: int) -> None:
    """Long runs of same-size messages are checked a run at a time; one bad byte anywhere
    (magic, domain, declared size) must be found exactly as the slow path finds it."""
    msgs = [encode_message(1, 2, bytes([i % 256]) * size, sequence=i) for i in range(count)]
    stream = bytearray(b"".join(msgs))
    if offset is not None:
        stream[(where % count) * (32 + size) + offset] ^= flip
    data = bytes(stream)
    fast = flatten(run(Framer(domain=1), [data]))
    slow = flatten(run(Framer(domain=1), [bytes([b]) for b in data]))
    assert fast == slow
    if offset is None:
        assert [b for _, _, b in fast] == msgs


@settings(max_examples=200, deadline=None)
@given(st.integers(8, 300), st.integers(0, 40), st.integers(0, 10_000), st.booleans(),
       st.integers(1, 255))
def test_checksummed_runs_verified_in_bulk_exactly(count: int, size: int, where: int,
                                                  flip_any: bool, flip: int) -> None:
    """With verification on, a run of equal-size checksummed messages with one byte
    flipped (anywhere, or nowhere) gives the same events as byte-at-a-time feeding."""
    msgs = [encode_message(1, 2, bytes([i % 256]) * size, sequence=i, checksum=True)
            for i in range(count)]
    stream = bytearray(b"".join(msgs))
    if flip_any:
        stream[where % len(stream)] ^= flip
    data = bytes(stream)
    fast = flatten(run(Framer(domain=1, verify_checksum=True), [data]))
    slow = flatten(run(Framer(domain=1, verify_checksum=True), [bytes([b]) for b in data]))
    assert fast == slow
    if not flip_any:
        assert [b for _, _, b in fast] == msgs


def test_coalesced_messages_form_one_run() -> None:
    f = Framer()
    (ev,) = f.feed(V["V1"] + V["V2"] + V["V3"])
    assert isinstance(ev, Frames) and ev.count == 3 and ev.offset == 0
    assert list(split_frames(ev.data)) == [V["V1"], V["V2"], V["V3"]]


def test_split_message_is_held_until_complete() -> None:
    f = Framer()
    assert f.feed(V["V5"][:100]) == []
    assert f.buffered == 100 and f.pending == V["V5"][:100]
    (ev,) = f.feed(V["V5"][100:])
    assert isinstance(ev, Frames) and ev.data == V["V5"]


def test_garbage_is_skipped_counted_and_resynchronised() -> None:
    f = Framer()
    events = f.feed(b"hello world" + V["V2"] + b"\x00\x01" + V["V3"])
    assert [type(e) for e in events] == [Skipped, Frames, Skipped, Frames]
    skip = events[0]
    assert isinstance(skip, Skipped) and isinstance(skip.error, BadMagic)
    assert (skip.offset, skip.length) == (0, 11)
    assert skip.error.actual == "68 65 6c 6c"
    assert f.skipped_bytes == 13 and f.resyncs == 2 and f.frames == 2


def test_oversize_header_is_skipped_not_buffered() -> None:
    f = Framer(max_message=1024)
    big = encode_message(1, 2, b"\x01\x00" * 1000)
    events = f.feed(big[:64])
    assert isinstance(events[0], Skipped) and isinstance(events[0].error, Oversize)
    assert f.buffered < 32


def test_buffer_is_bounded_by_max_message() -> None:
    f = Framer(max_message=4096)
    msg = encode_message(1, 2, [Tlv(200, b"z" * 4000)])
    head = msg[:-1]
    for i in range(0, len(head), 7):
        assert f.feed(head[i : i + 7]) == []
        assert f.buffered < 4096
    (ev,) = f.feed(msg[-1:])
    assert isinstance(ev, Frames) and ev.data == msg and f.buffered == 0


def test_wrong_domain_is_rejected_whole() -> None:
    f = Framer(domain=1)
    events = f.feed(V["V4"] + V["V1"])
    assert isinstance(events[0], Rejected) and isinstance(events[0].error, WrongDomain)
    assert events[0].data == V["V4"] and events[0].error.offset == 4
    assert isinstance(events[1], Frames) and events[1].data == V["V1"]
    assert f.rejected == 1


def test_checksum_verified_only_when_asked_and_zero_is_absent() -> None:
    bad = bytearray(V["V1"])
    bad[50] ^= 1
    assert isinstance(Framer().feed(bytes(bad))[0], Frames)
    events = Framer(verify_checksum=True).feed(bytes(bad) + V["V2"])
    assert isinstance(events[0], Rejected) and isinstance(events[0].error, ChecksumMismatch)
    assert isinstance(events[1], Frames) and events[1].data == V["V2"]


def test_truncated_at_eof() -> None:
    f = Framer()
    assert f.feed(V["V1"][:50]) == []
    (ev,) = f.feed_eof()
    assert isinstance(ev, Skipped) and isinstance(ev.error, TruncatedMessage)
    assert ev.length == 50 and "74 bytes" in str(ev.error)
