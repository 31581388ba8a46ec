"""The pure diff engine: categories, positions, modes, and the fast window against a naive
full comparison."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from swapctl.diff import Category, Mode, Stream, compare
from swapctl.diff.align import Lane, align_lane
from swapctl.diff.tokens import GARBAGE, PARTIAL, Gap, frame_stream, iter_tokens, windows
from swapctl.protocol import encode_message
from swapctl.protocol.tlv import Trade
from tests.vectors import load_vectors

V = load_vectors()


def msg(seq: int, source: int = 2, size: int = 0) -> bytes:
    tlvs = [Trade(seq, seq * 100, 1, 0, 1, 1).to_tlv()]
    payload = b"".join(t.encode() for t in tlvs) + (bytes([200, size]) + bytes(size)
                                                    if size else b"")
    return encode_message(1, source, payload, sequence=seq)


MSGS = [msg(i) for i in range(1, 21)]
STREAM = b"".join(MSGS)


def one(old: bytes, new: bytes, mode: Mode = Mode.FRAMES, old_eof: bool = False,
        new_eof: bool = False):  # type: ignore[no-untyped-def]
    result = compare({"c": Stream(old, old_eof)}, {"c": Stream(new, new_eof)}, mode)
    return result, result.clients[0]


def test_identical_streams_are_equivalent_and_counted() -> None:
    result, client = one(STREAM, bytes(bytearray(STREAM)))
    assert result.equivalent and client.equivalent
    assert (client.old_frames, client.new_frames) == (20, 20)
    assert result.frames_compared == 20 and result.first is None


def test_missing_frame_names_index_and_offset() -> None:
    result, client = one(STREAM, b"".join(MSGS[:7] + MSGS[8:]))
    assert not result.equivalent
    assert dict(client.counts) == {Category.MISSING: 1}
    diff = client.differences[0]
    assert diff.old is not None and diff.new is None
    assert (diff.old.frame, diff.old.offset, diff.old.data) == (7, 7 * 74, MSGS[7])


def test_extra_frame() -> None:
    _, client = one(STREAM, b"".join([*MSGS[:3], msg(99), *MSGS[3:]]))
    assert dict(client.counts) == {Category.EXTRA: 1}
    assert client.differences[0].new is not None and client.differences[0].new.frame == 3


def test_reordered_frame_is_one_difference() -> None:
    _, client = one(STREAM, b"".join([*MSGS[:4], MSGS[5], MSGS[4], *MSGS[6:]]))
    assert dict(client.counts) == {Category.REORDERED: 1}
    diff = client.differences[0]
    assert diff.old is not None and diff.new is not None and diff.old.data == diff.new.data


def test_altered_bytes_keep_both_sides() -> None:
    bad = bytearray(MSGS[9])
    bad[-1] ^= 0xFF
    _, client = one(STREAM, b"".join(MSGS[:9]) + bytes(bad) + b"".join(MSGS[10:]))
    assert dict(client.counts) == {Category.ALTERED: 1}
    diff = client.differences[0]
    assert diff.old is not None and diff.new is not None
    assert diff.old.frame == diff.new.frame == 9
    assert "first at message byte 73" in diff.detail


def test_garbage_and_truncation_are_framing() -> None:
    _, client = one(STREAM, b"".join(MSGS[:2]) + b"ping\n" + b"".join(MSGS[2:]) + MSGS[0][:10])
    assert dict(client.counts) == {Category.FRAMING: 2}
    kinds = [d.new.gap for d in client.differences if d.new is not None]
    assert kinds == [GARBAGE, PARTIAL]
    assert client.differences[0].new is not None
    assert client.differences[0].new.offset == 2 * 74


def test_a_frame_that_does_not_decode_is_framing() -> None:
    broken = msg(50)[:32] + b"\x01\x50" + msg(50)[34:]  # TLV claims 80 bytes, has 40
    _, client = one(STREAM, b"".join(MSGS[:3]) + broken + b"".join(MSGS[3:]))
    cats = Counter(d.category for d in client.differences)
    assert cats[Category.FRAMING] == 1 and Category.EXTRA not in cats


def test_disconnect_is_its_own_category() -> None:
    result, client = one(STREAM, STREAM, new_eof=True)
    assert dict(client.counts) == {Category.DISCONNECT: 1}
    assert "new relay closed" in client.differences[0].detail
    assert not result.equivalent


def test_strict_mode_compares_garbage_bytes_too() -> None:
    old = MSGS[0] + b"abcd" + MSGS[1]
    new = MSGS[0] + b"abce" + MSGS[1]
    result, _ = one(old, new)
    assert result.equivalent  # a consumer skipped 4 bytes either way
    result, client = one(old, new, Mode.STRICT)
    assert dict(client.counts) == {Category.FRAMING: 2}
    assert client.first_byte_difference == 74 + 3


def test_per_publisher_mode_suppresses_interleaving_and_counts_it() -> None:
    a = [msg(i, source=1) for i in range(1, 6)]
    b = [msg(i, source=2) for i in range(10, 15)]
    old = b"".join(x for pair in zip(a, b, strict=True) for x in pair)
    new = b"".join(a + b)
    result, _ = one(old, new)
    assert not result.equivalent
    result, client = one(old, new, Mode.PER_PUBLISHER)
    assert result.equivalent and client.equivalent
    assert len(result.suppressed) == 1 and result.suppressed[0].count > 0
    assert "interleaved" in result.suppressed[0].what
    result, client = one(old, b"".join(a + b[:2] + b[3:]), Mode.PER_PUBLISHER)
    assert dict(client.counts) == {Category.MISSING: 1}
    assert client.differences[0].lane == "source 2"


def test_clients_missing_on_one_side_compare_against_nothing() -> None:
    result = compare({"a": Stream(STREAM)}, {"b": Stream(STREAM)})
    names = [c.client for c in result.clients]
    assert names == ["a", "b"]
    assert dict(result.clients[0].counts) == {Category.MISSING: 20}
    assert dict(result.clients[1].counts) == {Category.EXTRA: 20}


def test_listing_is_capped_but_counts_are_exact() -> None:
    result = compare({"c": Stream(STREAM)}, {"c": Stream(b"")}, max_listed=3)
    client = result.clients[0]
    assert dict(client.counts) == {Category.MISSING: 20}
    assert len(client.differences) == 3 and client.total == 20


def test_gaps_are_joined_whatever_the_feed_pieces() -> None:
    junk = b"\x00" * 150_000  # spans several 64 KiB pieces
    raw = MSGS[0] + junk + MSGS[1]
    tokens = [t for _, t in iter_tokens(raw)]
    assert tokens == [MSGS[0], Gap(GARBAGE, junk), MSGS[1]]
    tokens_late = [t for _, t in iter_tokens(b"x" * 70_000 + raw)]
    assert tokens_late[1:] == tokens


def _naive(old: bytes, new: bytes) -> Counter[Category]:
    a, b = frame_stream(old), frame_stream(new)
    lane = Lane("", range(len(a.tokens)), range(len(b.tokens)))
    return Counter(e[0] for e in align_lane(a, b, lane, False, None))


_edits = st.lists(st.tuples(st.sampled_from(["drop", "dup", "swap", "junk", "flip", "cut"]),
                            st.integers(0, 19)), max_size=4)


@settings(max_examples=150, deadline=None)
@given(_edits)
def test_window_comparison_agrees_with_a_full_one(edits: list[tuple[str, int]]) -> None:
    frames: list[bytes] = list(MSGS)
    for op, where in edits:
        if not frames:
            break
        at = where % len(frames)
        if op == "drop":
            del frames[at]
        elif op == "dup":
            frames.insert(at, frames[at])
        elif op == "swap" and at + 1 < len(frames):
            frames[at], frames[at + 1] = frames[at + 1], frames[at]
        elif op == "junk":
            frames.insert(at, b"junk!")
        elif op == "flip":
            frames[at] = frames[at][:-1] + bytes([frames[at][-1] ^ 1])
        elif op == "cut":
            frames[at] = frames[at][:40]
    new = b"".join(frames)
    _, client = one(STREAM, new)
    assert Counter(dict(client.counts)) == _naive(STREAM, new)
    wa, wb = windows(STREAM, new)
    assert wa.frames == 20 and wb.frames == frame_stream(new).frames
    assert client.equivalent == (new == STREAM)


def test_big_messages_and_vectors_frame_whole() -> None:
    stream = b"".join(V[k] for k in ("V1", "V2", "V3", "V4", "V5", "V6"))
    framed = frame_stream(stream)
    assert framed.tokens == [V[k] for k in ("V1", "V2", "V3", "V4", "V5", "V6")]
    assert framed.offsets[1] == 74 and framed.gap_bytes == 0
