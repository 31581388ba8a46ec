"""Aligning two token sequences and naming what differs.

How it works: the common prefix and suffix are trimmed by comparing slices (C speed);
the differing middle is aligned with difflib (no junk heuristic), or, past
`ALIGN_LIMIT` tokens a side, by counting (a multiset difference keeps it linear).
Unmatched tokens become differences: a frame only the old side delivered is
*missing*, one only the new side delivered is *extra*, the same message with other
bytes is *altered*, a frame found on both sides at different places is *reordered*,
and gaps or frames that do not decode as Protocol V2 are *framing*. A run of unmatched
tokens is judged at once when it is all same-size one-TLV frames (a relay that
delivered nothing leaves a million of them), and its entries stay cheap tuples.
"""

from __future__ import annotations

import enum
from collections import Counter, defaultdict, deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from itertools import repeat
from operator import itemgetter
from typing import cast

from swapctl.diff.tokens import Framed, Gap, Token
from swapctl.protocol import MalformedFrame, decode_message

ALIGN_LIMIT = 20_000
_PREFIX_BLOCK = 4096
_IDENTITY = 24  # header bytes that name a message: magic .. timestamp
_HEADER = 32

Op = tuple[str, int, int, int, int]


class Category(enum.Enum):
    MISSING = "missing"
    EXTRA = "extra"
    REORDERED = "reordered"
    ALTERED = "altered"
    FRAMING = "framing"
    DISCONNECT = "disconnect"


@dataclass(frozen=True, slots=True)
class Item:
    """One side of a difference: a frame or a gap, where it sits in the client's stream."""

    frame: int  # frames before it in the stream: the operator's "frame N"
    offset: int  # byte offset in the client's stream
    data: bytes
    gap: str | None = None  # the kind of gap, or None for a frame


@dataclass(frozen=True, slots=True)
class Difference:
    client: str
    category: Category
    old: Item | None
    new: Item | None
    detail: str = ""
    position: int = 0  # token position, for ordering
    lane: str = ""


@dataclass(frozen=True, slots=True)
class Lane:
    """The token positions compared against each other (all, or one publisher's)."""

    name: str
    old: Sequence[int]
    new: Sequence[int]


@dataclass(slots=True)
class Found:
    """What comparing one client's streams found (a disconnect is added by the caller)."""

    old_frames: int
    new_frames: int
    old_window: int  # tokens in each side's window: where a disconnect is placed
    new_window: int
    counts: Counter[Category]
    differences: list[Difference]


# An unmatched position before it becomes a Difference: (category, old pos, new pos),
# -1 for no position; positions index the windows' tokens.
Entry = tuple[Category, int, int]


def align_lane(a: Framed, b: Framed, lane: Lane, strict: bool,
               pairs: list[tuple[int, int]] | None) -> list[Entry]:
    """What differs between `a` and `b` on `lane`, in stream order (cheap tuples: a
    million missing frames must not cost a million explanations)."""
    ka = _keys(a, lane.old, strict)
    kb = _keys(b, lane.new, strict)
    out: list[Entry] = []
    extras = False
    for tag, i1, i2, j1, j2 in opcodes(ka, kb):
        if tag == "equal":
            if pairs is not None:
                pairs.extend(zip(lane.old[i1:i2], lane.new[j1:j2], strict=True))
            continue
        k = 0
        while i1 + k < i2 and j1 + k < j2 and _altered(a.tokens[lane.old[i1 + k]],
                                                       b.tokens[lane.new[j1 + k]]):
            out.append((Category.ALTERED, lane.old[i1 + k], lane.new[j1 + k]))
            k += 1
        missing = lane.old[i1 + k : i2]
        out.extend(zip(_one_sided(a.tokens, missing, Category.MISSING), missing,
                       repeat(-1)))
        extra = lane.new[j1 + k : j2]
        out.extend(zip(_one_sided(b.tokens, extra, Category.EXTRA), repeat(-1), extra))
        extras = extras or bool(extra)
    return _pair_reorders(a, b, out) if extras else out


def _altered(x: Token, y: Token) -> bool:
    """The same message (length and header bytes 0-23) with other bytes."""
    return (not isinstance(x, Gap) and not isinstance(y, Gap) and len(x) == len(y)
            and x[:_IDENTITY] == y[:_IDENTITY])


