"""Fast generation of real Protocol V2 messages for load and canary traffic. Pure.

How it works: each message kind has a template, a complete message built once with
the codec (checksum left 0). A `Mix` turns weights into a fixed repeating pattern of
kinds (smooth weighted round-robin, so kinds interleave). `MessageFactory.build`
joins the templates for a batch into one buffer and patches, per message, only the
sequence and timestamp (one `pack_into`) and the CRC-32 (two `zlib.crc32` calls over
views): no per-message allocation. The sequence carries the message identity
(see `ident`); all messages of a batch share the timestamp taken just before it is
written, so consumers measure one-way latency.
"""

from __future__ import annotations

import enum
import struct
import zlib
from bisect import bisect_right
from dataclasses import dataclass

from swapctl.errors import UsageError
from swapctl.probes.ident import MAX_N, SYNC, make_sequence
from swapctl.protocol import ArbitrageSignal, Quote, Tlv, Trade, encode_message
from swapctl.protocol.tlv import MAX_TLV_VALUE

_SEQ_TS = struct.Struct("<QQ")
_U32 = struct.Struct("<I")


class Kind(enum.Enum):
    TRADE = "trade"  # TLV 1, 40-byte value
    QUOTE = "quote"  # TLV 2, 56-byte value
    SIGNAL = "signal"  # TLV 32 ArbitrageSignal, 170-byte value
    VENDOR = "vendor"  # vendor TLV in the extended form (value over 255 bytes)


@dataclass(frozen=True, slots=True)
class Mix:
    """Which kinds of message a publisher sends, by weight."""

    weights: tuple[tuple[Kind, int], ...] = (
        (Kind.TRADE, 4), (Kind.QUOTE, 4), (Kind.SIGNAL, 1), (Kind.VENDOR, 1),
    )
    vendor_size: int = 300
    vendor_type: int = 200

    def __post_init__(self) -> None:
        if not any(w > 0 for _, w in self.weights) or any(w < 0 for _, w in self.weights):
            raise UsageError(f"message mix {self.text()!r} needs weights >= 0, one above 0")
        if not 0 <= self.vendor_size <= MAX_TLV_VALUE:
            raise UsageError(f"vendor TLV size {self.vendor_size} is outside 0-{MAX_TLV_VALUE}")
        if not 200 <= self.vendor_type <= 254:
            raise UsageError(f"vendor TLV type {self.vendor_type} is outside 200-254")

    @classmethod
    def parse(cls, text: str, vendor_size: int = 300) -> Mix:
        """'trade=4,quote=4,signal=1,vendor=1' (kinds left out get weight 0)."""
        weights: list[tuple[Kind, int]] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, weight = part.partition("=")
            try:
                weights.append((Kind(name.strip()), int(weight or "1")))
            except ValueError:
                kinds = ", ".join(k.value for k in Kind)
                raise UsageError(
                    f"bad message mix entry {part!r}: use KIND=WEIGHT with KIND one of {kinds}"
                ) from None
        return cls(tuple(weights), vendor_size)

    def text(self) -> str:
        return ",".join(f"{k.value}={w}" for k, w in self.weights)

    def pattern(self) -> tuple[Kind, ...]:
        """One cycle of kinds in smooth weighted round-robin order."""
        live = [(k, w) for k, w in self.weights if w > 0]
        total = sum(w for _, w in live)
        current = [0] * len(live)
        out: list[Kind] = []
        for _ in range(total):
            for i, (_, w) in enumerate(live):
                current[i] += w
            best = max(range(len(live)), key=current.__getitem__)
            current[best] -= total
            out.append(live[best][0])
        return tuple(out)


def payload(kind: Kind, mix: Mix) -> list[Tlv]:
    """A plausible, fixed payload for a kind (the values do not matter, the shape does)."""
    if kind is Kind.TRADE:
        return [Trade(0xC0FFEE, 6_512_345_000_000, 1_500_000, 0, 1, 1, 0, 1).to_tlv()]
    if kind is Kind.QUOTE:
        return [Quote(0xC0FFEE, 6_512_300_000_000, 2_000_000, 6_512_400_000_000, 1_000_000,
                      0, 1, 1).to_tlv()]
    if kind is Kind.SIGNAL:
        pool = bytes(range(20))
        return [ArbitrageSignal(7, 1, 137, pool, pool[::-1], 1, 2, pool, pool, 10**8, 10**10,
                                25, 10**6, 10**6, 10**6, 10**8 - 3 * 10**6, 50, 100, 0,
                                bytes(4), 0).to_tlv()]
    value = bytes(i & 0xFF for i in range(mix.vendor_size))
    return [Tlv(mix.vendor_type, value, extended=True)]


@dataclass(frozen=True, slots=True)
class Batch:
    """`count` consecutive messages from number `first`; `ends[i]` = end of message i."""

    data: bytearray
    first: int
    count: int
    ends: tuple[int, ...]

    def whole_messages(self, written: int) -> int:
        """How many messages are complete within the first `written` bytes."""
        return bisect_right(self.ends, written)

    def start_of(self, index: int) -> int:
        return self.ends[index - 1] if index else 0


class MessageFactory:
    """Builds one publisher's messages: numbered from 1, in the mix's pattern."""

    def __init__(self, *, domain: int, source: int, publisher: int, run_tag: int,
                 mix: Mix) -> None:
        self.base = make_sequence(run_tag, publisher, SYNC)
        self.domain, self.source = domain, source
        live = {k for k, w in mix.weights if w > 0}
        self.templates = {k: encode_message(domain, source, payload(k, mix))
                          for k in Kind if k in live}
        self.pattern = mix.pattern()
        self.next_n = 1
        self.built_bytes = 0

    def sync(self, timestamp: int) -> bytes:
        """A start-barrier message (number 0, empty payload; see `ident`)."""
        return encode_message(self.domain, self.source, b"", sequence=self.base,
                              timestamp=timestamp, checksum=True)

    def sizes(self) -> dict[Kind, int]:
        return {k: len(t) for k, t in self.templates.items()}

    def build(self, count: int, timestamp: int) -> Batch:
        """The next `count` messages, all stamped with `timestamp` (ns since the epoch)."""
        first = self.next_n
        if first + count - 1 > MAX_N:
            raise ValueError("publisher ran out of message numbers")
        plen = len(self.pattern)
        parts = [self.templates[self.pattern[(first - 1 + i) % plen]] for i in range(count)]
        buf = bytearray(b"".join(parts))
        view = memoryview(buf)
        pack_seq, pack_crc, crc32 = _SEQ_TS.pack_into, _U32.pack_into, zlib.crc32
        ends: list[int] = []
        off, seq = 0, self.base + first
        for part in parts:
            end = off + len(part)
            pack_seq(buf, off + 8, seq, timestamp)
            pack_crc(buf, off + 28, crc32(view[off + 32 : end], crc32(view[off : off + 28])))
            ends.append(end)
            off, seq = end, seq + 1
        view.release()
        self.next_n = first + count
        self.built_bytes += len(buf)
        return Batch(buf, first, count, tuple(ends))
