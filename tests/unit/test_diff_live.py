"""The shadow matcher (pure): expected vs delivered, lag bound on an injected clock, bounds."""

from __future__ import annotations

from swapctl.diff import Category
from swapctl.diff.live import LiveMatcher
from swapctl.diff.tokens import GARBAGE, Cutter, Gap
from swapctl.protocol import encode_message
from swapctl.protocol.tlv import Trade

MSGS = [encode_message(1, 2, [Trade(i, i, 1, 0, 1, 1).to_tlv()], sequence=i)
        for i in range(1, 11)]


def test_in_order_delivery_matches_everything() -> None:
    m = LiveMatcher()
    m.expect(MSGS[:5], now=0.0)
    m.observe(MSGS[:3])
    m.expect(MSGS[5:], now=1.0)
    m.observe(MSGS[3:])
    m.finish()
    assert m.matched == 10 and not m.counts and m.pending == 0
    assert m.comparison(0).equivalent


def test_skipped_frames_are_missing_and_unknown_ones_extra() -> None:
    m = LiveMatcher()
    m.expect(MSGS, now=0.0)
    m.observe([MSGS[0], MSGS[3], b"\xef\xbe\xad\xde" + bytes(28)])
    assert m.counts == {Category.MISSING: 2, Category.EXTRA: 1}
    missing = [d for d in m.differences if d.category is Category.MISSING]
    assert [d.old.frame for d in missing if d.old] == [1, 2]
    extra = next(d for d in m.differences if d.category is Category.EXTRA)
    assert extra.new is not None and extra.new.frame == 2 and extra.new.offset == 148


def test_the_lag_bound_runs_on_the_injected_clock() -> None:
    m = LiveMatcher()
    m.expect(MSGS[:2], now=10.0)
    m.expect(MSGS[2:4], now=11.0)
    m.expire(before=10.5)
    assert m.counts == {Category.MISSING: 2} and m.pending == 2
    m.observe(MSGS[2:4])
    assert m.matched == 2 and m.pending == 0


def test_gaps_and_undecodable_frames_are_framing() -> None:
    m = LiveMatcher()
    m.expect([Gap(GARBAGE, b"ping\n"), MSGS[0]], now=0.0)
    m.observe([MSGS[0]])
    assert m.counts == {Category.FRAMING: 1}
    broken = MSGS[1][:32] + b"\x01\x50" + MSGS[1][34:]
    m.observe([broken])
    assert m.counts == {Category.FRAMING: 2}


def test_window_and_drops_are_suppressed_and_counted() -> None:
    m = LiveMatcher(window=3)
    m.expect(MSGS[:5], now=0.0)
    assert m.overflow == 2 and m.pending == 3
    m.skip_live(MSGS[5:7])
    m.expect(MSGS[7:], now=0.0)
    m.observe(MSGS[7:])
    cmp = m.comparison(dropped_frames=2)
    whats = {s.what: s.count for s in cmp.suppressed}
    assert whats["live frames not mirrored (the candidate's queue was full)"] == 2
    assert whats["expected frames dropped unjudged (matching window full)"] == 5
    assert cmp.clients[0].old_frames == 10


def test_cutter_gives_whole_frames_whatever_the_reads() -> None:
    stream = b"".join(MSGS) + b"junk" + MSGS[0]
    cutter = Cutter()
    tokens = []
    for k in range(0, len(stream), 13):
        for piece, toks in cutter.feed(stream[k : k + 13]):
            assert piece == b"".join(t.data if isinstance(t, Gap) else t for t in toks)
            tokens += toks
    frames = [t for t in tokens if not isinstance(t, Gap)]
    assert frames == [*MSGS, MSGS[0]]
    assert b"".join(t.data for t in tokens if isinstance(t, Gap)) == b"junk"
