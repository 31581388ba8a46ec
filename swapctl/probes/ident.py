"""Identity of the messages swapctl generates: a unique, self-describing sequence.

Every load or canary message carries its identity in the 64-bit header sequence:

    bits 63-48  run tag (16 bits, bit 15 always set)
    bits 47-40  publisher index (0-255)
    bits 39-0   message number n, counted from 1 per publisher

Number 0 is never data: it marks a *sync* message, which publishers repeat before a
run starts until every auditor has seen one from each publisher (the start
barrier: proof that the relay has registered every connection).
Real producers put 0 or a process-wide counter from 1 in the sequence, which never
reaches bit 63, so real traffic on the same relay can never pass for a run's
messages, and two runs on one relay tell each other apart by their tags.
"""

from __future__ import annotations

TAG_SHIFT = 48
PUBLISHER_SHIFT = 40
TAG_BIT = 0x8000
MAX_PUBLISHERS = 256
N_MASK = (1 << PUBLISHER_SHIFT) - 1
MAX_N = N_MASK
SYNC = 0  # the message number of a start-barrier message


def make_tag(value: int) -> int:
    """A run tag from any integer (e.g. random bits): 16 bits with bit 15 set."""
    return TAG_BIT | (value & 0x7FFF)


def is_tag(tag: int) -> bool:
    return TAG_BIT <= tag <= 0xFFFF


def make_sequence(tag: int, publisher: int, n: int) -> int:
    """The header sequence of message `n` (from 1) of `publisher` in run `tag`."""
    if not is_tag(tag):
        raise ValueError(f"run tag 0x{tag:X} is not 16 bits with bit 15 set")
    if not 0 <= publisher < MAX_PUBLISHERS:
        raise ValueError(f"publisher index {publisher} is outside 0-{MAX_PUBLISHERS - 1}")
    if not 0 <= n <= MAX_N:
        raise ValueError(f"message number {n} is outside 0-{MAX_N}")
    return (tag << TAG_SHIFT) | (publisher << PUBLISHER_SHIFT) | n


def split_sequence(sequence: int) -> tuple[int, int, int]:
    """(tag, publisher, n) of a sequence; the tag is meaningful only if `is_tag`."""
    return (
        sequence >> TAG_SHIFT,
        (sequence >> PUBLISHER_SHIFT) & 0xFF,
        sequence & N_MASK,
    )
