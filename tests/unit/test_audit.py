"""The loss auditor: exact classification of whatever order, loss, duplication or damage."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swapctl.probes.audit import AuditResult, StreamAuditor, combine
from swapctl.probes.ident import make_sequence, make_tag, split_sequence
from swapctl.probes.latency import LatencyHistogram, LatencySummary, bucket_high, bucket_of
from swapctl.probes.report import (
    Conditions,
    ConsumerReport,
    LoadReport,
    PublisherReport,
    render_text,
)
from swapctl.probes.tracker import PublisherTrack
from swapctl.probes.traffic import MessageFactory, Mix
from swapctl.protocol import encode_message
from tests.vectors import load_vectors

TAG = make_tag(0x1234)
T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def build(publisher: int, count: int, timestamp: int = T0, tag: int = TAG) -> list[bytes]:
    """Messages 1..count of a publisher, as separate byte strings (index n - 1)."""
    factory = MessageFactory(domain=1, source=250, publisher=publisher, run_tag=tag, mix=Mix())
    batch = factory.build(count, timestamp)
    data = bytes(batch.data)
    return [data[batch.start_of(i) : batch.ends[i]] for i in range(count)]


def audit(frames: Sequence[bytes], sent: dict[int, int], recv_ns: int = T0 + MS) -> AuditResult:
    auditor = StreamAuditor(TAG)
    auditor.feed(b"".join(frames), recv_ns)
    return auditor.finish(sent)


def flip(message: bytes, index: int) -> bytes:
    return message[:index] + bytes([message[index] ^ 0x40]) + message[index + 1 :]


# ----- the plain verdicts ---------------------------------------------------------------

def test_in_order_two_publishers_is_clean() -> None:
    a, b = build(0, 50), build(1, 50)
    interleaved = [m for pair in zip(a, b, strict=True) for m in pair]
    result = audit(interleaved, {0: 50, 1: 50})
    assert result.clean
    assert (result.expected, result.received, result.lost) == (100, 100, 0)
    assert result.latency.count == 100
    assert [p.received for p in result.publishers] == [50, 50]


def test_loss_is_counted_exactly_with_samples() -> None:
    msgs = build(3, 100)
    kept = [m for i, m in enumerate(msgs, 1) if i % 10 != 0 and i < 96]
    result = audit(kept, {3: 100})
    assert result.lost == 9 + 5  # every 10th below 96, plus the tail 96..100
    assert result.received == 86
    (pub,) = result.publishers
    assert pub.lost_samples == (10, 20, 30, 40, 50, 60, 70, 80, 90, 96)
    assert not result.clean


def test_duplicates_and_late_arrivals() -> None:
    m = build(0, 6)
    order = [m[0], m[1], m[3], m[2], m[1], m[4], m[5], m[5]]
    result = audit(order, {0: 6})
    assert (result.received, result.lost, result.duplicated, result.reordered) == (6, 0, 2, 1)


def test_checksum_mismatch_counts_as_corrupted_not_lost() -> None:
    m = build(0, 5)
    m[2] = flip(m[2], len(m[2]) - 1)  # the last payload byte, as the relay's --corrupt-every
    result = audit(m, {0: 5})
    assert (result.corrupted, result.checksum_mismatches, result.lost) == (1, 1, 0)
    assert result.received == 4
    assert result.publishers[0].damaged == 1


def test_damaged_magic_is_garbage_and_the_message_is_lost() -> None:
    m = build(0, 5)
    m[2] = flip(m[2], 0)
    result = audit(m, {0: 5})
    assert result.garbage_runs == 1
    assert result.garbage_bytes == len(m[2])
    assert (result.lost, result.received, result.corrupted) == (1, 4, 1)


def test_damaged_sequence_cannot_open_a_hole() -> None:
    m = build(0, 4)
    m[1] = flip(m[1], 12)  # bit 38 of the message number: claims a far-future number
    result = audit(m, {0: 4})
    assert (result.lost, result.reordered, result.checksum_mismatches) == (1, 0, 1)


def test_this_runs_tag_without_checksum_is_unverifiable() -> None:
    seq = make_sequence(TAG, 0, 1)
    bare = encode_message(1, 250, b"\x01\x00", sequence=seq, timestamp=T0)
    result = audit([bare], {0: 1})
    assert (result.unverifiable, result.corrupted, result.lost) == (1, 1, 1)


def test_unexpected_foreign_and_identification_headers() -> None:
    v6 = load_vectors()["V6"]
    other_run = build(0, 3, tag=make_tag(0x999))
    real = encode_message(1, 1, b"\x01\x00", sequence=7, checksum=True)
    ours = build(0, 5)
    stranger = build(9, 2)
    result = audit([v6, *other_run, real, *ours, *stranger], {0: 3})
    assert (result.id_headers, result.foreign) == (1, 4)
    assert result.unexpected == 2 + 2  # numbers 4, 5 were never sent; publisher 9 never ran
    assert result.received == 3
    assert not result.clean


def test_sync_messages_are_the_start_barrier_not_data() -> None:
    factories = [MessageFactory(domain=1, source=250, publisher=p, run_tag=TAG, mix=Mix())
                 for p in range(2)]
    auditor = StreamAuditor(TAG)
    auditor.feed(factories[0].sync(T0) * 3, T0)
    assert not auditor.synced(2)
    auditor.feed(factories[1].sync(T0), T0)
    assert auditor.synced(2)
    auditor.feed(bytes(factories[0].build(5, T0).data) + factories[1].sync(T0), T0 + 1)
    result = auditor.finish({0: 5, 1: 0})
    assert result.clean and result.received == 5
    assert (result.latency.count, result.unexpected, result.foreign) == (5, 0, 0)


def test_reset_stream_reports_a_truncated_message() -> None:
    m = build(0, 3)
    auditor = StreamAuditor(TAG)
    auditor.feed(m[0] + m[1][:20], T0)
    auditor.reset_stream()
    auditor.feed(m[2], T0)
    result = auditor.finish({0: 3})
    assert (result.truncated, result.streams, result.lost, result.received) == (1, 2, 1, 2)


def test_a_message_held_incomplete_is_truncated_unless_our_own_stop_cut_it() -> None:
    m = build(0, 2)
    other = build(0, 1, tag=make_tag(0x0777))[0]  # someone else's traffic
    stuck = StreamAuditor(TAG)
    stuck.feed(m[0] + m[1] + other[:20], T0)
    assert stuck.partial_at() == len(m[0]) + len(m[1])  # where the incomplete one starts
    assert stuck.finish({0: 2}).truncated == 1  # held at the end: the sender stopped in it
    cut = StreamAuditor(TAG)
    cut.feed(m[0] + m[1] + other[:20], T0)
    cut.drop_partial()  # we stopped reading while the stream still flowed
    result = cut.finish({0: 2})
    assert (result.truncated, result.corrupted, result.received) == (0, 0, 2)
    assert cut.partial_at() is None


def test_observe_takes_single_frames() -> None:
    auditor = StreamAuditor(TAG)
    for i, msg in enumerate(build(0, 3)):
        auditor.observe(msg, T0 + i)
    auditor.observe(b"\xef\xbe\xad\xde" + bytes(20), T0)
    result = auditor.finish({0: 3})
    assert (result.received, result.garbage_runs) == (3, 1)


def test_largest_inter_arrival_gap() -> None:
    m = build(0, 6)
    auditor = StreamAuditor(TAG)
    for i, at in enumerate([0, 1, 2, 40, 41, 45]):
        auditor.feed(m[i], T0 + at * MS)
    auditor.feed(load_vectors()["V6"], T0 + 500 * MS)  # not ours: does not end a gap
    result = auditor.finish({0: 6})
    assert result.max_gap_ns == 38 * MS
    assert result.max_gap_end_ns == T0 + 40 * MS
    assert (result.first_ns, result.last_ns) == (T0, T0 + 45 * MS)


def test_latency_percentiles() -> None:
    auditor = StreamAuditor(TAG)
    msgs = build(0, 1000)
    for i, msg in enumerate(msgs):  # latency of message i+1 is (i+1) microseconds
        auditor.feed(msg, T0 + (i + 1) * 1000)
    lat = auditor.finish({0: 1000}).latency
    assert lat.count == 1000
    assert (lat.min, lat.max) == (1000, 1_000_000)
    for got, want in ((lat.p50, 500_000), (lat.p99, 990_000), (lat.p999, 999_000)):
        assert want <= got <= want * (1 + 1 / 64)


def test_complete_and_combine() -> None:
    m = build(0, 4)
    first, second = StreamAuditor(TAG), StreamAuditor(TAG)
    first.feed(b"".join(m), T0 + 5)
    second.feed(b"".join(m[:3]), T0 + 7)
    assert first.complete({0: 4})
    assert not second.complete({0: 4})
    total = combine([first.finish({0: 4}), second.finish({0: 4})])
    assert (total.expected, total.received, total.lost, total.streams) == (8, 7, 1, 2)
    assert (total.latency.count, total.latency.max) == (7, 7)


def test_big_jump_is_one_interval() -> None:
    track = PublisherTrack()
    track.arrive(10**12)
    track.arrive(5)
    assert (track.missing, len(track.starts), track.reordered) == (10**12 - 2, 2, 1)
    result = track.result(0, 10)
    assert (result.received, result.lost, result.unexpected) == (1, 9, 1)


# ----- property tests: any drop / duplication / permutation, any chunking -------------

def model(arrivals: Sequence[int], sent: int) -> tuple[int, int, int, int, int]:
    """(received, lost, duplicated, reordered, unexpected) by definition."""
    seen: set[int] = set()
    top = dup = late = 0
    for n in arrivals:
        if n in seen:
            dup += 1
            continue
        seen.add(n)
        late += n < top
        top = max(top, n)
    received = len(seen & set(range(1, sent + 1)))
    return received, sent - received, dup, late, len(seen) - received


@st.composite
def scenario(draw: st.DrawFn) -> tuple[int, list[int]]:
    sent = draw(st.integers(0, 40))
    pool = list(range(1, sent + 1 + draw(st.integers(0, 3))))  # a few never sent
    kept = draw(st.lists(st.sampled_from(pool), max_size=60)) if pool else []
    return sent, draw(st.permutations(kept))


@settings(max_examples=300, deadline=None)
@given(scenario(), st.lists(st.integers(1, 400), max_size=8))
def test_any_arrival_order_is_classified_exactly(case: tuple[int, list[int]],
                                                 cuts: list[int]) -> None:
    sent, arrivals = case
    msgs = build(0, sent + 3)
    stream = b"".join(msgs[n - 1] for n in arrivals)
    auditor = StreamAuditor(TAG)
    pos = 0
    for cut in sorted(cuts):
        auditor.feed(stream[pos:cut], T0)
        pos = max(pos, cut)
    auditor.feed(stream[pos:], T0)
    r = auditor.finish({0: sent})
    assert (r.received, r.lost, r.duplicated, r.reordered, r.unexpected) == model(arrivals, sent)
    assert r.corrupted == 0
    assert auditor.complete({0: sent}) == (r.lost == 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.booleans()), max_size=80))
def test_several_publishers_dropping_independently(plan: list[tuple[int, bool]]) -> None:
    per_pub = {p: build(p, 30) for p in range(3)}
    counters = dict.fromkeys(range(3), 0)
    stream, kept = [], dict.fromkeys(range(3), 0)
    for pub, keep in plan:
        if counters[pub] == 30:
            continue
        counters[pub] += 1
        if keep:
            stream.append(per_pub[pub][counters[pub] - 1])
            kept[pub] += 1
    result = audit(stream, counters)
    assert result.received == sum(kept.values())
    assert result.lost == sum(counters.values()) - sum(kept.values())
    assert result.duplicated == result.reordered == 0


# ----- identity and the latency histogram -------------------------------------------

@given(st.integers(0, 2**16 - 1), st.integers(0, 255), st.integers(0, 2**40 - 1))
def test_sequence_round_trip(raw: int, publisher: int, n: int) -> None:
    tag = make_tag(raw)
    assert split_sequence(make_sequence(tag, publisher, n)) == (tag, publisher, n)
    assert make_sequence(tag, publisher, n) >= 2**63  # never a real producer's counter


def test_bad_identity_is_refused() -> None:
    with pytest.raises(ValueError, match="publisher index 256"):
        make_sequence(TAG, 256, 1)
    with pytest.raises(ValueError, match="run tag"):
        StreamAuditor(0x1234)


@given(st.integers(0, 2**63 - 1))
def test_bucket_bounds(value: int) -> None:
    index = bucket_of(value)
    assert bucket_high(index) >= value
    assert index == 0 or bucket_high(index - 1) < value
    assert bucket_high(index) - value <= value // 64


def test_histogram_merge_matches_one_histogram() -> None:
    values = [5, 90, 700, 12_345, 999_999, 3, 64_000_000]
    whole, left, right = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i, v in enumerate(values):
        whole.add(v)
        (left if i % 2 else right).add(v)
    assert LatencySummary.merge([left.summary(), right.summary()]) == whole.summary()
    assert whole.summary().max == 64_000_000
    assert whole.summary().min == 3


# ----- the load report's verdict ----------------------------------------------------

def _report(audit: AuditResult, *, disconnects: int = 0, dead: bool = False,
            busy: float = 0.3) -> LoadReport:
    conditions = Conditions("/run/r.sock", 1, 1, ("strategy",), 1000.0, 1.0, "market_data",
                            "alphapulse", 1, 250, "trade=1", (("trade", 74),), False, True, TAG)
    pub = PublisherReport(0, audit.expected, 74 * audit.expected, 10, 1.0, 0, 0, False)
    con = ConsumerReport(0, "strategy", audit, disconnects, 0, 0, dead,
                         "EOF; a strategy consumer stops for good" if dead else "", busy=busy)
    return LoadReport(conditions, (pub,), (con,), 0.1)


def test_report_verdicts_and_renderings() -> None:
    clean = _report(audit(build(0, 1000), {0: 1000}))
    assert clean.ok and clean.problems() == [] and clean.warnings() == []
    assert clean.rate_achieved == 1000
    text = render_text(clean)
    assert text.startswith("swapctl load: PASS") and "received   1,000 of 1,000" in text
    assert json.loads(json.dumps(clean.to_dict()))["total"]["received"] == 1000

    lossy = _report(audit(build(0, 1000)[:990], {0: 1000}), disconnects=1, dead=True, busy=0.95)
    assert lossy.problems() == ["10 lost", "1 unexpected disconnects",
                                "consumer 0 (strategy) dead: EOF; a strategy consumer stops "
                                "for good"]
    assert "wanted a CPU 95% of the time" in lossy.warnings()[0]
    assert render_text(lossy).startswith("swapctl load: FAIL")
    assert lossy.to_dict()["ok"] is False
