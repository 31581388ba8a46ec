"""The canary process: one publisher and a few consumers on a relay's public socket.

Run by `swapctl.swap.canary.Canary` as `python -m swapctl.swap.canary_child`; it is
an ordinary client of the relay (so it is handed off like every client). The
publisher sends uniquely numbered, checksummed messages at a steady rate and audits
its own echo; each consumer audits what it receives with `StreamAuditor`. A
"strategy" consumer stops for good on EOF (like the real arbitrage strategy); a
"dashboard" consumer reconnects at once. The parent drives it with JSON lines on
stdin ("snapshot", "mark", "stop") and reads one JSON line of answer on stdout.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from swapctl.probes.audit import StreamAuditor
from swapctl.probes.ident import make_tag
from swapctl.probes.traffic import Kind, MessageFactory, Mix

LOSS_GRACE_S = 0.5  # a message not seen this long after it was sent counts as missing
PARTIAL_GRACE_S = 1.0  # at stop, how long a message held incomplete may take to complete
# Real consumers see the canary too (it is broadcast like everything else), so it must
# not look like market data: one vendor-range TLV (type 254, 16 bytes) from source 99,
# no Trade or Quote a strategy could act on. Identity is in the sequence (bit 63 set).
CANARY_MIX = Mix(((Kind.VENDOR, 1),), vendor_size=16, vendor_type=254)
CANARY_SOURCE = 99
SYNC_INTERVAL_S = 0.01  # between start-barrier sync messages
SYNC_DEADLINE_S = 5.0  # the barrier gives up after this (the run goes on, says so)


@dataclass
class Stream:
    name: str
    mode: str  # publisher | strategy | dashboard
    auditor: StreamAuditor
    sock: socket.socket | None = None
    disconnects: int = 0
    dead: bool = False
    window_gap_ns: int = 0
    last_ns: int = 0
    pending: bytearray = field(default_factory=bytearray)  # publisher: bytes not yet written


class CanaryChild:
    def __init__(self, args: argparse.Namespace) -> None:
        self.path = args.socket
        self.rate = args.rate
        self.tag = make_tag(args.tag)
        self.sel = selectors.DefaultSelector()
        self.factory = MessageFactory(domain=args.domain_byte, source=args.source, publisher=0,
                                      run_tag=self.tag, mix=CANARY_MIX)
        self.streams = [Stream("publisher", "publisher", StreamAuditor(self.tag))]
        self.streams += [Stream(f"{mode}-{i}", mode, StreamAuditor(self.tag))
                         for i, mode in enumerate(args.consumers.split(","))]
        self.sent = 0
        self.mark_sent = 0  # messages numbered up to this were sent before the last mark
        self.history: collections.deque[tuple[int, int]] = collections.deque(maxlen=4096)
        self.publishing = True
        self.started = time.monotonic()
        self.sel.register(sys.stdin, selectors.EVENT_READ, None)

    def connect_all(self) -> None:
        for stream in self.streams:
            self._connect(stream)

    def _connect(self, stream: Stream) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        sock.setblocking(False)
        stream.sock = sock
        self.sel.register(sock, selectors.EVENT_READ, stream)

    def _lost_connection(self, stream: Stream) -> None:
        assert stream.sock is not None
        self.sel.unregister(stream.sock)
        stream.sock.close()
        stream.sock = None
        stream.disconnects += 1
        stream.auditor.reset_stream()
        stream.pending.clear()
        if stream.mode == "strategy":
            stream.dead = True  # the real strategy consumer never comes back
            return
        for _ in range(50):  # dashboard and publisher: reconnect (publisher with backoff)
            try:
                self._connect(stream)
                return
            except OSError:
                time.sleep(0.1 if stream.mode == "publisher" else 0.02)
        stream.dead = True

    def run(self) -> None:
        self.connect_all()
        synced = self._barrier()
        self._answer({"ready": True, "pid": os.getpid(), "tag": self.tag, "synced": synced})
        while True:
            for key, _ in self.sel.select(timeout=0.0002 if self.publishing else 0.05):
                if key.data is None:
                    if not self._command():
                        return
                else:
                    self._read(key.data)
            if self.publishing:
                self._publish()

    def _barrier(self) -> bool:
        """Repeat a sync message (number 0, never judged) until each stream, echo
        included, has one: a relay may subscribe a client some time after its connect
        returned (the Rust relay takes it from its accept queue later), and messages
        published before that are not the client's to miss. Numbered publishing starts
        after (its schedule from now). False if not all synced within the deadline."""
        deadline = time.monotonic() + SYNC_DEADLINE_S
        pub = self.streams[0]
        while time.monotonic() < deadline:
            if all(s.auditor.synced(1) for s in self.streams):
                break
            if pub.sock is not None:
                try:
                    pub.sock.send(self.factory.sync(time.time_ns()))
                except BlockingIOError:
                    pass
                except OSError:
                    self._lost_connection(pub)
            for key, _ in self.sel.select(timeout=SYNC_INTERVAL_S):
                if key.data is not None:
                    self._read(key.data)
        self.started = time.monotonic()
        return all(s.auditor.synced(1) for s in self.streams)

    def _read(self, stream: Stream) -> None:
        assert stream.sock is not None
        try:
            data = stream.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost_connection(stream)
            return
        now = time.time_ns()
        if stream.last_ns:
            stream.window_gap_ns = max(stream.window_gap_ns, now - stream.last_ns)
        stream.last_ns = now
        stream.auditor.feed(data, now)

    def _publish(self) -> None:
        pub = self.streams[0]
        due = int((time.monotonic() - self.started) * self.rate) - self.sent
        if due > 0 and not pub.pending and pub.sock is not None:
            batch = self.factory.build(min(due, 1000), time.time_ns())
            pub.pending += batch.data
            self.sent += batch.count
            self.history.append((time.monotonic_ns(), self.sent))
        if pub.pending and pub.sock is not None:
            try:
                written = pub.sock.send(pub.pending)
                del pub.pending[:written]
            except BlockingIOError:
                pass
            except OSError:
                self._lost_connection(pub)

    def _sent_before(self, seconds: float) -> int:
        limit = time.monotonic_ns() - int(seconds * 1e9)
        best = 0
        for at, sent in self.history:
            if at > limit:
                break
            best = sent
        return best

    def _command(self) -> bool:
        line = sys.stdin.readline()
        if not line:
            return False
        command = line.strip()
        if command == "snapshot":
            self._answer(self.snapshot())
        elif command == "mark":
            self.mark_sent = self.sent
            for stream in self.streams:
                stream.window_gap_ns = 0
            self._answer({"mark_ns": time.time_ns()})
        elif command == "stop":
            self._answer(self.finish())
            return False
        return True

    def snapshot(self) -> dict[str, Any]:
        old = self._sent_before(LOSS_GRACE_S)
        return {"sent": self.sent, "now_ns": time.time_ns(), "streams": [
            {"name": s.name, "mode": s.mode, "arrivals": s.auditor.arrivals,
             "missing": self._missing_since_mark(s, old),
             "behind": max(0, old - (s.auditor.tracks[0].next - 1)) if not s.dead else 0,
             "duplicated": s.auditor.tracks[0].duplicated,
             "reordered": s.auditor.tracks[0].reordered,
             "corrupted": (s.auditor.checksum_mismatches + s.auditor.garbage_runs
                           + s.auditor.unverifiable),
             "disconnects": s.disconnects, "dead": s.dead, "window_gap_ns": s.window_gap_ns,
             "last_ns": s.last_ns}
            for s in self.streams]}

    def _missing_since_mark(self, stream: Stream, old: int) -> int:
        """Messages sent after the last mark, due by now, not received."""
        if stream.dead:
            return 0
        track = stream.auditor.tracks[0]
        return track.missing_upto(old) - track.missing_upto(min(old, self.mark_sent))

    def finish(self) -> dict[str, Any]:
        self.publishing = False
        pub = self.streams[0]
        deadline = time.monotonic() + 3.0
        while pub.pending and pub.sock is not None and time.monotonic() < deadline:
            self._publish()
        sent = {0: self.sent}
        while time.monotonic() < deadline:
            live = [s for s in self.streams if not s.dead and s.sock is not None]
            if all(s.auditor.complete(sent) for s in live):
                break
            for key, _ in self.sel.select(timeout=0.05):
                if key.data is not None:
                    self._read(key.data)
        self._stop_between_messages(time.monotonic() + PARTIAL_GRACE_S)
        return {"sent": self.sent, "rate": self.rate, "streams": [
            {"name": s.name, "mode": s.mode, "disconnects": s.disconnects, "dead": s.dead,
             **s.auditor.finish(sent).to_dict()}
            for s in self.streams]}

    def _stop_between_messages(self, deadline: float) -> None:
        """Other clients' traffic still flows when the canary stops, so a stream's last
        read can end inside a message: cut by this stop, not torn by the relay. Read on
        until each message held incomplete now is whole, then let go of whatever
        incomplete message the flow brought since. One still incomplete at `deadline`
        (nothing more came) stays, and `finish` counts it truncated: a relay that
        stopped mid-message."""
        cut = {s.name: s.auditor.partial_at() for s in self.streams
               if not s.dead and s.sock is not None}
        waiting = [s for s in self.streams if cut.get(s.name) is not None]
        while waiting and time.monotonic() < deadline:
            for key, _ in self.sel.select(timeout=0.05):
                if key.data is not None:
                    self._read(key.data)
            waiting = [s for s in waiting if s.sock is not None
                       and s.auditor.partial_at() == cut[s.name]]
        for s in self.streams:
            if s.name in cut and s not in waiting and s.sock is not None:
                s.auditor.drop_partial()

    def _answer(self, data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m swapctl.swap.canary_child")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--consumers", default="strategy,dashboard")
    parser.add_argument("--domain-byte", type=int, default=1)
    parser.add_argument("--source", type=int, default=CANARY_SOURCE)
    parser.add_argument("--tag", type=int, default=os.getpid())
    CanaryChild(parser.parse_args()).run()


if __name__ == "__main__":
    main()
