"""Bulk traffic: prebuilt 74-byte Trade messages, and checking what arrived.

How it works: every data message is the same 74-byte template (domain 1, source 2,
one Trade TLV, checksum 0) with its own sequence, numbered from 1 as a
`PublisherTrack` numbers a publisher's messages. The publisher builds the whole
stream before its timed window, 885 messages per `struct.pack` call. A run ends with
an END message (sequence 0, one vendor TLV holding the number of data messages
sent), which travels through the relay like any message. Because the stream is
deterministic, a consumer checks exactness by comparing what it receives with its
own copy of the stream (`StreamCheck`, one memcmp per read); after the first
difference, or when it needs each message anyway (latency: `Reassembler`), it
parses messages one by one (`Classifier`). Lost, duplicated and reordered are the
load checker's own accounting (`probes/tracker.py` `PublisherTrack`): the prefix
the comparison matched is a run of in-order arrivals, then every intact data
message is one arrival and a damaged one (its bytes differ from the template) one
damaged arrival; END gives `sent`. Corrupted counts damaged messages and garbage
skipped to resynchronise, as the load checker counts corruption events.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from swapctl.probes.tracker import PublisherAudit, PublisherTrack
from swapctl.protocol import HEADER_SIZE, MAGIC, Tlv, Trade, encode_message

DOMAIN = 1
SOURCE = 2
FIRST = 1  # the first data message's sequence (PublisherTrack's numbering)
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


def build_stream(count: int, timestamp: int = 0) -> bytearray:
    """`count` data messages with sequences FIRST..FIRST+count-1, back to back."""
    head = TEMPLATE[:SEQ_OFFSET]
    tail = _U64.pack(timestamp) + TEMPLATE[TS_OFFSET + 8 :]
    out = bytearray(count * MESSAGE_SIZE)
    args: list[bytes | int] = [head, 0, tail] * _PER_PACK
    full, rest = divmod(count, _PER_PACK)
    step = _PER_PACK * MESSAGE_SIZE
    for batch in range(full):
        start = FIRST + batch * _PER_PACK
        args[1::3] = range(start, start + _PER_PACK)
        _BATCH.pack_into(out, batch * step, *args)
    if rest:
        start = FIRST + full * _PER_PACK
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
    """Parses messages one at a time; lost, duplicated and reordered are a PublisherTrack's."""

    track: PublisherTrack = field(default_factory=PublisherTrack)
    corrupted: int = 0  # damaged messages (wrong header or payload) and garbage runs
    end: int | None = None  # data messages sent, from the END message

    def message(self, msg: bytes) -> int | None:
        """Classify one message; returns its timestamp if it is a first intact arrival
        (in order or reordered), None for a duplicate, END or a damaged message."""
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
        track = self.track
        if msg[HEADER_SIZE:] != PAYLOAD or msg[:SEQ_OFFSET] != TEMPLATE[:SEQ_OFFSET]:
            self.corrupted += 1
            track.arrive_damaged(seq)
            return None
        if seq == track.next:  # the tracker's hot path, inlined as the load auditor does
            track.next = seq + 1
            return int(ts)
        duplicated = track.duplicated
        track.arrive(seq)
        return None if track.duplicated != duplicated else int(ts)

    def in_order(self, count: int) -> None:
        """The next `count` data messages arrived intact and in order (checked by
        comparison): `count` in-order arrivals, each of which only advances `next`."""
        self.track.next += count

    def skip(self) -> None:
        """Bytes that could not be framed (counted as one corruption per resync)."""
        self.corrupted += 1

    def audit(self) -> PublisherAudit:
        """The tracker's verdict against END's count or, without END, against the
        highest number seen (what came after it is unknown here: see `sent`)."""
        return self.track.result(0, self.sent)

    @property
    def sent(self) -> int:
        """What `audit` is judged against: END's count, else the highest number seen."""
        return self.end if self.end is not None else self.track.next - 1


class Reassembler:
    """Splits a byte stream into messages by `payload_size`, resyncing on the magic."""

    def __init__(self, classifier: Classifier, carry: bytes = b"") -> None:
        self.classifier = classifier
        self._carry = carry
        self._skipping = False  # inside a garbage run (which may span reads)

    def feed(self, data: bytes) -> Iterator[bytes]:
        buf = self._carry + data if self._carry else data
        pos, n = 0, len(buf)
        magic_bytes = TEMPLATE[:4]
        while n - pos >= HEADER_SIZE:
            magic, _, _, size = _PEEK.unpack_from(buf, pos)
            if magic != MAGIC or size > 1_048_576:
                if not self._skipping:
                    self.classifier.skip()
                    self._skipping = True
                nxt = buf.find(magic_bytes, pos + 1)
                # keep a tail that may be the start of a magic split across reads
                pos = nxt if nxt >= 0 else max(pos + 1, n - len(magic_bytes) + 1)
                continue
            end = pos + HEADER_SIZE + size
            if end > n:
                break
            self._skipping = False
            yield buf[pos:end]
            pos = end
        self._carry = buf[pos:]


class StreamCheck:
    """Compares received bytes with the expected stream; parses only after a difference."""

    def __init__(self, expected: bytes | bytearray) -> None:
        if expected and _PEEK.unpack_from(expected)[1] != FIRST:
            raise ValueError(f"the expected stream must start at sequence {FIRST}")
        self.expected = expected
        self.classifier = Classifier()
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
        self.classifier.in_order(whole)
        start = whole * MESSAGE_SIZE
        carry = bytes(self.expected[start : start + partial])
        self._slow = Reassembler(self.classifier, carry)

    @property
    def done(self) -> bool:
        return self.classifier.end is not None

    def audit(self) -> PublisherAudit:
        """The verdict so far; still on the fast path, the matched messages count first."""
        if self._slow is None:
            self._go_slow()
        return self.classifier.audit()
