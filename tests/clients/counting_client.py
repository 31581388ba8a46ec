#!/usr/bin/env python3
"""An independent relay client that counts for itself (the judge of a swap report).

    python tests/clients/counting_client.py publisher --socket S --out pub.json --source 77
    python tests/clients/counting_client.py dashboard --socket S --out dash.json
    python tests/clients/counting_client.py strategy  --socket S --out strat.json

How it works: standard library only (it shares no code with swapctl, so a bug there
cannot hide here). Each role behaves as the real client it stands for
(shared/protocol/protocol-v2.md section 4):
- publisher: writes the 32-byte identification header on every connect, then paced
  Protocol V2 messages (its source byte, sequence 1, 2, ..., a CRC, a vendor TLV with the
  run tag); it NEVER reads (its echo backs up in the relay). On a write error it
  reconnects with backoff 0.1 s x 2^n (at most 10 attempts) and writes again from the
  message the failure hit. A message counts as sent once its last byte was accepted.
- dashboard: frames by 32 + payload_size, rescans for the magic after garbage,
  reconnects at once on EOF (and every --retry seconds while refused).
- strategy: frames the same way; on EOF it stops for good: writes its counts, exits.
Consumers check each source's sequence themselves: first seen, highest, distinct,
duplicated, reordered (arrived after a higher one), missing (gaps below the highest).
Frames without the run tag (the canary's, the identification header) are counted as
foreign and otherwise ignored.

Readiness: OUT.ready appears once a publisher has written its first message, or a
consumer has received its first tagged one. On SIGTERM/SIGINT a publisher stops writing
and writes OUT, but stays connected (as the real one, which never leaves) until a second
signal or --linger seconds: closing at once could make the relay drop the last messages
still unread in its socket when its echo write fails, a loss that is not the swap's. A
consumer reads on until no tagged frame arrived for --settle seconds (at most
--settle-limit), then writes OUT and exits. OUT is written atomically (rename).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

MAGIC = 0xDEADBEEF
HEADER = struct.Struct("<IBBBBQQII")  # magic, domain, version, source, flags, seq, ts, size, crc
MAGIC_BYTES = struct.pack("<I", MAGIC)
TAG_TLV = 231  # a vendor TLV type: 8 bytes, the run tag
MAX_PAYLOAD = 1 << 20
STOP = False
SIGNALS = 0


def _on_signal(signum: int, frame: object) -> None:
    global STOP, SIGNALS
    STOP = True
    SIGNALS += 1


def message(domain: int, source: int, seq: int, tag: int) -> bytes:
    payload = bytes([TAG_TLV, 8]) + struct.pack("<Q", tag)
    head = HEADER.pack(MAGIC, domain, 1, source, 0, seq, time.time_ns(), len(payload), 0)
    crc = zlib.crc32(head[:28] + payload)
    return head[:28] + struct.pack("<I", crc) + payload


def connect(path: str, timeout: float) -> socket.socket:
    """Connect, retrying every 20 ms until `timeout` (0: one try)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() >= deadline or STOP:
                raise
            time.sleep(0.02)


def write_json(out: Path, data: dict[str, Any]) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, out)


