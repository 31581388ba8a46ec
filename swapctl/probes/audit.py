"""The loss auditor: classifies every message one consumer received. Pure, no I/O.

How it works: `feed(data, recv_ns)` takes bytes exactly as read from a connection;
a `Framer` cuts them into runs of whole messages, and one tight loop checks each
message's CRC-32 and reads its sequence and timestamp. A message whose
sequence carries this run's tag (see `ident`) goes to its publisher's
`PublisherTrack` (in order / reordered / duplicated, exactly, O(1) in order) and to
the latency histogram (receive time minus the publisher's send timestamp). Anything
else is counted, never judged: a publisher identification header (empty payload,
sequence 0), or *foreign* traffic (other clients on the same relay).
Corruption is counted as events: a frame whose checksum does not match, a frame of
this run without a checksum (ours always carry one), a run of garbage bytes skipped
to resynchronise, a partial message at the end of a connection. A damaged frame is
charged to the message it claims to be only where that is plausible, so a corrupted
message is reported as corrupted, not also as lost.
`reset_stream()` marks a reconnect; `finish(sent)` turns the counts into an
`AuditResult` once the publishers' sent counts are known.
The inter-arrival gap is measured between reads that delivered this run's messages:
the pause a client saw.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from swapctl.probes.ident import MAX_PUBLISHERS, N_MASK, PUBLISHER_SHIFT, TAG_SHIFT, is_tag
from swapctl.probes.latency import LatencyHistogram, LatencySummary
from swapctl.probes.tracker import PublisherAudit, PublisherTrack
from swapctl.protocol import Framer, Frames, Skipped
from swapctl.protocol.header import HEADER_SIZE

_FIELDS = struct.Struct("<8xQQII")  # sequence, timestamp, payload_size, checksum


@dataclass(frozen=True, slots=True)
class AuditResult:
    """One consumer's verdict (or several merged with `combine`). Times in ns."""

    expected: int  # messages sent by this run's publishers
    received: int  # distinct, intact
    lost: int
    duplicated: int
    reordered: int
    corrupted: int  # checksum_mismatches + unverifiable + garbage_runs + truncated
    unexpected: int  # claims this run's tag but was never sent
    checksum_mismatches: int = 0
    unverifiable: int = 0  # this run's tag without a checksum
    garbage_runs: int = 0
    garbage_bytes: int = 0
    truncated: int = 0  # partial message at the end of a connection or of the audit
    foreign: int = 0  # other traffic on the relay (not judged)
    id_headers: int = 0  # publisher identification headers (not judged)
    streams: int = 1  # connections observed (1 + reconnects)
    first_ns: int = 0
    last_ns: int = 0
    max_gap_ns: int = 0
    max_gap_end_ns: int = 0  # receive time of the read that ended the largest gap
    latency: LatencySummary = field(default_factory=LatencySummary)
    publishers: tuple[PublisherAudit, ...] = ()

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.corrupted
                    or self.unexpected)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {name: getattr(self, name) for name in _COUNT_FIELDS}
        out.update(clean=self.clean, first_ns=self.first_ns, last_ns=self.last_ns,
                   max_gap_ns=self.max_gap_ns, max_gap_end_ns=self.max_gap_end_ns,
                   latency=self.latency.to_dict(),
                   publishers=[p.to_dict() for p in self.publishers])
        return out


_COUNT_FIELDS = ("expected", "received", "lost", "duplicated", "reordered", "corrupted",
                 "unexpected", "checksum_mismatches", "unverifiable", "garbage_runs",
                 "garbage_bytes", "truncated", "foreign", "id_headers", "streams")


def combine(results: Iterable[AuditResult]) -> AuditResult:
    """Totals over several consumers: counts added, largest gap, latency merged."""
    items = list(results)
    if not items:
        return AuditResult(0, 0, 0, 0, 0, 0, 0, streams=0)
    counts = {name: sum(getattr(r, name) for r in items) for name in _COUNT_FIELDS}
    widest = max(items, key=lambda r: r.max_gap_ns)
    firsts = [r.first_ns for r in items if r.first_ns]
    return AuditResult(
        **counts,
        first_ns=min(firsts, default=0),
        last_ns=max(r.last_ns for r in items),
        max_gap_ns=widest.max_gap_ns,
        max_gap_end_ns=widest.max_gap_end_ns,
        latency=LatencySummary.merge(r.latency for r in items),
    )


