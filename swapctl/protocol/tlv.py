"""TLV payloads and the typed values swapctl builds (Trade, Quote, ArbitrageSignal).

Standard TLV: `[type u8][length u8][value]` (type 1-254, length 0-255).
Extended TLV: `[0xFF][0x00][type u8][length u16 LE][value]` (value up to 65,535 bytes).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

from swapctl.protocol.errors import BadExtendedTLV, EncodeError, TruncatedTLV

EXTENDED_MARKER = 0xFF
MAX_STANDARD_VALUE = 255
MAX_TLV_VALUE = 65_535
_EXT_HEAD = struct.Struct("<BBBH")

TRADE = 1
QUOTE = 2
ORDER_BOOK = 3
ARBITRAGE_SIGNAL = 32
HEARTBEAT = 100
VENDOR_FIRST = 200


@dataclass(frozen=True, slots=True)
class Tlv:
    type: int
    value: bytes
    extended: bool = False

    def encode(self) -> bytes:
        # extended=False still lets a value over 255 bytes take the extended form
        return encode_tlv(self.type, self.value, extended=True if self.extended else None)


def encode_tlv(tlv_type: int, value: bytes, *, extended: bool | None = None) -> bytes:
    """One TLV; extended form is chosen automatically for values over 255 bytes."""
    if not 1 <= tlv_type <= 254:
        raise EncodeError(f"TLV type {tlv_type} is outside 1-254 (255 is the extended marker)")
    if len(value) > MAX_TLV_VALUE:
        raise EncodeError(f"TLV value of {len(value)} bytes exceeds {MAX_TLV_VALUE}")
    if extended is None:
        extended = len(value) > MAX_STANDARD_VALUE
    if extended:
        return _EXT_HEAD.pack(EXTENDED_MARKER, 0, tlv_type, len(value)) + value
    if len(value) > MAX_STANDARD_VALUE:
        raise EncodeError(f"standard TLV value of {len(value)} bytes exceeds 255: use extended")
    return bytes((tlv_type, len(value))) + value


def encode_tlvs(tlvs: list[Tlv] | tuple[Tlv, ...]) -> bytes:
    return b"".join(t.encode() for t in tlvs)


def decode_tlvs(payload: bytes, base_offset: int = 0) -> tuple[Tlv, ...]:
    """Split a payload into TLVs; offsets in errors are `base_offset` + position."""
    out: list[Tlv] = []
    pos, end = 0, len(payload)
    while pos < end:
        at = base_offset + pos
        if payload[pos] == EXTENDED_MARKER:
            if end - pos < _EXT_HEAD.size:
                raise TruncatedTLV(at, "a 5-byte extended TLV head", f"{end - pos} bytes")
            _, zero, tlv_type, length = _EXT_HEAD.unpack_from(payload, pos)
            if zero != 0:
                raise BadExtendedTLV(at + 1, "0x00 after the 0xFF marker", f"0x{zero:02X}")
            start = pos + _EXT_HEAD.size
            extended = True
        else:
            if end - pos < 2:
                raise TruncatedTLV(at, "a 2-byte TLV head", "1 byte")
            tlv_type, length = payload[pos], payload[pos + 1]
            start = pos + 2
            extended = False
        if start + length > end:
            raise TruncatedTLV(
                at, f"{length} value bytes for type {tlv_type}", f"{end - start} bytes"
            )
        out.append(Tlv(tlv_type, payload[start : start + length], extended))
        pos = start + length
    return tuple(out)


_GETTERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def _fields_of(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """A getter for a value class's fields in layout order (astuple deep-copies: slow)."""
    getter = _GETTERS.get(cls)
    if getter is None:
        attrs = operator.attrgetter(*[f.name for f in fields(cls)])
        getter = _GETTERS[cls] = lambda obj: tuple(attrs(obj))
    return getter


class _Value:
    """A fixed-layout TLV value: a frozen dataclass whose fields follow `LAYOUT` in order."""

    TLV_TYPE: ClassVar[int]
    LAYOUT: ClassVar[struct.Struct]

    def to_value(self) -> bytes:
        return self.LAYOUT.pack(*_fields_of(type(self))(self))

    def to_tlv(self) -> Tlv:
        return Tlv(self.TLV_TYPE, self.to_value())

    @classmethod
    def from_value(cls, value: bytes) -> Self:
        if len(value) != cls.LAYOUT.size:
            raise TruncatedTLV(
                0, f"{cls.LAYOUT.size} bytes for {cls.__name__}", f"{len(value)} bytes"
            )
        return cls(*cls.LAYOUT.unpack(value))


@dataclass(frozen=True, slots=True)
class Trade(_Value):
    TLV_TYPE = TRADE
    LAYOUT = struct.Struct("<QqqQHBBB3x")  # 40 bytes
    asset_id: int
    price: int  # x1e8
    volume: int  # x1e8
    exec_ts_ns: int
    venue: int
    asset_type: int
    reserved: int = 0
    side: int = 0  # 0 buy, 1 sell


@dataclass(frozen=True, slots=True)
class Quote(_Value):
    TLV_TYPE = QUOTE
    LAYOUT = struct.Struct("<QqqqqQHBB4x")  # 56 bytes
    asset_id: int
    bid_price: int
    bid_size: int
    ask_price: int
    ask_size: int
    quote_ts_ns: int
    venue: int
    asset_type: int
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class ArbitrageSignal(_Value):
    TLV_TYPE = ARBITRAGE_SIGNAL
    LAYOUT = struct.Struct("<HQI20s20sHH20s20sqqHqqqqHII4sQ")  # 170 bytes, packed
    strategy_id: int
    signal_id: int
    chain_id: int
    source_pool: bytes
    target_pool: bytes
    source_venue: int
    target_venue: int
    token_in: bytes
    token_out: bytes
    expected_profit_q: int
    required_capital_q: int
    spread_bps: int
    dex_fees_q: int
    gas_cost_q: int
    slippage_q: int
    net_profit_q: int
    slippage_tolerance_bps: int
    max_gas_price_gwei: int
    valid_until: int
    reserved: bytes
    timestamp_ns: int
