"""Explaining a difference to an operator: where, what each side had, and the bytes.

Each explanation names the client, the category, the frame index and byte offset on
each side, the decoded header and TLVs old vs new, and a side-by-side hex dump around
the first differing byte (differing bytes marked with `^`).
"""

from __future__ import annotations

from swapctl.diff.align import Category, Difference, Item
from swapctl.protocol import (
    HEADER_SIZE,
    MalformedFrame,
    Quote,
    Trade,
    decode_tlvs,
    unpack_header,
)

HEX_WIDTH = 16
HEX_LINES = 8
_NAMES = {1: "Trade", 2: "Quote", 3: "OrderBook", 18: "GasPrice", 32: "ArbitrageSignal",
          100: "Heartbeat", 107: "SystemHealth", 108: "TraceContext"}


def headline(diff: Difference) -> str:
    """One line: client, category, and where on each side."""
    where = []
    if diff.old is not None:
        where.append(f"old {_where(diff.old)}")
    if diff.new is not None:
        where.append(f"new {_where(diff.new)}")
    lane = f" [{diff.lane}]" if diff.lane else ""
    at = f" ({'; '.join(where)})" if where else ""
    return f"client {diff.client}{lane}: {diff.category.value}{at}: {diff.detail}"


def _where(item: Item) -> str:
    what = f"{item.gap} bytes before frame {item.frame}" if item.gap else f"frame {item.frame}"
    return f"{what} at byte {item.offset}"


def explain(diff: Difference) -> str:
    """Several lines: headline, both sides decoded, and the bytes side by side."""
    lines = [headline(diff)]
    if diff.category is Category.DISCONNECT:
        return lines[0]
    lines.append(f"  old: {describe(diff.old)}")
    lines.append(f"  new: {describe(diff.new)}")
    lines.extend("  " + row for row in hex_side_by_side(
        diff.old.data if diff.old else b"", diff.new.data if diff.new else b""))
    return "\n".join(lines)


def describe(item: Item | None) -> str:
    """The decoded header and TLVs of a frame, or what a gap looks like."""
    if item is None:
        return "(nothing here)"
    if item.gap is not None:
        return f"{len(item.data)} {item.gap} bytes: {_printable(item.data[:48])}"
    return describe_frame(item.data)


def describe_frame(frame: bytes) -> str:
    try:
        h = unpack_header(frame)
    except MalformedFrame as exc:
        return f"{len(frame)} bytes, not a header: {exc}"
    head = (f"domain {h.relay_domain} v{h.version} source {h.source} flags {h.flags} "
            f"seq {h.sequence} ts {h.timestamp} payload {h.payload_size} "
            f"crc 0x{h.checksum:08X}")
    try:
        tlvs = decode_tlvs(frame[HEADER_SIZE:], base_offset=HEADER_SIZE)
    except MalformedFrame as exc:
        return f"{head}; TLVs do not decode: {exc}"
    parts = [_tlv(t.type, t.value, t.extended) for t in tlvs]
    return f"{head}; TLVs: {', '.join(parts) if parts else 'none'}"


def _tlv(kind: int, value: bytes, extended: bool) -> str:
    name = _NAMES.get(kind, "vendor" if kind >= 200 else "type")
    text = f"{name}({kind}, {len(value)} bytes{', extended' if extended else ''}"
    try:
        if kind == Trade.TLV_TYPE and len(value) == Trade.LAYOUT.size:
            t = Trade.from_value(value)
            text += f": asset {t.asset_id} price {t.price} volume {t.volume} side {t.side}"
        elif kind == Quote.TLV_TYPE and len(value) == Quote.LAYOUT.size:
            q = Quote.from_value(value)
            text += f": asset {q.asset_id} bid {q.bid_price} ask {q.ask_price}"
    except MalformedFrame:
        pass
    return text + ")"


def _printable(data: bytes) -> str:
    return repr(data)[2:-1] if data else "(empty)"


def hex_side_by_side(old: bytes, new: bytes) -> list[str]:
    """Hex rows `offset  old | new`, starting at the row of the first differing byte."""
    first = next((k for k, (x, y) in enumerate(zip(old, new, strict=False)) if x != y),
                 min(len(old), len(new)))
    start = max(0, (first // HEX_WIDTH - 1) * HEX_WIDTH)
    end = min(max(len(old), len(new)), start + HEX_WIDTH * HEX_LINES)
    rows = [f"{'offset':<6}  {'old':<{HEX_WIDTH * 3 - 1}} | new"]
    for at in range(start, end, HEX_WIDTH):
        a, b = old[at : at + HEX_WIDTH], new[at : at + HEX_WIDTH]
        rows.append(f"{at:06x}  {_hex(a):<{HEX_WIDTH * 3 - 1}} | {_hex(b)}".rstrip())
        marks = "".join(
            " ^ " if k >= len(a) or k >= len(b) or a[k] != b[k] else "   "
            for k in range(max(len(a), len(b)))
        )
        if old and new and marks.strip():
            left = _marks(marks, len(a))
            rows.append(f"{'':6}  {left:<{HEX_WIDTH * 3 - 1}} | {_marks(marks, len(b))}".rstrip())
    if end < max(len(old), len(new)):
        rows.append(f"... {max(len(old), len(new)) - end} more bytes")
    return rows


def _hex(data: bytes) -> str:
    return data.hex(" ")


def _marks(marks: str, width: int) -> str:
    return "".join("^^ " if marks[3 * k + 1] == "^" else "   " for k in range(width)).rstrip()
