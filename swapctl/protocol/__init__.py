"""Protocol V2, sans I/O: header, TLVs, streaming framer, numbering profiles.

Nothing in this package touches sockets, processes or an event loop
(tests/unit/test_layering.py enforces it).
"""

from swapctl.protocol.errors import (
    BadExtendedTLV,
    BadMagic,
    ChecksumMismatch,
    EncodeError,
    MalformedFrame,
    Oversize,
    ProtocolError,
    TruncatedMessage,
    TruncatedTLV,
    WrongDomain,
)
from swapctl.protocol.framer import Framer, Frames, Rejected, Skipped, split_frames
from swapctl.protocol.header import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAGIC_BYTES,
    MAX_MESSAGE,
    Header,
    Message,
    checksum_ok,
    compute_checksum,
    decode_message,
    encode_message,
    unpack_header,
)
from swapctl.protocol.profiles import Domain, Profile, domain_byte, domain_of
from swapctl.protocol.tlv import ArbitrageSignal, Quote, Tlv, Trade, decode_tlvs, encode_tlv

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAGIC_BYTES",
    "MAX_MESSAGE",
    "ArbitrageSignal",
    "BadExtendedTLV",
    "BadMagic",
    "ChecksumMismatch",
    "Domain",
    "EncodeError",
    "Framer",
    "Frames",
    "Header",
    "MalformedFrame",
    "Message",
    "Oversize",
    "Profile",
    "ProtocolError",
    "Quote",
    "Rejected",
    "Skipped",
    "Tlv",
    "Trade",
    "TruncatedMessage",
    "TruncatedTLV",
    "WrongDomain",
    "checksum_ok",
    "compute_checksum",
    "decode_message",
    "decode_tlvs",
    "domain_byte",
    "domain_of",
    "encode_message",
    "encode_tlv",
    "split_frames",
    "unpack_header",
]
