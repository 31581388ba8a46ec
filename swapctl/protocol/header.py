"""The 32-byte Protocol V2 header and whole-message encode/decode.

Layout (little-endian, `<IBBBBQQII`): magic, relay_domain, version, source, flags,
sequence, timestamp, payload_size, checksum. The checksum is CRC-32 over
`msg[0:28] + msg[32:]`; 0 means "not computed" and is never a mismatch.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from swapctl.protocol.errors import (
    BadMagic,
    ChecksumMismatch,
    EncodeError,
    Oversize,
    TruncatedMessage,
)
from swapctl.protocol.tlv import Tlv, decode_tlvs, encode_tlvs

HEADER = struct.Struct("<IBBBBQQII")
HEADER_SIZE = HEADER.size
MAGIC = 0xDEADBEEF
MAGIC_BYTES = MAGIC.to_bytes(4, "little")
MAX_MESSAGE = 1_048_576
VERSION = 1
CHECKSUM_OFFSET = 28
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Header:
    relay_domain: int
    source: int
    sequence: int = 0
    timestamp: int = 0
    payload_size: int = 0
    checksum: int = 0
    version: int = VERSION
    flags: int = 0

    def pack(self) -> bytes:
        try:
            return HEADER.pack(
                MAGIC,
                self.relay_domain,
                self.version,
                self.source,
                self.flags,
                self.sequence,
                self.timestamp,
                self.payload_size,
                self.checksum,
            )
        except struct.error as exc:
            raise EncodeError(f"header field out of range: {exc} ({self})") from None


@dataclass(frozen=True, slots=True)
class Message:
    header: Header
    tlvs: tuple[Tlv, ...]


def unpack_header(data: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """Parse the header at `offset`; raises TruncatedMessage or BadMagic."""
    have = len(data) - offset
    if have < HEADER_SIZE:
        raise TruncatedMessage(offset, f"{HEADER_SIZE} header bytes", f"{have}")
    magic, domain, version, source, flags, seq, ts, size, crc = HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        raise BadMagic(offset, f"0x{MAGIC:08X}", f"0x{magic:08X}")
    return Header(domain, source, seq, ts, size, crc, version, flags)


def compute_checksum(message: bytes | bytearray | memoryview) -> int:
    """CRC-32 over the message with the checksum field left out."""
    view = memoryview(message)
    return zlib.crc32(view[HEADER_SIZE:], zlib.crc32(view[:CHECKSUM_OFFSET]))


def checksum_ok(message: bytes | bytearray | memoryview) -> bool:
    """True if the checksum is absent (0) or matches."""
    stored: int = _U32.unpack_from(message, CHECKSUM_OFFSET)[0]
    return stored in (0, compute_checksum(message))


def encode_message(
    relay_domain: int,
    source: int,
    payload: bytes | list[Tlv] | tuple[Tlv, ...],
    *,
    sequence: int = 0,
    timestamp: int = 0,
    checksum: bool = False,
    version: int = VERSION,
    flags: int = 0,
) -> bytes:
    """Build one complete message; `checksum=True` fills in the CRC-32."""
    body = payload if isinstance(payload, bytes) else encode_tlvs(payload)
    if HEADER_SIZE + len(body) > MAX_MESSAGE:
        raise EncodeError(
            f"message of {HEADER_SIZE + len(body)} bytes exceeds the maximum of {MAX_MESSAGE}"
        )
    header = Header(relay_domain, source, sequence, timestamp, len(body), 0, version, flags)
    msg = header.pack() + body
    if not checksum:
        return msg
    crc = compute_checksum(msg)
    return msg[:CHECKSUM_OFFSET] + _U32.pack(crc) + msg[HEADER_SIZE:]


def decode_message(
    message: bytes | bytearray | memoryview,
    *,
    verify_checksum: bool = True,
    max_message: int = MAX_MESSAGE,
) -> Message:
    """Parse exactly one complete message (header and every TLV)."""
    header = unpack_header(message)
    total = HEADER_SIZE + header.payload_size
    if total > max_message:
        raise Oversize(24, f"a message of at most {max_message} bytes", f"{total} bytes")
    if len(message) < total:
        raise TruncatedMessage(0, f"{total} bytes", f"{len(message)} bytes")
    if len(message) > total:
        raise Oversize(total, f"{total} bytes", f"{len(message)} bytes", "trailing data")
    if verify_checksum and not checksum_ok(message):
        actual = compute_checksum(message)
        raise ChecksumMismatch(
            CHECKSUM_OFFSET, f"0x{header.checksum:08X} (stored)", f"0x{actual:08X} (computed)"
        )
    tlvs = decode_tlvs(bytes(message[HEADER_SIZE:total]), base_offset=HEADER_SIZE)
    return Message(header, tlvs)
