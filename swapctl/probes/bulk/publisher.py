"""The bulk publisher: writes a prebuilt stream, drains and checks its own echo.

How it works: the socket is non-blocking and one `poll` drives both directions, so
echo is read as soon as it arrives and the relay never has to queue (or shed) it.
Throughput mode writes `batch`-byte slices of the prebuilt stream until the stream
runs out or the deadline passes (then it finishes the message it is in). Latency
mode writes one message per `send` on an open-loop schedule of `rate` msg/s (a late
message goes at once, never skipped), stamping `time.time_ns()` into the header's
timestamp just before the send. Both end with the END message.
"""

from __future__ import annotations

import contextlib
import ctypes
import select
import socket
import struct
import time
from dataclasses import dataclass

from swapctl.probes.bulk.stream import MESSAGE_SIZE, TS_OFFSET

_TS = struct.Struct("<Q")
_IN, _OUT = select.POLLIN, select.POLLOUT
_BAD = select.POLLERR | select.POLLHUP | select.POLLNVAL
RECV_SIZE = 262_144
PR_SET_TIMERSLACK = 29


class Stalled(RuntimeError):
    """The peer did not accept bytes (or send echo) within the stall timeout."""


class Echo:
    """Reads the publisher's echo; checks it equals what was sent, byte for byte."""

    def __init__(self, sock: socket.socket, stream: bytes | bytearray) -> None:
        self.sock = sock
        self.stream = stream
        self.limit = len(stream)  # echo past this offset is the END message
        self.tail = b""
        self.received = 0
        self.exact = True
        self.eof = False

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            if not data:
                self.eof = True
                return
            self._check(data)

    def _check(self, data: bytes) -> None:
        start = self.received
        self.received += len(data)
        body = data[: max(0, self.limit - start)]
        if self.exact and body and self.stream[start : start + len(body)] != body:
            self.exact = False
        if len(body) < len(data):
            self.tail += data[len(body) :]


@dataclass(slots=True)
class Sent:
    messages: int
    bytes: int
    t_start: float  # time.monotonic() just before the first send
    t_end: float  # after the last data byte was accepted by the socket
    ended_by: str  # "deadline" or "pool"


class Publisher:
    def __init__(self, sock: socket.socket, echo: Echo | None, stall_timeout: float) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.echo = echo
        self.stall_ms = int(stall_timeout * 1000)
        self.poller = select.poll()
        self.poller.register(sock.fileno(), _OUT | (_IN if echo else 0))

    def _wait(self) -> int:
        events = self.poller.poll(self.stall_ms)
        if not events:
            raise Stalled(f"no progress for {self.stall_ms} ms")
        mask = events[0][1]
        if mask & _IN and self.echo is not None:
            self.echo.drain()
        if mask & _BAD and not mask & _OUT:
            raise ConnectionError(f"socket closed or failed (poll mask 0x{mask:x})")
        return mask

    def write(self, data: memoryview, batch: int, deadline: float | None = None) -> int:
        """Write `data`; after `deadline`, stop at the next message boundary."""
        pos, stop = 0, len(data)
        send, now = self.sock.send, time.monotonic
        while pos < stop:
            if self._wait() & _OUT:
                with contextlib.suppress(BlockingIOError):
                    pos += send(data[pos : min(pos + batch, stop)])
            if deadline is not None and now() >= deadline:
                deadline = None
                stop = min(stop, -(-pos // MESSAGE_SIZE) * MESSAGE_SIZE)
        return pos

    def send_now(self, data: memoryview) -> None:
        """One message: straight to `send` (no poll first); poll only if it did not fit."""
        try:
            done = self.sock.send(data)
        except BlockingIOError:
            done = 0
        if done < len(data):
            self.write(data[done:], len(data))

    def throughput(self, stream: bytes | bytearray, batch: int, duration: float) -> Sent:
        view = memoryview(stream)
        t_start = time.monotonic()
        written = self.write(view, batch, t_start + duration)
        t_end = time.monotonic()
        ended_by = "pool" if written == len(stream) else "deadline"
        return Sent(written // MESSAGE_SIZE, written, t_start, t_end, ended_by)

    def finish(self, sent: Sent, end: bytes, echo_idle: float) -> None:
        """Send END; with echo, wait until every byte written has come back, or until
        none has come for `echo_idle` seconds (the relay lost some)."""
        if self.echo is not None:
            self.echo.limit = sent.bytes
        self.write(memoryview(end), len(end))
        if self.echo is None:
            return
        self.poller.modify(self.sock.fileno(), _IN)
        want = sent.bytes + len(end)
        echo_ms = max(1, int(echo_idle * 1000))
        while self.echo.received < want and not self.echo.eof:
            if not self.poller.poll(echo_ms):
                return
            self.echo.drain()


@dataclass(slots=True)
class Lane:
    """One target of an interleaved latency run: its publisher and its own stream."""

    pub: Publisher
    stream: bytearray
    sent: int = 0
    t_start: float = 0.0
    t_end: float = 0.0

    @property
    def left(self) -> int:
        return len(self.stream) // MESSAGE_SIZE - self.sent

    def result(self) -> Sent:
        return Sent(self.sent, self.sent * MESSAGE_SIZE, self.t_start, self.t_end, "pool")


def paced(lanes: list[Lane], rate: float, block: int) -> float:
    """One message per send on one schedule of `rate` msg/s, `block` messages to each
    lane in turn, so every target sees the same moments of the run. Each message is
    stamped with `time.time_ns()` just before its send; a late message goes at once.
    Returns the rate achieved."""
    interval = 1.0 / rate
    pack, clock, wall, sleep = _TS.pack_into, time.perf_counter, time.time_ns, time.sleep
    k, t0 = 0, clock()
    while any(lane.left for lane in lanes):
        for lane in lanes:
            view, echo, send = memoryview(lane.stream), lane.pub.echo, lane.pub.send_now
            if lane.left and not lane.sent:
                lane.t_start = time.monotonic()
            for _ in range(min(block, lane.left)):
                delay = t0 + k * interval - clock()
                if delay > 0:
                    sleep(delay)
                off = lane.sent * MESSAGE_SIZE
                pack(lane.stream, off + TS_OFFSET, wall())
                send(view[off : off + MESSAGE_SIZE])
                if echo is not None:
                    echo.drain()
                lane.sent += 1
                k += 1
            lane.t_end = time.monotonic()
            view.release()
    return k / max(1e-9, clock() - t0)


def tighten_timer_slack(ns: int = 1000) -> int | None:
    """Ask Linux to wake our sleeps within `ns` (default slack is 50 us); None if refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0) == 0:
            return ns
    except (OSError, AttributeError):
        pass
    return None
