"""Deterministic Protocol V2 traffic: every message from a seeded generator.

Sequences are unique within a scenario (one counter from 1), timestamps advance by a
fixed step from a fixed epoch, so the same seed gives the same bytes on any machine.
About half the messages carry a CRC-32, as on the wire. The publishers'
identification header is byte for byte what the real adapters send (vector V6).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from swapctl.protocol import (
    MAGIC,
    ArbitrageSignal,
    Quote,
    Tlv,
    Trade,
    compute_checksum,
    encode_message,
)
from swapctl.protocol.header import VERSION

EPOCH_NS = 1_700_000_000_000_000_000
TICK_NS = 1_000
ORDER_BOOK = 3
GAS_PRICE = 18
POOL_SIZES = {11: 208, 12: 208, 13: 208, 14: 64, 15: 192, 16: 160}
IDENTIFICATION = encode_message(1, 2, b"")  # domain 1 whatever the relay, source 2
_TRADE_MESSAGE = struct.Struct("<IBBBBQQII" + "BB" + "QqqQHBBB3x")  # header, TLV head, Trade


class Traffic:
    """Builds messages for one relay domain from one random generator."""

    def __init__(self, rng: random.Random, domain_byte: int) -> None:
        self.rng = rng
        self.domain = domain_byte
        self.sequence = 0

    def message(self, source: int, tlvs: list[Tlv], domain: int | None = None) -> bytes:
        self.sequence += 1
        return encode_message(
            self.domain if domain is None else domain, source, tlvs,
            sequence=self.sequence, timestamp=EPOCH_NS + self.sequence * TICK_NS,
            checksum=self.rng.random() < 0.5,
        )

    def trade(self, source: int) -> bytes:
        """A 74-byte Trade message, packed in one go (soaks build hundreds of thousands)."""
        bits = self.rng.getrandbits
        self.sequence += 1
        ts = EPOCH_NS + self.sequence * TICK_NS
        msg = _TRADE_MESSAGE.pack(
            MAGIC, self.domain, VERSION, source, 0, self.sequence, ts, 42, 0,
            Trade.TLV_TYPE, Trade.LAYOUT.size, bits(40) + 1, bits(43) + 1, bits(36) + 1, ts,
            bits(3) or 1, bits(2), 0, bits(1))
        if bits(1):
            msg = msg[:28] + compute_checksum(msg).to_bytes(4, "little") + msg[32:]
        return msg

    def quote(self, source: int) -> bytes:
        r = self.rng
        bid = r.randrange(1, 10**13)
        return self.message(source, [Quote(
            r.randrange(1, 1 << 40), bid, r.randrange(1, 10**11), bid + r.randrange(1, 10**6),
            r.randrange(1, 10**11), EPOCH_NS + self.sequence * TICK_NS, r.randrange(1, 8),
            r.randrange(0, 4)).to_tlv()])

    def order_book(self, source: int) -> bytes:
        """An order book: one extended TLV of about 2,456 bytes, as in practice."""
        return self.message(source, [Tlv(ORDER_BOOK, self.rng.randbytes(2456), extended=True)])

    def signal(self, source: int) -> bytes:
        r = self.rng
        sig = ArbitrageSignal(
            r.randrange(1, 100), r.randrange(1, 1 << 60), 137, r.randbytes(20), r.randbytes(20),
            r.randrange(1, 10), r.randrange(1, 10), r.randbytes(20), r.randbytes(20),
            r.randrange(10**9), r.randrange(10**9), r.randrange(500), r.randrange(10**6),
            r.randrange(10**6), r.randrange(10**6), r.randrange(10**9), 50, 30,
            r.randrange(1 << 32), b"\0\0\0\0", EPOCH_NS + self.sequence * TICK_NS)
        return self.message(source, [sig.to_tlv()])

    def vendor(self, source: int) -> bytes:
        """A vendor TLV (types 200-254), often over 255 bytes so extended."""
        size = self.rng.choice((0, 17, 255, 256, 1000, 4000))
        return self.message(source, [Tlv(self.rng.randrange(200, 255), self.rng.randbytes(size))])

    def pool_event(self, source: int) -> bytes:
        kind, size = self.rng.choice(sorted(POOL_SIZES.items()))
        return self.message(source, [Tlv(kind, self.rng.randbytes(size))])

    def gas_price(self, source: int) -> bytes:
        return self.message(source, [Tlv(GAS_PRICE, self.rng.randbytes(32))])

    def several(self, source: int) -> bytes:
        """A message carrying several TLVs (a trade and a quote)."""
        trade = Trade(1, 2, 3, 4, 5, 1).to_tlv()
        quote = Quote(1, 2, 3, 4, 5, 6, 7, 1).to_tlv()
        return self.message(source, [trade, quote])

    def mixed(self, source: int) -> bytes:
        """A realistic mix: mostly trades and quotes, some of everything else."""
        kinds: list[tuple[Callable[[int], bytes], int]] = [
            (self.trade, 40), (self.quote, 35), (self.order_book, 5), (self.signal, 5),
            (self.vendor, 5), (self.pool_event, 5), (self.gas_price, 3), (self.several, 2)]
        make = self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        return make(source)

    def named(self, kind: str, source: int) -> bytes:
        makers: dict[str, Callable[[int], bytes]] = {
            "trade": self.trade, "quote": self.quote, "order_book": self.order_book,
            "signal": self.signal, "vendor": self.vendor, "pool_event": self.pool_event,
            "gas_price": self.gas_price, "several": self.several, "mixed": self.mixed,
            "identification": lambda _s: IDENTIFICATION,
        }
        return makers[kind](source)


MESSAGE_KINDS = ("trade", "quote", "order_book", "signal", "vendor", "pool_event",
                 "gas_price", "several", "mixed", "identification")
