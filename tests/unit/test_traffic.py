"""Generated traffic: real, decodable Protocol V2 with unique identities and checksums."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

import swapctl
from swapctl.errors import UsageError
from swapctl.probes.ident import make_tag, split_sequence
from swapctl.probes.traffic import Kind, MessageFactory, Mix
from swapctl.protocol import checksum_ok, decode_message, split_frames
from tests.unit.test_layering import FORBIDDEN, stdlib_imports

TAG = make_tag(77)
PURE = ["ident.py", "latency.py", "tracker.py", "traffic.py", "audit.py"]


def test_probe_cores_do_no_io() -> None:
    root = Path(swapctl.__file__).parent / "probes"
    for name in PURE:
        bad = stdlib_imports(root / name) & FORBIDDEN
        assert not bad, f"probes/{name} imports {sorted(bad)}: keep I/O out of it"


def test_batches_decode_with_identity_timestamp_and_checksum() -> None:
    factory = MessageFactory(domain=2, source=250, publisher=5, run_tag=TAG, mix=Mix())
    first = factory.build(7, 111)
    second = factory.build(13, 222)
    msgs = [*split_frames(bytes(first.data)), *split_frames(bytes(second.data))]
    assert len(msgs) == 20
    numbers = []
    for i, raw in enumerate(msgs):
        msg = decode_message(raw)  # verifies the checksum
        assert msg.header.checksum != 0 and checksum_ok(raw)
        assert (msg.header.relay_domain, msg.header.source) == (2, 250)
        assert msg.header.timestamp == (111 if i < 7 else 222)
        tag, publisher, n = split_sequence(msg.header.sequence)
        assert (tag, publisher) == (TAG, 5)
        numbers.append(n)
    assert numbers == list(range(1, 21))
    assert (second.first, second.count) == (8, 13)


def test_mix_kinds_sizes_and_extended_vendor_tlv() -> None:
    mix = Mix.parse("trade=2,quote=1,signal=1,vendor=1", vendor_size=1000)
    factory = MessageFactory(domain=1, source=250, publisher=0, run_tag=TAG, mix=mix)
    batch = factory.build(50, 1)
    kinds: Counter[int] = Counter()
    for raw in split_frames(bytes(batch.data)):
        (tlv,) = decode_message(raw).tlvs
        kinds[tlv.type] += 1
        if tlv.type == 200:
            assert tlv.extended and len(tlv.value) == 1000
    assert kinds == {1: 20, 2: 10, 32: 10, 200: 10}
    assert factory.sizes() == {Kind.TRADE: 74, Kind.QUOTE: 90, Kind.SIGNAL: 204,
                               Kind.VENDOR: 32 + 5 + 1000}


def test_pattern_interleaves_kinds() -> None:
    pattern = Mix().pattern()
    assert Counter(pattern) == {Kind.TRADE: 4, Kind.QUOTE: 4, Kind.SIGNAL: 1, Kind.VENDOR: 1}
    assert all(a != b for a, b in itertools.pairwise(pattern))


def test_whole_messages_within_a_partial_write() -> None:
    factory = MessageFactory(domain=1, source=250, publisher=0, run_tag=TAG,
                             mix=Mix.parse("trade=1"))
    batch = factory.build(4, 1)  # 4 trades of 74 bytes
    assert [batch.whole_messages(w) for w in (0, 73, 74, 147, 148, 296)] == [0, 0, 1, 1, 2, 4]
    assert batch.start_of(2) == 148


@pytest.mark.parametrize(("text", "error"), [
    ("trade=x", "bad message mix entry"),
    ("bogus=1", "bad message mix entry"),
    ("trade=0", "one above 0"),
])
def test_bad_mix_is_a_usage_error(text: str, error: str) -> None:
    with pytest.raises(UsageError, match=error):
        Mix.parse(text)


def test_vendor_size_bounds() -> None:
    with pytest.raises(UsageError, match="outside 0-65535"):
        Mix(vendor_size=70_000)
