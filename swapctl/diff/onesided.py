"""One relay delivered nothing more: every further token of the other is unmatched.

How it works: when one client's stream is the other's up to a frame boundary (a sink
that received nothing, or a relay that stopped delivering), the aligned comparison
would cut the rest into tokens only to find each one missing (or extra). Here the rest
is read a framer run at a time instead: a run of same-size frames that each hold one
TLV filling the payload (strided slices over the run's bytes) is counted whole; gaps
and other runs are judged token by token as align.py does. Only the first
`max_listed` tokens are cut out and materialized. The result is the aligned path's,
in every mode (tests/unit/test_diff_missing.py checks it); no per-publisher
interleaving can arise, since one side has nothing to interleave.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from swapctl.diff.align import Category, Difference, Found, lone_tlvs, materialize, one_side
from swapctl.diff.tokens import Framed, Gap, Token, cut, iter_pieces, prefix, uniform_size

_SOURCE_BYTE = 6


def judge_rest(name: str, old: bytes, new: bytes, per_publisher: bool, max_listed: int
               ) -> Found | None:
    """What differs when one stream is the other's prefix up to a frame boundary, else
    None (then the streams need aligning)."""
    extra = len(old) < len(new)
    short, long = (old, new) if extra else (new, old)
    if len(short) == len(long) or not long.startswith(short):
        return None
    start, before = prefix(long, len(short))
    if start != len(short):
        return None
    category = Category.EXTRA if extra else Category.MISSING
    counts: Counter[Category] = Counter()
    listed: list[tuple[int, Token, Category]] = []  # the rest's first tokens, judged
    window = frames = gap_bytes = 0
    offsets: Sequence[int]
    tokens: Sequence[Token]
    for at, piece in iter_pieces(long, start):
        if isinstance(piece, Gap):
            offsets, tokens = [at], [piece]
        else:
            size = uniform_size(piece)
            if size and lone_tlvs(piece, size):  # the usual run: counted whole
                count = len(piece) // size
                counts[category] += count
                window, frames = window + count, frames + count
                if len(listed) < max_listed:
                    offsets, tokens = cut(piece, at)
                    listed += [(o, t, category) for o, t in zip(offsets, tokens, strict=True)]
                    del listed[max_listed:]
                continue
            offsets, tokens = cut(piece, at)
        for offset, tok in zip(offsets, tokens, strict=True):
            judged = one_side(tok, category)
            counts[judged] += 1
            window += 1
            if isinstance(tok, Gap):
                gap_bytes += len(tok.data)
            else:
                frames += 1
            listed.append((offset, tok, judged))
        del listed[max_listed:]
    rest = Framed([t for _, t, _ in listed], [o for o, _, _ in listed], before + frames,
                  gap_bytes, before)
    nothing = Framed([], [], before, 0, before)
    diffs = [_difference(name, rest, nothing, pos, cat, extra=extra, lanes=per_publisher)
             for pos, (_, _, cat) in enumerate(listed)]
    if extra:
        return Found(before, before + frames, 0, window, counts, diffs)
    return Found(before + frames, before, window, 0, counts, diffs)


def _difference(name: str, rest: Framed, nothing: Framed, pos: int, category: Category, *,
                extra: bool, lanes: bool) -> Difference:
    """The Difference the aligned path gives for the rest's token `pos` (in per-publisher
    mode, on its publisher's lane or the gaps')."""
    tok = rest.tokens[pos]
    lane = ""
    if lanes:
        lane = "gaps" if isinstance(tok, Gap) else f"source {tok[_SOURCE_BYTE]}"
    if extra:
        return materialize(name, nothing, rest, (category, -1, pos), lane)
    return materialize(name, rest, nothing, (category, pos, -1), lane)
