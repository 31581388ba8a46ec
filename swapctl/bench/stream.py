"""The benchmarks' traffic: prebuilt 74-byte Trade messages, and checking what arrived.

How it works: every data message is the same 74-byte template (domain 1, source 2,
one Trade TLV, checksum 0) with its own sequence (`first`, `first + 1`, ...). The
publisher builds the whole stream before its timed window, 885 messages per
`struct.pack` call. A run ends with an END message (sequence 0, one vendor TLV
holding the number of data messages sent), which travels through the relay like any
message. Because the stream is deterministic, a consumer checks exactness by
comparing what it receives with its own copy of the stream (`StreamCheck`, one
memcmp per read) and only parses messages one by one (`Classifier`) after the first
difference, or when it needs each message anyway (latency: `Reassembler`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from swapctl.protocol import HEADER_SIZE, MAGIC, Tlv, Trade, encode_message

DOMAIN = 1
SOURCE = 2
END_TLV = 200  # vendor range: "bench end of stream", value = u64 data messages sent
_TRADE = Trade(asset_id=7, price=6_500_000_000_000, volume=100_000_000, exec_ts_ns=0,
               venue=1, asset_type=1)
TEMPLATE = encode_message(DOMAIN, SOURCE, [_TRADE.to_tlv()])
MESSAGE_SIZE = len(TEMPLATE)  # 74
PAYLOAD = TEMPLATE[HEADER_SIZE:]
SEQ_OFFSET = 8
TS_OFFSET = 16
_PER_PACK = 885  # messages per struct call: 885 * 74 = 65,490 bytes
_BATCH = struct.Struct("<" + "8sQ58s" * _PER_PACK)
_PEEK = struct.Struct("<I4xQQI")  # magic, sequence, timestamp, payload_size
_U64 = struct.Struct("<Q")


def build_stream(first: int, count: int, timestamp: int = 0) -> bytearray:
    """`count` data messages with sequences first..first+count-1, back to back."""
    head = TEMPLATE[:SEQ_OFFSET]
    tail = _U64.pack(timestamp) + TEMPLATE[TS_OFFSET + 8 :]
    out = bytearray(count * MESSAGE_SIZE)
    args: list[bytes | int] = [head, 0, tail] * _PER_PACK
    full, rest = divmod(count, _PER_PACK)
    step = _PER_PACK * MESSAGE_SIZE
    for batch in range(full):
        start = first + batch * _PER_PACK
        args[1::3] = range(start, start + _PER_PACK)
        _BATCH.pack_into(out, batch * step, *args)
    if rest:
        start = first + full * _PER_PACK
        args = args[: 3 * rest]
        args[1::3] = range(start, start + rest)
        struct.Struct("<" + "8sQ58s" * rest).pack_into(out, full * step, *args)
    return out


def end_message(sent: int) -> bytes:
    """The END message: sequence 0 and the number of data messages the publisher sent."""
    return encode_message(DOMAIN, SOURCE, [Tlv(END_TLV, _U64.pack(sent))])


def end_count(message: bytes) -> int | None:
    """The count in an END message, or None if `message` is not one."""
    if len(message) == HEADER_SIZE + 10 and message[HEADER_SIZE] == END_TLV:
        count: int = _U64.unpack_from(message, HEADER_SIZE + 2)[0]
        return count
    return None


@dataclass(slots=True)
class Classifier:
    """Checks messages one at a time: in order, lost (gaps), duplicated/reordered, corrupted."""

    first: int
    delivered: int = 0  # data messages intact and in order
    gaps: int = 0  # messages skipped over (a later sequence arrived first)
    duplicated: int = 0  # an already-seen or earlier sequence arrived again
    corrupted: int = 0  # wrong magic/size/payload, or garbage skipped
    end: int | None = None  # data messages sent, from the END message
    _next: int = field(init=False)

    def __post_init__(self) -> None:
        self._next = self.first

    def message(self, msg: bytes) -> int | None:
        """Classify one message; returns its timestamp if it is the next data message."""
        magic, seq, ts, size = _PEEK.unpack_from(msg)
        if magic != MAGIC or size != len(msg) - HEADER_SIZE:
            self.corrupted += 1
            return None
        if seq == 0:
            count = end_count(msg)
            if count is None:
                self.corrupted += 1
            self.end = count
            return None
        if msg[HEADER_SIZE:] != PAYLOAD or msg[:SEQ_OFFSET] != TEMPLATE[:SEQ_OFFSET]:
            self.corrupted += 1
            return None
        if seq < self._next:
            self.duplicated += 1
            return None
        self.gaps += seq - self._next
        self._next = seq + 1
        self.delivered += 1
        return int(ts)

    def assume_delivered(self, count: int) -> None:
        """The first `count` data messages arrived intact (checked by comparison)."""
        self.delivered += count
        self._next = self.first + count

    def skip(self) -> None:
        """Bytes that could not be framed (counted as one corruption per resync)."""
        self.corrupted += 1


class Reassembler:
    """Splits a byte stream into messages by `payload_size`, resyncing on the magic."""

    def __init__(self, classifier: Classifier, carry: bytes = b"") -> None:
        self.classifier = classifier
        self._carry = carry

    def feed(self, data: bytes) -> Iterator[bytes]:
        buf = self._carry + data if self._carry else data
        pos, n = 0, len(buf)
        magic_bytes = TEMPLATE[:4]
        while n - pos >= HEADER_SIZE:
            magic, _, _, size = _PEEK.unpack_from(buf, pos)
            if magic != MAGIC or size > 1_048_576:
                nxt = buf.find(magic_bytes, pos + 1)
                self.classifier.skip()
                pos = nxt if nxt >= 0 else n
                continue
            end = pos + HEADER_SIZE + size
            if end > n:
                break
            yield buf[pos:end]
            pos = end
        self._carry = buf[pos:]


class StreamCheck:
    """Compares received bytes with the expected stream; parses only after a difference."""

    def __init__(self, expected: bytes | bytearray, first: int) -> None:
        self.expected = expected
        self.classifier = Classifier(first)
        self._pos = 0  # bytes matched so far (fast path)
        self._slow: Reassembler | None = None

    def feed(self, data: bytes) -> None:
        if self._slow is None:
            pos = self._pos
            if self.expected[pos : pos + len(data)] == data:
                self._pos = pos + len(data)
                return
            self._go_slow()
        assert self._slow is not None
        for msg in self._slow.feed(data):
            self.classifier.message(msg)

    def _go_slow(self) -> None:
        """Hand over to the parser: the matched whole messages count as delivered."""
        whole, partial = divmod(self._pos, MESSAGE_SIZE)
        self.classifier.assume_delivered(whole)
        start = whole * MESSAGE_SIZE
        carry = bytes(self.expected[start : start + partial])
        self._slow = Reassembler(self.classifier, carry)

    @property
    def done(self) -> bool:
        return self.classifier.end is not None

    @property
    def delivered(self) -> int:
        if self._slow is None:
            return self._pos // MESSAGE_SIZE
        return self.classifier.delivered
