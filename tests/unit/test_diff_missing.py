"""Every frame missing (a sink that received nothing): the batched judging of one-sided runs
must report exactly what judging each frame would, counts, positions and explanations."""

from __future__ import annotations

from collections import Counter
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from swapctl.diff import Category, Mode, Stream, compare, frame_stream
from swapctl.diff.align import one_side
from swapctl.diff.compare import compare_client
from swapctl.diff.explain import explain, headline
from swapctl.diff.tokens import Gap
from swapctl.protocol import encode_message
from swapctl.protocol.tlv import Trade


def msg(seq: int, vendor: int = 0) -> bytes:
    payload = Trade(seq, seq * 100, 1, 0, 1, 1).to_tlv().encode()
    if vendor:
        payload += bytes([200, vendor]) + bytes(vendor)  # a second TLV: not the batched case
    return encode_message(1, 2, payload, sequence=seq)


def broken(seq: int) -> bytes:
    m = msg(seq)
    return m[:32] + b"\x01\x50" + m[34:]  # the TLV claims 80 bytes, the payload has 40


def naive(raw: bytes, category: Category) -> Counter[Category]:
    """Each token judged on its own, as before the batching."""
    return Counter(one_side(t, category) for t in frame_stream(raw).tokens)


def test_every_frame_missing_counts_and_explains_each_frame() -> None:
    frames = [msg(i) for i in range(1, 11)]
    result = compare({"c": Stream(b"".join(frames))}, {"c": Stream(b"")}, max_listed=3)
    client = result.clients[0]
    assert dict(client.counts) == {Category.MISSING: 10}
    assert (client.old_frames, client.new_frames, result.frames_compared) == (10, 0, 10)
    assert [(d.old.frame, d.old.offset, d.old.data) for d in client.differences if d.old] == \
        [(0, 0, frames[0]), (1, 74, frames[1]), (2, 148, frames[2])]
    assert all(d.new is None for d in client.differences)
    assert headline(client.differences[1]) == (
        "client c: missing (old frame 1 at byte 74): delivered by the old relay, not by the new")
    lines = explain(client.differences[0]).splitlines()
    assert lines[1].startswith("  old: domain 1 v") and "seq 1 " in lines[1]
    assert lines[2] == "  new: (nothing here)"


def test_a_mixed_sink_run_is_judged_frame_by_frame() -> None:
    parts = [msg(1), msg(2), msg(3, vendor=5), broken(4), b"junk!", msg(5), msg(6)[:40]]
    raw = b"".join(parts)
    result = compare({"c": Stream(raw)}, {"c": Stream(b"")})
    client = result.clients[0]
    assert dict(client.counts) == {Category.MISSING: 4, Category.FRAMING: 3}
    assert Counter(dict(client.counts)) == naive(raw, Category.MISSING)
    kinds = [(d.category, d.old.frame, d.old.gap) for d in client.differences if d.old]
    assert kinds == [(Category.MISSING, 0, None), (Category.MISSING, 1, None),
                     (Category.MISSING, 2, None), (Category.FRAMING, 3, None),
                     (Category.FRAMING, 4, "garbage"), (Category.MISSING, 4, None),
                     (Category.FRAMING, 5, "partial")]
    assert "frame does not decode" in client.differences[3].detail


def test_a_long_sink_run_past_the_align_limit_matches_the_naive_count() -> None:
    frames = [msg(i) for i in range(1, 25_001)]
    frames[12_345] = broken(12_346)
    raw = b"".join(frames)
    result = compare({"c": Stream(raw)}, {"c": Stream(b"")}, max_listed=100_000)
    client = result.clients[0]
    assert dict(client.counts) == {Category.MISSING: 24_999, Category.FRAMING: 1}
    assert Counter(dict(client.counts)) == naive(raw, Category.MISSING)
    framing = [d for d in client.differences if d.category is Category.FRAMING]
    assert [(d.old.frame, d.old.offset) for d in framing if d.old] == [(12_345, 12_345 * 74)]
    assert len(client.differences) == 25_000


def test_every_frame_extra_is_the_mirror_image() -> None:
    raw = b"".join([msg(1), msg(2, vendor=3), b"xy" + bytes(3), msg(3)])
    result = compare({"c": Stream(b"")}, {"c": Stream(raw)})
    client = result.clients[0]
    assert dict(client.counts) == {Category.EXTRA: 3, Category.FRAMING: 1}
    assert Counter(dict(client.counts)) == naive(raw, Category.EXTRA)
    gaps = [d.new for d in client.differences if d.new and d.new.gap]
    assert len(gaps) == 1 and isinstance(frame_stream(raw).tokens[2], Gap)


_parts = st.lists(st.sampled_from(["msg", "vendor", "broken", "junk", "source"]), max_size=40)


@settings(max_examples=150, deadline=None)
@given(_parts, st.integers(0, 40), st.booleans(), st.sampled_from(list(Mode)),
       st.booleans(), st.booleans(), st.integers(1, 8), st.sampled_from([b"", b"\x00" * 9]))
def test_a_relay_that_stops_delivering_reads_as_the_aligned_comparison(  # noqa: PLR0917
        parts: list[str], stop: int, old_stops: bool, mode: Mode, old_eof: bool,
        new_eof: bool, listed: int, tail: bytes) -> None:
    """The run-at-a-time path (one stream is the other's prefix at a frame boundary)
    against aligning both streams' tokens: the same result in every mode."""
    make = {"msg": msg, "vendor": lambda i: msg(i, vendor=i % 7 + 1), "broken": broken,
            "junk": lambda _: b"junk!", "source": lambda i: encode_message(
                1, i % 3, Trade(i, i, 1, 0, 1, 1).to_tlv().encode(), sequence=i)}
    tokens = [make[p](i) for i, p in enumerate(parts, 1)]
    full = b"".join(tokens) + tail
    cut = b"".join(tokens[: min(stop, len(tokens))])
    old, new = (cut, full) if old_stops else (full, cut)
    streams = (Stream(old, old_eof), Stream(new, new_eof))
    fast, _ = compare_client("c", *streams, mode, listed)
    with patch("swapctl.diff.compare.judge_rest", return_value=None):
        aligned, _ = compare_client("c", *streams, mode, listed)
    assert fast == aligned