def one_side(tok: Token, category: Category) -> Category:
    if isinstance(tok, Gap) or not tlvs_ok(tok):
        return Category.FRAMING
    return category


def _one_sided(tokens: Sequence[Token], positions: Sequence[int], category: Category
               ) -> Iterable[Category]:
    """`one_side` for each token at `positions`: a run of frames that are all clean
    is judged at once (`_one_tlv_each`), else each token is."""
    if isinstance(positions, range) and positions.step == 1:
        run = tokens[positions.start : positions.stop]
    else:
        run = [tokens[p] for p in positions]
    if _one_tlv_each(run):
        return repeat(category, len(run))
    return map(one_side, run, repeat(category))


def _one_tlv_each(run: Sequence[Token]) -> bool:
    """True if every token is a frame of one size whose payload is one TLV that fills it
    exactly (which `tlvs_ok` accepts), checked a pass at a time at C speed."""
    if not run:
        return True
    if set(map(type, run)) != {bytes}:
        return False
    frames = cast("Sequence[bytes]", run)
    sizes = set(map(len, frames))
    size = sizes.pop()
    length = size - _HEADER - 2  # what a lone TLV's length byte must say
    if sizes or not 0 <= length <= 0xFF:
        return False
    return (set(map(itemgetter(_HEADER + 1), frames)) == {length}
            and 0xFF not in set(map(itemgetter(_HEADER), frames)))  # 0xFF: an extended TLV


def lone_tlvs(data: bytes, size: int) -> bool:
    """`_one_tlv_each` for a run of `size`-byte messages back to back, read with strided
    slices of its bytes."""
    length = size - _HEADER - 2
    count = len(data) // size
    return (0 <= length <= 0xFF and data[_HEADER + 1 :: size] == bytes([length]) * count
            and 0xFF not in data[_HEADER::size])


def _pair_reorders(a: Framed, b: Framed, entries: list[Entry]) -> list[Entry]:
    """A frame missing at one place and extra at another is one reordered frame."""
    extras: defaultdict[Token, deque[int]] = defaultdict(deque)
    for index, (cat, _, pb) in enumerate(entries):
        if cat is Category.EXTRA:
            extras[b.tokens[pb]].append(index)
    if not extras:
        return entries
    dropped: set[int] = set()
    for index, (cat, pa, _) in enumerate(entries):
        if cat is Category.MISSING:
            queue = extras.get(a.tokens[pa])
            if queue:
                match = queue.popleft()
                entries[index] = (Category.REORDERED, pa, entries[match][2])
                dropped.add(match)
    return [e for i, e in enumerate(entries) if i not in dropped]


def tlvs_ok(frame: bytes) -> bool:
    """True if the payload is a clean sequence of TLVs (the common one-TLV case is quick)."""
    pos, end = _HEADER, len(frame)
    while pos < end:
        if frame[pos] == 0xFF:
            if end - pos < 5 or frame[pos + 1] != 0:
                return False
            pos += 5 + int.from_bytes(frame[pos + 3 : pos + 5], "little")
        else:
            if end - pos < 2:
                return False
            pos += 2 + frame[pos + 1]
    return pos == end


def opcodes(a: Sequence[Hashable], b: Sequence[Hashable]) -> list[Op]:
    """difflib-style opcodes for `a` -> `b` (equal prefix and suffix as one block each)."""
    p = _prefix(a, b)
    s = _suffix(a, b, p)
    la, lb = len(a), len(b)
    am, bm = a[p : la - s], b[p : lb - s]
    ops: list[Op] = [("equal", 0, p, 0, p)] if p else []
    if len(am) > ALIGN_LIMIT or len(bm) > ALIGN_LIMIT:
        ops += _by_counting(am, bm, p)
    elif am or bm:
        matcher = SequenceMatcher(None, am, bm, autojunk=False)
        ops += [(t, i1 + p, i2 + p, j1 + p, j2 + p)
                for t, i1, i2, j1, j2 in matcher.get_opcodes()]
    if s:
        ops.append(("equal", la - s, la, lb - s, lb))
    return ops