class StreamAuditor:
    """Classifies the stream of one consumer connection (and its reconnects)."""

    def __init__(self, run_tag: int) -> None:
        if not is_tag(run_tag):
            raise ValueError(f"run tag 0x{run_tag:X} is not 16 bits with bit 15 set")
        self.run_tag = run_tag
        self.tracks = [PublisherTrack() for _ in range(MAX_PUBLISHERS)]
        self.latency = LatencyHistogram()
        self._framer = Framer()
        self.arrivals = 0  # intact messages of this run, duplicates included
        self.checksum_mismatches = self.unverifiable = 0
        self.garbage_runs = self.garbage_bytes = self.truncated = 0
        self.foreign = self.id_headers = 0
        self.streams = 1
        self.first_ns = self.last_ns = 0
        self.max_gap_ns = self.max_gap_end_ns = 0

    def feed(self, data: bytes, recv_ns: int) -> None:
        """Bytes as read from the connection, received at `recv_ns` (time.time_ns())."""
        for event in self._framer.feed(data):
            if isinstance(event, Frames):
                self._frames(event.data, recv_ns)
            elif isinstance(event, Skipped):
                self.garbage_runs += 1
                self.garbage_bytes += event.length
            else:
                self._damaged(event.data)

    def observe(self, frame: bytes, recv_ns: int) -> None:
        """One whole message, already framed (e.g. by a relay or a capture)."""
        if len(frame) < HEADER_SIZE or _FIELDS.unpack_from(frame)[2] != len(frame) - 32:
            self.garbage_runs += 1
            self.garbage_bytes += len(frame)
        else:
            self._frames(frame, recv_ns)

    def partial_at(self) -> int | None:
        """Where in this connection's stream a message held incomplete starts, if any."""
        return self._framer.pending_at

    def drop_partial(self) -> None:
        """Reading stopped while the stream still flowed: the incomplete message held
        was cut by that stop, not by the sender; `finish` does not count it truncated."""
        self._framer = Framer()

    def reset_stream(self) -> None:
        """The connection ended (a reconnect may follow): a partial message is truncated."""
        for event in self._framer.feed_eof():
            if isinstance(event, Skipped):
                self.truncated += 1
                self.garbage_bytes += event.length
        self._framer = Framer()
        self.streams += 1

    def _frames(self, data: bytes, recv_ns: int) -> None:
        """The hot loop over a run of whole messages: checksum, identity, send time.
        Latency is binned after the loop per distinct timestamp (a publisher stamps a
        whole batch with one), which keeps the loop short."""
        tag, tracks = self.run_tag, self.tracks
        unpack, crc32, view = _FIELDS.unpack_from, zlib.crc32, memoryview(data)
        stamps: list[int] = []
        stamp = stamps.append
        pos, end = 0, len(data)
        while pos < end:
            seq, ts, size, crc = unpack(data, pos)
            start, pos = pos, pos + 32 + size
            if crc and crc != crc32(view[start + 32 : pos], crc32(view[start : start + 28])):
                self._damaged(data[start:pos])
                continue
            if seq >> TAG_SHIFT != tag or not crc:
                self._other(seq, size, crc)
                continue
            track = tracks[(seq >> PUBLISHER_SHIFT) & 0xFF]
            n = seq & N_MASK
            if n == track.next:
                track.next = n + 1
            elif track.arrive(n):
                continue  # a start-barrier sync message
            stamp(ts)
        view.release()
        if stamps:
            self._arrived(recv_ns, stamps)

    def _arrived(self, recv_ns: int, stamps: list[int]) -> None:
        self.arrivals += len(stamps)
        latency = self.latency
        for ts, count in Counter(stamps).items():
            latency.add(recv_ns - ts, count)
        if self.last_ns:
            gap = recv_ns - self.last_ns
            if gap > self.max_gap_ns:
                self.max_gap_ns, self.max_gap_end_ns = gap, recv_ns
        else:
            self.first_ns = recv_ns
        self.last_ns = recv_ns

    def _other(self, seq: int, size: int, crc: int) -> None:
        if seq >> TAG_SHIFT == self.run_tag:
            self.unverifiable += 1
        elif seq == 0 and size == 0:
            self.id_headers += 1
        else:
            self.foreign += 1

    def _damaged(self, frame: bytes) -> None:
        self.checksum_mismatches += 1
        if len(frame) >= HEADER_SIZE:
            seq = _FIELDS.unpack_from(frame)[0]
            if seq >> TAG_SHIFT == self.run_tag:
                self.tracks[(seq >> PUBLISHER_SHIFT) & 0xFF].arrive_damaged(seq & N_MASK)

    def synced(self, publishers: int) -> bool:
        """A sync message from each of publishers 0..publishers-1 has arrived."""
        return all(self.tracks[p].syncs for p in range(publishers))

    def complete(self, sent: Mapping[int, int]) -> bool:
        """Every message of every publisher has arrived (intact or damaged)."""
        return all(self.tracks[p].complete(n) for p, n in sent.items())

    def finish(self, sent: Mapping[int, int]) -> AuditResult:
        """The verdict, given how many messages each publisher index sent."""
        pubs = tuple(
            track.result(index, sent.get(index, 0))
            for index, track in enumerate(self.tracks)
            if index in sent or track.seen
        )
        truncated = self.truncated + (1 if self._framer.buffered else 0)  # stuck partial
        corrupted = self.checksum_mismatches + self.unverifiable + self.garbage_runs + truncated
        return AuditResult(
            expected=sum(sent.values()),
            received=sum(p.received for p in pubs),
            lost=sum(p.lost for p in pubs),
            duplicated=sum(p.duplicated for p in pubs),
            reordered=sum(p.reordered for p in pubs),
            corrupted=corrupted,
            unexpected=sum(p.unexpected for p in pubs),
            checksum_mismatches=self.checksum_mismatches,
            unverifiable=self.unverifiable,
            garbage_runs=self.garbage_runs,
            garbage_bytes=self.garbage_bytes,
            truncated=truncated,
            foreign=self.foreign,
            id_headers=self.id_headers,
            streams=self.streams,
            first_ns=self.first_ns,
            last_ns=self.last_ns,
            max_gap_ns=self.max_gap_ns,
            max_gap_end_ns=self.max_gap_end_ns,
            latency=self.latency.summary(),
            publishers=pubs,
        )
