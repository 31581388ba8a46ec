"""`swapctl shadow`: mirror a live relay's traffic into a candidate and diff continuously.

How it works: a tap connects to the live relay like any consumer and never writes
(the socket is only ever read). What the live relay forwards is cut into frames and
gaps; each piece is queued for a *mirror* connection that publishes it into the
candidate (started isolated, on a private socket), and becomes *expected* output.
A *watch* connection consumes the candidate's output, which the LiveMatcher compares
with what was expected (diff/live.py). One selector loop does all of it; the mirror
queue is bounded in bytes and, when full, drops whole pieces and counts them, so the
tap always keeps reading and the live relay never waits for the candidate.
Limits: the live relay's input is not visible to a consumer, so this checks that the
candidate forwards what the live relay forwarded; the candidate's echo to the mirror
is read and discarded.
"""

from __future__ import annotations

import selectors
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from swapctl.capture.tap import connect_tap, read_some
from swapctl.diff.live import LiveMatcher
from swapctl.diff.report import DiffReport, RunInfo
from swapctl.diff.tokens import Cutter, Gap, Token
from swapctl.scenarios.relays import RelayProcess, RelaySpec

MIRROR_PIECE = 64 * 1024  # the most the mirror drops at once when its queue is full


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    live: Path
    candidate: RelaySpec
    duration: float
    queue_bytes: int = 16 * 1024 * 1024  # mirror queue bound
    lag: float = 2.0  # a mirrored frame not delivered within this is missing
    window: int = 100_000  # expected frames kept for matching
    interval: float = 1.0  # seconds between live summaries
    domain_byte: int = 1


@dataclass(slots=True)
class _Mirror:
    queue: deque[bytes]
    queued: int = 0
    dropped_frames: int = 0
    dropped_bytes: int = 0
    mirrored_bytes: int = 0


def _join(tokens: list[Token]) -> bytes:
    return b"".join(t.data if isinstance(t, Gap) else t for t in tokens)


class Shadow:
    def __init__(self, settings: ShadowSettings, progress: Callable[[str], None]) -> None:
        self.s = settings
        self.progress = progress
        self.matcher = LiveMatcher(window=settings.window)
        self.mirror = _Mirror(deque())
        self.live_bytes = 0

    def run(self) -> DiffReport:
        workdir = Path(tempfile.mkdtemp(prefix="swapctl-shadow-"))
        relay = RelayProcess(self.s.candidate, workdir, "candidate")
        start = time.monotonic()
        try:
            tap = connect_tap(self.s.live)
            with relay, tap, selectors.DefaultSelector() as sel:
                relay.start()
                mirror, watch = (connect_tap(relay.socket) for _ in range(2))
                with mirror, watch:
                    self.progress(f"shadow: ready: tapping {self.s.live}, candidate "
                                  f"{self.s.candidate.label!r} on {relay.socket}")
                    self._loop(sel, tap, mirror, watch, relay)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        info = RunInfo("shadow", 0, f"live relay at {self.s.live}", self.s.candidate.label,
                       self.s.domain_byte, time.monotonic() - start, self._notes(relay))
        return DiffReport(info, self.matcher.comparison(self.mirror.dropped_frames))

    def _notes(self, relay: RelayProcess) -> tuple[str, ...]:
        notes = [f"mirrored {self.mirror.mirrored_bytes} of {self.live_bytes} live bytes"]
        if relay.exit_code not in (None, 0, -15):
            notes.append(f"the candidate exited with code {relay.exit_code}")
        return tuple(notes)

    def _loop(self, sel: selectors.BaseSelector, tap: socket.socket, mirror: socket.socket,
              watch: socket.socket, relay: RelayProcess) -> None:
        live_cutter, watch_cutter = Cutter(), Cutter()
        sel.register(tap, selectors.EVENT_READ, "tap")
        sel.register(watch, selectors.EVENT_READ, "watch")
        sel.register(mirror, selectors.EVENT_READ, "mirror")
        begin = time.monotonic()
        stop_live = begin + self.s.duration
        next_note = begin + self.s.interval
        last_rx = begin
        while True:
            now = time.monotonic()
            tapping = now < stop_live and tap.fileno() >= 0
            if not tapping and not self.mirror.queue and now - last_rx > 0.2:
                break
            if not tapping and now > stop_live + self.s.lag + 1.0:
                break
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.mirror.queue else 0)
            sel.modify(mirror, want, "mirror")
            for key, mask in sel.select(0.05):
                if key.data == "tap" and tapping:
                    self._from_live(tap, live_cutter, now, sel)
                elif key.data == "watch":
                    data = read_some(watch)
                    if data:
                        last_rx = now
                        self.matcher.observe([t for _, ts in watch_cutter.feed(data)
                                              for t in ts])
                elif key.data == "mirror":
                    self._mirror_io(mirror, mask)
            self.matcher.expire(now - self.s.lag)
            if now >= next_note:
                next_note += self.s.interval
                self.progress(self._summary(now - begin, relay))
        self.matcher.finish()

    def _from_live(self, tap: socket.socket, cutter: Cutter, now: float,
                   sel: selectors.BaseSelector) -> None:
        data = read_some(tap)
        if data is None:
            return
        if not data:
            self.progress("shadow: the live relay closed the tap connection")
            sel.unregister(tap)
            tap.close()
            return
        self.live_bytes += len(data)
        for piece, tokens in self._bounded(cutter.feed(data)):
            if self.mirror.queued + len(piece) > self.s.queue_bytes:
                self.mirror.dropped_frames += sum(not isinstance(t, Gap) for t in tokens)
                self.mirror.dropped_bytes += len(piece)
                self.matcher.skip_live(tokens)
                continue
            self.mirror.queue.append(piece)
            self.mirror.queued += len(piece)
            self.matcher.expect(tokens, now)

    def _bounded(self, pieces: list[tuple[bytes, list[Token]]]
                 ) -> Iterator[tuple[bytes, list[Token]]]:
        """Runs of frames cut into pieces of at most MIRROR_PIECE bytes (whole frames), so
        a full queue drops a little, not a whole read."""
        limit = min(MIRROR_PIECE, max(1, self.s.queue_bytes // 4))
        for piece, tokens in pieces:
            if len(piece) <= limit:
                yield piece, tokens
                continue
            group: list[Token] = []
            size = 0
            for tok in tokens:
                n = len(tok.data) if isinstance(tok, Gap) else len(tok)
                if group and size + n > limit:
                    yield _join(group), group
                    group, size = [], 0
                group.append(tok)
                size += n
            if group:
                yield _join(group), group

    def _mirror_io(self, mirror: socket.socket, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            read_some(mirror)  # the candidate's echo to the mirror: not compared
        if mask & selectors.EVENT_WRITE and self.mirror.queue:
            head = self.mirror.queue[0]
            try:
                sent = mirror.send(head)
            except BlockingIOError:
                return
            self.mirror.queued -= sent
            self.mirror.mirrored_bytes += sent
            if sent == len(head):
                self.mirror.queue.popleft()
            else:
                self.mirror.queue[0] = head[sent:]

    def _summary(self, elapsed: float, relay: RelayProcess) -> str:
        m = self.matcher
        counts = ", ".join(f"{n} {c.value}" for c, n in m.counts.items()) or "no differences"
        state = "" if relay.exit_code is None else f"; candidate EXITED ({relay.exit_code})"
        return (f"shadow {elapsed:.0f}s: live {m.live_frames} frames, matched {m.matched}, "
                f"waiting {m.pending}, {counts}, dropped {self.mirror.dropped_frames} "
                f"(queue full){state}")