def _prefix(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i + _PREFIX_BLOCK <= n and a[i : i + _PREFIX_BLOCK] == b[i : i + _PREFIX_BLOCK]:
        i += _PREFIX_BLOCK
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _suffix(a: Sequence[Hashable], b: Sequence[Hashable], prefix: int) -> int:
    n = min(len(a), len(b)) - prefix
    la, lb = len(a), len(b)
    s = 0
    blk = _PREFIX_BLOCK
    while s + blk <= n and a[la - s - blk : la - s] == b[lb - s - blk : lb - s]:
        s += blk
    while s < n and a[la - s - 1] == b[lb - s - 1]:
        s += 1
    return s


def _by_counting(a: Sequence[Hashable], b: Sequence[Hashable], base: int) -> list[Op]:
    """Linear fallback: surplus tokens are deleted/inserted; common ones out of place move."""
    if not a or not b:
        return [("delete", base, base + len(a), base, base)] if a else \
               [("insert", base, base, base, base + len(b))]
    common = Counter(a) & Counter(b)
    kept_a = _keep(a, common)
    kept_b = _keep(b, common)
    kept_set_a, kept_set_b = set(kept_a), set(kept_b)
    deletes = [i for i in range(len(a)) if i not in kept_set_a]
    inserts = [j for j in range(len(b)) if j not in kept_set_b]
    for i, j in zip(kept_a, kept_b, strict=True):
        if a[i] != b[j]:  # same multiset, other order: a delete and an insert, paired later
            deletes.append(i)
            inserts.append(j)
    ops: list[Op] = [("delete", base + i, base + i + 1, base, base) for i in sorted(deletes)]
    ops += [("insert", base, base, base + j, base + j + 1) for j in sorted(inserts)]
    return ops


def _keep(items: Sequence[Hashable], common: Counter[Hashable]) -> list[int]:
    budget = Counter(common)
    kept = []
    for i, key in enumerate(items):
        if budget[key] > 0:
            budget[key] -= 1
            kept.append(i)
    return kept


def _keys(framed: Framed, positions: Sequence[int], strict: bool) -> Sequence[Hashable]:
    tokens = framed.tokens
    if not framed.gap_bytes and isinstance(positions, range) and len(positions) == len(tokens):
        return tokens
    return [_key(tokens[p], strict) for p in positions]


def _key(tok: Token, strict: bool) -> Hashable:
    return tok.key(strict) if isinstance(tok, Gap) else tok


def materialize(client: str, a: Framed, b: Framed, entry: Entry, lane: str) -> Difference:
    """The full Difference for one entry: items, detail, lane."""
    cat, pa, pb = entry
    old = _item(a, pa) if pa >= 0 else None
    new = _item(b, pb) if pb >= 0 else None
    position = pa if pa >= 0 else pb
    return Difference(client, cat, old, new, _detail(cat, old, new), position, lane)


def _item(framed: Framed, pos: int) -> Item:
    tok = framed.tokens[pos]
    frame = framed.frame_index(pos)
    if isinstance(tok, Gap):
        return Item(frame, framed.offsets[pos], tok.data, tok.kind)
    return Item(frame, framed.offsets[pos], tok)


def _detail(cat: Category, old: Item | None, new: Item | None) -> str:
    if cat is Category.ALTERED and old is not None and new is not None:
        diff = [k for k, (x, y) in enumerate(zip(old.data, new.data, strict=True)) if x != y]
        return (f"same message (length and header bytes 0-23 equal), {len(diff)} byte(s) "
                f"differ, first at message byte {diff[0] if diff else '?'}")
    if cat is Category.REORDERED and old is not None and new is not None:
        return f"frame {old.frame} on the old side arrives as frame {new.frame} on the new side"
    item = old if old is not None else new
    assert item is not None
    other = "new" if old is not None else "old"
    if cat is Category.FRAMING and item.gap is not None:
        return f"{len(item.data)} {item.gap} byte(s) the {other} side did not deliver"
    if cat is Category.FRAMING:
        return f"frame does not decode: {decodes(item.data)}"
    if cat is Category.MISSING:
        return "delivered by the old relay, not by the new"
    return "delivered by the new relay, not by the old"


def decodes(frame: bytes) -> str | None:
    """None if `frame` is a well-formed Protocol V2 message, else what is wrong with it."""
    try:
        decode_message(frame, verify_checksum=False)
    except MalformedFrame as exc:
        return str(exc)
    return None
