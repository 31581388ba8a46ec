"""Every golden vector decodes to its documented fields and re-encodes byte-exact."""

from __future__ import annotations

import pytest

from swapctl.protocol import (
    ArbitrageSignal,
    BadExtendedTLV,
    BadMagic,
    ChecksumMismatch,
    EncodeError,
    Oversize,
    Quote,
    Tlv,
    Trade,
    TruncatedMessage,
    TruncatedTLV,
    checksum_ok,
    compute_checksum,
    decode_message,
    encode_message,
)
from swapctl.protocol.profiles import Domain, Profile, domain_byte, domain_of
from swapctl.protocol.tlv import decode_tlvs, encode_tlv
from tests.vectors import load_vectors

V = load_vectors()
TS = 0x17979CFE362A0000


def test_all_six_vectors_present() -> None:
    assert sorted(V) == ["V1", "V2", "V3", "V4", "V5", "V6"]
    assert [len(V[k]) for k in sorted(V)] == [74, 74, 90, 204, 337, 32]


def test_v1_trade_with_crc() -> None:
    msg = decode_message(V["V1"])
    h = msg.header
    assert (h.relay_domain, h.version, h.source, h.flags, h.sequence) == (1, 1, 2, 0, 0)
    assert h.timestamp == TS and h.payload_size == 42
    assert h.checksum != 0 and h.checksum == compute_checksum(V["V1"])
    (tlv,) = msg.tlvs
    assert (tlv.type, len(tlv.value), tlv.extended) == (1, 40, False)
    trade = Trade.from_value(tlv.value)
    assert trade.asset_id == 0x0123456789ABCDEF
    assert trade.price == 0x417BCE6C800 and trade.volume == 0x8F0D180
    assert (trade.venue, trade.asset_type, trade.side) == (101, 0x33, 0)
    again = encode_message(1, 2, [trade.to_tlv()], sequence=0, timestamp=TS, checksum=True)
    assert again == V["V1"]


def test_v2_trade_without_crc_is_v1_with_sequence_1() -> None:
    msg = decode_message(V["V2"])
    assert msg.header.sequence == 1 and msg.header.checksum == 0
    assert checksum_ok(V["V2"])  # 0 = absent, never a mismatch
    trade = Trade.from_value(msg.tlvs[0].value)
    assert trade == Trade.from_value(decode_message(V["V1"]).tlvs[0].value)
    assert encode_message(1, 2, [trade.to_tlv()], sequence=1, timestamp=TS) == V["V2"]


def test_v3_quote() -> None:
    msg = decode_message(V["V3"])
    assert msg.header.sequence == 2 and msg.header.payload_size == 58
    quote = Quote.from_value(msg.tlvs[0].value)
    assert msg.tlvs[0].type == 2 and len(msg.tlvs[0].value) == 56
    assert quote.bid_size == 0 or quote.bid_price > 0
    assert quote.venue == 101
    assert encode_message(1, 2, [quote.to_tlv()], sequence=2, timestamp=TS) == V["V3"]


def test_v4_arbitrage_signal() -> None:
    msg = decode_message(V["V4"])
    h = msg.header
    assert (h.relay_domain, h.source, h.sequence, h.payload_size) == (2, 20, 3, 172)
    (tlv,) = msg.tlvs
    assert (tlv.type, len(tlv.value)) == (32, 170)
    sig = ArbitrageSignal.from_value(tlv.value)
    assert (sig.strategy_id, sig.signal_id, sig.chain_id) == (21, 1, 137)
    assert sig.source_pool == b"\x01" * 20 and sig.token_out == b"\x04" * 20
    assert (sig.source_venue, sig.target_venue) == (300, 301)
    assert sig.valid_until == 1_700_000_060 and sig.timestamp_ns == TS
    assert encode_message(2, 20, [sig.to_tlv()], sequence=3, timestamp=TS) == V["V4"]


def test_v5_extended_vendor_tlv_with_crc() -> None:
    msg = decode_message(V["V5"])
    assert msg.header.source == 4 and msg.header.payload_size == 305
    (tlv,) = msg.tlvs
    assert (tlv.type, tlv.value, tlv.extended) == (200, b"\x01" * 300, True)
    assert encode_message(1, 4, [tlv], timestamp=TS, checksum=True) == V["V5"]


def test_v6_identification_header() -> None:
    msg = decode_message(V["V6"])
    assert (msg.header.relay_domain, msg.header.source, msg.header.payload_size) == (1, 2, 0)
    assert msg.tlvs == () and msg.header.timestamp == 0
    assert encode_message(1, 2, b"") == V["V6"]


def test_checksum_mismatch_names_offset_and_values() -> None:
    bad = bytearray(V["V1"])
    bad[40] ^= 0xFF
    with pytest.raises(ChecksumMismatch) as err:
        decode_message(bytes(bad))
    assert err.value.offset == 28 and "stored" in err.value.expected
    assert decode_message(bytes(bad), verify_checksum=False).header.sequence == 0


@pytest.mark.parametrize(
    ("data", "error", "offset"),
    [
        (b"\x00" * 32, BadMagic, 0),
        (V["V1"][:20], TruncatedMessage, 0),
        (V["V1"][:60], TruncatedMessage, 0),
        (V["V1"] + b"x", Oversize, 74),
    ],
)
def test_decode_errors(data: bytes, error: type[Exception], offset: int) -> None:
    with pytest.raises(error) as err:
        decode_message(data, verify_checksum=False)
    assert err.value.offset == offset  # type: ignore[attr-defined]


def test_oversize_declared_size() -> None:
    msg = encode_message(1, 2, b"\x01\x00" * 100)
    with pytest.raises(Oversize):
        decode_message(msg, max_message=64)


def test_tlv_errors() -> None:
    with pytest.raises(TruncatedTLV) as err:
        decode_tlvs(b"\x01\x05ab", base_offset=32)
    assert err.value.offset == 32
    with pytest.raises(TruncatedTLV):
        decode_tlvs(b"\x01")
    with pytest.raises(TruncatedTLV):
        decode_tlvs(b"\xff\x00\xc8")
    with pytest.raises(BadExtendedTLV) as bad:
        decode_tlvs(b"\xff\x01\xc8\x01\x00x")
    assert bad.value.offset == 1 and bad.value.actual == "0x01"


def test_encode_errors() -> None:
    with pytest.raises(EncodeError):
        encode_tlv(255, b"")
    with pytest.raises(EncodeError):
        encode_tlv(200, b"x" * 65_536)
    with pytest.raises(EncodeError):
        encode_tlv(200, b"x" * 256, extended=False)
    with pytest.raises(EncodeError):
        encode_message(256, 2, b"")
    with pytest.raises(EncodeError):
        encode_message(1, 2, [Tlv(200, b"x" * 60_000)] * 18)


def test_extended_tlv_chosen_automatically() -> None:
    assert encode_tlv(200, b"x" * 255)[:2] == b"\xc8\xff"
    assert encode_tlv(200, b"x" * 256)[:5] == b"\xff\x00\xc8\x00\x01"


def test_profiles() -> None:
    assert domain_byte(Domain.MARKET_DATA, Profile.ALPHAPULSE) == 1
    assert domain_byte(Domain.MARKET_DATA, Profile.TORQ) == 0
    assert domain_byte(Domain.EXECUTION, Profile.TORQ) == 2
    assert domain_of(2, Profile.ALPHAPULSE) is Domain.SIGNAL
    assert domain_of(2, Profile.TORQ) is Domain.EXECUTION
    assert domain_of(9, Profile.TORQ) is None
