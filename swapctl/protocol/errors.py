"""Typed Protocol V2 errors, split by who caused them (as h11 does).

`MalformedFrame` and its subclasses: the peer sent bytes that are not valid Protocol V2.
Each names the byte offset in the stream or message, and what was expected vs found.
`EncodeError`: we were asked to build something the protocol cannot carry.
"""

from __future__ import annotations

from swapctl.errors import SwapctlError


class ProtocolError(SwapctlError):
    """Any Protocol V2 problem."""


class EncodeError(ProtocolError):
    """Our own mistake: a value the wire format cannot carry (e.g. a TLV over 65,535 bytes)."""


class MalformedFrame(ProtocolError):
    """The peer's mistake: bytes on the wire are not a valid Protocol V2 message."""

    kind = "malformed"

    def __init__(self, offset: int, expected: str, actual: str, detail: str = "") -> None:
        self.offset = offset
        self.expected = expected
        self.actual = actual
        self.detail = detail
        text = f"{self.kind} at byte {offset}: expected {expected}, got {actual}"
        super().__init__(f"{text} ({detail})" if detail else text)


class BadMagic(MalformedFrame):
    kind = "bad magic"


class Oversize(MalformedFrame):
    kind = "oversize message"


class TruncatedMessage(MalformedFrame):
    kind = "truncated message"


class TruncatedTLV(MalformedFrame):
    kind = "truncated TLV"


class BadExtendedTLV(MalformedFrame):
    kind = "bad extended TLV"


class ChecksumMismatch(MalformedFrame):
    kind = "checksum mismatch"


class WrongDomain(MalformedFrame):
    kind = "wrong domain"
