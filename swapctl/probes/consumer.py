"""A consumer child process: reads the relay's stream and audits every byte.

How it works: one selector over the socket and the control pipe; each readable
event reads (`recv_into` a preallocated buffer) and hands the bytes with their
receive time to a `StreamAuditor`. On EOF it behaves as the real client it mimics:
a dashboard reconnects at once (and every `dashboard_retry` seconds while the
relay refuses), a strategy consumer stops for good and is reported dead. When
told what was sent (`Settle`) it reads on until every message arrived or the stream
has been quiet for `idle` seconds (at most `limit`), then reports its verdict.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from swapctl.probes.audit import StreamAuditor
from swapctl.probes.config import ConsumerMode
from swapctl.probes.control import (
    Audited,
    Close,
    Command,
    CpuMeter,
    LoadError,
    Ready,
    Settle,
    Synced,
    child_main,
    connect,
    receive,
)
from swapctl.probes.report import ConsumerReport

READ_BUFFER = 1 << 20
READS_PER_WAKE = 8


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    index: int
    publishers: int  # how many in the run (for the start barrier)
    socket: str
    run_tag: int
    mode: ConsumerMode
    connect_timeout: float
    dashboard_retry: float


class Settler:
    """Decides when an auditor has seen all it will: complete, quiet, or out of time."""

    def __init__(self, auditor: StreamAuditor, cmd: Settle, now: float, dead: bool) -> None:
        self.auditor, self.cmd, self.dead = auditor, cmd, dead
        self.start = self.quiet_since = now
        self.seen = auditor.arrivals

    def done(self, now: float) -> bool:
        if self.auditor.arrivals != self.seen:
            self.seen, self.quiet_since = self.auditor.arrivals, now
        return (self.dead or self.auditor.complete(self.cmd.sent)
                or now - self.quiet_since >= self.cmd.idle or now - self.start >= self.cmd.limit)

    def timeout(self, now: float) -> float:
        idle_end = self.quiet_since + self.cmd.idle
        return max(0.0, min(idle_end, self.start + self.cmd.limit) - now)


def consumer_main(spec: ConsumerSpec, ctl: Connection) -> None:
    child_main(lambda c: Consumer(spec, c).run(), ctl)


class Consumer:
    def __init__(self, spec: ConsumerSpec, ctl: Connection) -> None:
        self.spec, self.ctl = spec, ctl
        self.auditor = StreamAuditor(spec.run_tag)
        self.sel = selectors.DefaultSelector()
        self.sel.register(ctl, selectors.EVENT_READ)
        self.sock: socket.socket | None = None
        self.buf = bytearray(READ_BUFFER)
        self.view = memoryview(self.buf)
        self.disconnects = self.reconnects = self.connect_failures = 0
        self.dead = self.closing = False
        self.last_error = ""
        self.retry_at = 0.0
        self.settler: Settler | None = None
        self.cpu = CpuMeter()
        self.busy = self.starved = 0.0

    def run(self) -> None:
        self._attach(connect(self.spec.socket, self.spec.connect_timeout))
        self.ctl.send(Ready(os.getpid()))
        self.cpu = CpuMeter()
        synced = False
        while not self.closing:
            now = time.monotonic()
            if not synced and self.auditor.synced(self.spec.publishers):
                self.ctl.send(Synced())  # the relay has registered this connection
                synced = True
            if self.settler is not None and self.settler.done(now):
                break
            if self.sock is None and not self.dead and now >= self.retry_at:
                self._reconnect(now)
            for key, _ in self.sel.select(self._timeout(now)):
                if key.fileobj is self.ctl:
                    self._command(receive(self.ctl))
                else:
                    self._read()
        if self.settler is not None:
            audit = self.auditor.finish(self.settler.cmd.sent)
            self.ctl.send(Audited(ConsumerReport(
                index=self.spec.index, mode=self.spec.mode.value, audit=audit,
                disconnects=self.disconnects, reconnects=self.reconnects,
                connect_failures=self.connect_failures, dead=self.dead,
                last_error=self.last_error, busy=self.busy, starved=self.starved,
            )))

    def _timeout(self, now: float) -> float:
        waits = [1.0]
        if self.settler is not None:
            waits.append(self.settler.timeout(now))
        if self.sock is None and not self.dead:
            waits.append(max(0.0, self.retry_at - now))
        return min(waits)

    def _command(self, cmd: Command) -> None:
        if isinstance(cmd, Settle):
            self.busy, self.starved = self.cpu.shares()
            self.settler = Settler(self.auditor, cmd, time.monotonic(), self.dead)
        elif isinstance(cmd, Close):
            self.closing = True

    def _read(self) -> None:
        feed, view = self.auditor.feed, self.view
        for _ in range(READS_PER_WAKE):
            if self.sock is None:
                return
            try:
                n = self.sock.recv_into(self.buf)
            except BlockingIOError:
                return
            except OSError as exc:
                self._eof(f"read failed: {exc}")
                return
            if n == 0:
                self._eof("EOF: the relay closed the connection")
                return
            feed(bytes(view[:n]), time.time_ns())

    def _attach(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sel.register(sock, selectors.EVENT_READ)

    def _eof(self, reason: str) -> None:
        assert self.sock is not None
        self.sel.unregister(self.sock)
        self.sock.close()
        self.sock = None
        self.auditor.reset_stream()
        self.disconnects += 1
        if self.spec.mode is ConsumerMode.STRATEGY:
            self.dead = True
            self.last_error = f"{reason}; a strategy consumer stops for good"
            if self.settler is not None:
                self.settler.dead = True
        else:
            self.last_error = reason
            self.retry_at = time.monotonic()

    def _reconnect(self, now: float) -> None:
        try:
            self._attach(connect(self.spec.socket, 0.0))
        except LoadError as exc:
            self.connect_failures += 1
            self.last_error = str(exc)
            self.retry_at = now + self.spec.dashboard_retry
            return
        self.reconnects += 1