class Publisher:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.msg_len = len(message(a.domain, a.source, 1, a.tag))
        self.sent = self.bytes_sent = self.disconnects = self.reconnects = 0
        self.dead = False
        self.errors: list[str] = []
        self.sock: socket.socket | None = None
        self.pending = b""  # bytes of messages sent+1 .. not yet fully accepted

    def attach(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        id_header = HEADER.pack(MAGIC, 1, 1, 2, 0, 0, 0, 0, 0)  # vector V6: domain 1, source 2
        sock.sendall(id_header)
        self.sock = sock

    def run(self) -> dict[str, Any]:
        a = self.a
        self.attach(connect(a.socket, a.connect_timeout))
        started = time.monotonic()
        built, ready = 0, False
        while not STOP and not self.dead:
            due = int(a.rate * (time.monotonic() - started)) + 1 - built
            if due > 0 and len(self.pending) < 64 * self.msg_len:
                n = min(due, 64)
                self.pending += b"".join(message(a.domain, a.source, built + i + 1, a.tag)
                                         for i in range(n))
                built += n
            if self.pending:
                self.write()
                if self.sent and not ready:
                    Path(a.out + ".ready").touch()
                    ready = True
            else:
                time.sleep(min(0.005, max(0.0, (built + 1) / a.rate - (time.monotonic()
                                                                          - started))))
        counts = self.counts()
        write_json(Path(a.out), counts)
        end = time.monotonic() + a.linger
        while SIGNALS < 2 and time.monotonic() < end:
            time.sleep(0.02)
        if self.sock is not None:
            self.sock.close()
        return counts

    def counts(self) -> dict[str, Any]:
        a = self.a
        return {"role": "publisher", "pid": os.getpid(), "source": a.source, "sent": self.sent,
                "bytes_sent": self.bytes_sent, "disconnects": self.disconnects,
                "reconnects": self.reconnects, "dead": self.dead, "errors": self.errors[-5:]}

    def write(self) -> None:
        assert self.sock is not None
        try:
            n = self.sock.send(self.pending[: 64 * self.msg_len])
        except TimeoutError:
            return  # the relay is not reading (frozen, busy): try again
        except OSError as exc:
            self.broken(f"write failed: {exc}")
            return
        before = self._messages_left()
        self.pending = self.pending[n:]
        self.bytes_sent += n
        self.sent += before - self._messages_left()  # a message counts once all of it went out

    def _messages_left(self) -> int:
        return -(-len(self.pending) // self.msg_len)  # the first one may be partly written

    def broken(self, reason: str) -> None:
        """Like the real publisher: reconnect with backoff, resend the failed message."""
        assert self.sock is not None
        self.sock.close()
        self.sock = None
        self.disconnects += 1
        self.errors.append(reason)
        cut = len(self.pending) % self.msg_len
        if cut:  # a message half written into the dead connection: written again whole
            again = message(self.a.domain, self.a.source, self.sent + 1, self.a.tag)
            self.pending = again + self.pending[cut:]
        for attempt in range(10):
            time.sleep(0.1 * 2**attempt)
            if STOP:
                return
            try:
                self.attach(connect(self.a.socket, 0.0))
            except OSError as exc:
                self.errors.append(f"reconnect {attempt + 1}/10 failed: {exc}")
                continue
            self.reconnects += 1
            return
        self.dead = True


class Source:
    __slots__ = ("distinct", "duplicated", "first", "highest", "received", "reordered", "seen")

    def __init__(self, first: int) -> None:
        self.first = self.highest = first
        self.received = self.distinct = self.duplicated = self.reordered = 0
        self.seen = bytearray()

    def add(self, seq: int) -> None:
        self.received += 1
        if seq >= len(self.seen):
            self.seen.extend(bytes(max(seq + 1 - len(self.seen), len(self.seen))))
        if self.seen[seq]:
            self.duplicated += 1
            return
        self.seen[seq] = 1
        self.distinct += 1
        if seq < self.highest:
            self.reordered += 1
        self.highest = max(self.highest, seq)

    def summary(self) -> dict[str, int]:
        return {"first": self.first, "highest": self.highest, "received": self.received,
                "distinct": self.distinct, "duplicated": self.duplicated,
                "reordered": self.reordered,
                "missing": self.highest - self.first + 1 - self.distinct}


class Consumer:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.tag_payload = bytes([TAG_TLV, 8]) + struct.pack("<Q", a.tag)
        self.sources: dict[int, Source] = {}
        self.buf = bytearray()
        self.foreign = self.corrupted = self.garbage_bytes = self.truncated = 0
        self.disconnects = self.reconnects = self.connect_failures = 0
        self.dead = False
        self.errors: list[str] = []  # each EOF or failed connect, with when (monotonic)
        self.last_tagged = time.monotonic()

    def run(self) -> dict[str, Any]:
        a = self.a
        sock: socket.socket | None = connect(a.socket, a.connect_timeout)
        settle_from: float | None = None
        while True:
            now = time.monotonic()
            if STOP and settle_from is None:
                settle_from, self.last_tagged = now, now
            if settle_from is not None and (now - self.last_tagged >= a.settle
                                            or now - settle_from >= a.settle_limit):
                break
            if sock is None:
                if self.dead or settle_from is not None:
                    break
                sock = self.reconnect()
                continue
            sock.settimeout(0.1)
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                data = b""
                self.note(f"read failed: {exc}")
            else:
                if not data:
                    self.note("EOF: the relay closed the connection")
            if data:
                self.feed(data)
                continue
            sock.close()
            sock = None
            self.disconnects += 1
            self.truncated += 1 if self.buf else 0
            self.buf.clear()
            if a.role == "strategy":
                self.dead = True  # stops for good, as the real strategy does
        if sock is not None:
            sock.close()
        return {"role": a.role, "pid": os.getpid(), "dead": self.dead,
                "disconnects": self.disconnects, "reconnects": self.reconnects,
                "connect_failures": self.connect_failures, "errors": self.errors[-10:],
                "foreign": self.foreign, "corrupted": self.corrupted,
                "garbage_bytes": self.garbage_bytes, "truncated_at_eof": self.truncated,
                "sources": {str(s): src.summary() for s, src in sorted(self.sources.items())}}

    def reconnect(self) -> socket.socket | None:
        try:
            sock = connect(self.a.socket, 0.0)
        except OSError as exc:
            self.connect_failures += 1
            self.note(f"reconnect failed: {exc}")
            time.sleep(self.a.retry)
            return None
        self.reconnects += 1
        self.note("reconnected")
        return sock

    def note(self, what: str) -> None:
        self.errors.append(f"{time.monotonic():.3f} {what}")

    def feed(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while len(buf) - pos >= HEADER.size:
            if buf[pos:pos + 4] != MAGIC_BYTES:
                nxt = buf.find(MAGIC_BYTES, pos + 1)
                end = nxt if nxt >= 0 else len(buf) - 3
                self.garbage_bytes += end - pos
                pos = end
                continue
            size = struct.unpack_from("<I", buf, pos + 24)[0]
            if size > MAX_PAYLOAD:
                self.garbage_bytes += 1
                pos += 1
                continue
            if len(buf) - pos < HEADER.size + size:
                break
            self.frame(bytes(buf[pos:pos + HEADER.size + size]))
            pos += HEADER.size + size
        del buf[:pos]

    def frame(self, frame: bytes) -> None:
        payload = frame[HEADER.size:]
        if payload != self.tag_payload:
            self.foreign += 1
            return
        _, _, _, source, _, seq, _, _, crc = HEADER.unpack_from(frame)
        if crc and zlib.crc32(frame[:28] + payload) != crc:
            self.corrupted += 1
            return
        self.last_tagged = time.monotonic()
        src = self.sources.get(source)
        if src is None:
            src = self.sources[source] = Source(seq)
            Path(self.a.out + ".ready").touch()
        src.add(seq)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("role", choices=["publisher", "dashboard", "strategy"])
    p.add_argument("--socket", required=True)
    p.add_argument("--out", required=True, help="JSON file written on exit")
    p.add_argument("--tag", type=int, default=0x5EC7E7, help="run tag carried by every message")
    p.add_argument("--source", type=int, default=77, help="publisher: header source byte")
    p.add_argument("--domain", type=int, default=1, help="publisher: header domain byte")
    p.add_argument("--rate", type=float, default=2000.0, help="publisher: messages/s")
    p.add_argument("--retry", type=float, default=0.1, help="dashboard: reconnect interval")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--settle", type=float, default=0.5)
    p.add_argument("--settle-limit", type=float, default=5.0)
    p.add_argument("--linger", type=float, default=20.0,
                   help="publisher: seconds connected after the first signal")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    role = Publisher(a) if a.role == "publisher" else Consumer(a)
    try:
        result = role.run()
    except OSError as exc:  # could not connect at all
        result = {"role": a.role, "pid": os.getpid(), "error": f"{a.socket}: {exc}"}
    write_json(Path(a.out), result)
    sys.exit(0)


if __name__ == "__main__":
    main()
