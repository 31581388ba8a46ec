"""A publisher child process: paced batches of generated messages, echo drained.

How it works: after `Go` it connects (writing the identification header if asked)
and loops on one selector over its socket and the control pipe. Pacing uses the
monotonic clock: by time t, rate * t messages are due; whatever is due (at most
`batch`) is built as one buffer and written without blocking, so there is no
per-message sleep and a slow relay shows as an achieved rate below the asked one.
A message counts as sent once its last byte is accepted by the kernel, so the sent
messages are always numbers 1..sent. The echo the relay sends back is read into a
preallocated buffer and discarded, or audited (`audit_echo`).
On a write error or EOF it behaves as the real publisher: reconnect with backoff
b * 2^n (at most `reconnect_attempts`), then write again from the message the failure
hit (so it is sent once); bytes left in the dead connection are lost, as in real life.
"""

from __future__ import annotations

import math
import os
import selectors
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from swapctl.probes.audit import AuditResult, StreamAuditor
from swapctl.probes.consumer import Settler
from swapctl.probes.control import (
    Audited,
    Close,
    Command,
    Connect,
    CpuMeter,
    Go,
    LoadError,
    Published,
    Ready,
    Settle,
    Stop,
    Synced,
    child_main,
    connect,
    receive,
)
from swapctl.probes.report import PublisherReport
from swapctl.probes.traffic import Batch, MessageFactory, Mix
from swapctl.protocol import encode_message

ID_HEADER = encode_message(1, 2, b"")  # protocol-v2.md vector V6
READ_BUFFER = 1 << 20
SYNC_INTERVAL = 0.02  # seconds between sync messages before the run starts
_RW = selectors.EVENT_READ | selectors.EVENT_WRITE


@dataclass(frozen=True, slots=True)
class PublisherSpec:
    index: int
    publishers: int  # how many in the run (for the start barrier)
    socket: str
    domain_byte: int
    source: int
    run_tag: int
    mix: Mix
    rate: float  # this publisher's share; 0 = flat out
    duration: float | None
    batch: int
    id_header: bool
    reconnect: bool
    reconnect_attempts: int
    reconnect_backoff: float
    connect_timeout: float
    flush_timeout: float
    audit_echo: bool


def publisher_main(spec: PublisherSpec, ctl: Connection) -> None:
    child_main(lambda c: Publisher(spec, c).run(), ctl)


class Publisher:
    def __init__(self, spec: PublisherSpec, ctl: Connection) -> None:
        self.spec, self.ctl = spec, ctl
        self.factory = MessageFactory(domain=spec.domain_byte, source=spec.source,
                                      publisher=spec.index, run_tag=spec.run_tag, mix=spec.mix)
        self.sel = selectors.DefaultSelector()
        self.sel.register(ctl, selectors.EVENT_READ)
        self.sock: socket.socket | None = None
        self.batch: Batch | None = None
        self.view = memoryview(b"")
        self.written = self.counted = 0  # bytes / whole messages of `batch` done
        self.blocked = False
        self.sent = self.bytes_sent = self.writes = self.disconnects = self.reconnects = 0
        self.dead = self.stopping = self.closing = self.publishing = self.going = False
        self.settle: Settle | None = None
        self.last_error = ""
        self.started = self.last_write = self.busy = self.starved = 0.0
        self.rbuf = bytearray(READ_BUFFER)
        self.rview = memoryview(self.rbuf)
        self.auditor = StreamAuditor(spec.run_tag) if spec.audit_echo else None

    def run(self) -> None:
        self.ctl.send(Ready(os.getpid()))
        if not isinstance(receive(self.ctl), Connect):
            return
        self._attach(connect(self.spec.socket, self.spec.connect_timeout))
        if not self._sync_until_go():
            return
        self.started = self.last_write = time.monotonic()
        cpu = CpuMeter()
        self.publishing = True
        self._publish()
        self._flush()
        self.publishing = False
        self.busy, self.starved = cpu.shares()
        self.ctl.send(Published(self._report()))
        self._linger()

    def _sync_until_go(self) -> bool:
        """The start barrier: repeat a sync message until told to go (False: to close).
        Says Synced once connected, or with `audit_echo` once every publisher's sync
        came back, so the parent knows the relay has registered this connection."""
        synced, next_sync = self.auditor is None, 0.0
        if synced:
            self.ctl.send(Synced())
        while not (self.going or self.closing):
            now = time.monotonic()
            if now >= next_sync and self.sock is not None:
                try:
                    self.sock.send(self.factory.sync(time.time_ns()))
                except BlockingIOError:
                    pass  # the echo backs up: the next one will do
                except OSError as exc:
                    self._broken(f"write failed: {exc}")
                next_sync = now + SYNC_INTERVAL
            if not synced and self.auditor is not None and self.auditor.synced(
                    self.spec.publishers):
                self.ctl.send(Synced())
                synced = True
            if self.sock is None:
                raise LoadError(f"publisher {self.spec.index} lost its connection to "
                                f"{self.spec.socket} before the run started: {self.last_error}")
            self._poll(max(0.0, next_sync - now))
        return self.going and not self.closing

    # ----- publishing ------------------------------------------------------------

    def _publish(self) -> None:
        duration = self.spec.duration
        deadline = self.started + duration if duration else math.inf
        while not (self.stopping or self.closing or self.dead):
            now = time.monotonic()
            if now >= deadline:
                break
            if self.batch is None:
                self._next_batch(now)
            if self.batch is not None and not self.blocked:
                self._write()
            self._poll(self._timeout(now, deadline))

    def _next_batch(self, now: float) -> None:
        rate, built = self.spec.rate, self.factory.next_n - 1
        due = int(rate * (now - self.started)) + 1 - built if rate > 0 else self.spec.batch
        if due > 0:
            self.batch = self.factory.build(min(due, self.spec.batch), time.time_ns())
            self.view = memoryview(self.batch.data)
            self.written = self.counted = 0

    def _timeout(self, now: float, deadline: float) -> float:
        if self.batch is not None:
            return min(deadline - now, 0.5) if self.blocked else 0.0
        if self.spec.rate > 0:
            due_at = self.started + (self.factory.next_n - 1) / self.spec.rate
            return max(0.0, min(due_at, deadline) - now)
        return 0.0

    def _write(self) -> None:
        assert self.sock is not None and self.batch is not None
        try:
            n = self.sock.send(self.view[self.written :])
        except BlockingIOError:
            self._set_blocked(True)
            return
        except OSError as exc:
            self._broken(f"write failed: {exc}")
            return
        self.writes += 1
        self.written += n
        self.bytes_sent += n
        if self.written < len(self.view):
            self._set_blocked(True)
            return
        self.sent += self.batch.count - self.counted
        self.batch = None
        self.last_write = time.monotonic()
        self._set_blocked(False)

    def _set_blocked(self, blocked: bool) -> None:
        if blocked != self.blocked and self.sock is not None:
            self.sel.modify(self.sock, _RW if blocked else selectors.EVENT_READ)
        self.blocked = blocked

    def _flush(self) -> None:
        """Finish the batch under way; give up after `flush_timeout` without progress."""
        end = time.monotonic() + self.spec.flush_timeout
        while self.batch is not None and self.sock is not None and not self.closing:
            before = self.written
            if not self.blocked:
                self._write()
            now = time.monotonic()
            if self.written != before:
                end = now + self.spec.flush_timeout
            if now >= end:
                break
            if self.batch is not None:
                self._poll(min(0.1, end - now))
        if self.batch is not None:  # whatever is complete counts; the rest never went out
            self.sent += self.batch.whole_messages(self.written) - self.counted
            self.batch = None

    # ----- the connection --------------------------------------------------------

    def _attach(self, sock: socket.socket) -> None:
        if self.spec.id_header:
            sock.setblocking(True)
            sock.sendall(ID_HEADER)
            sock.setblocking(False)
        self.sock = sock
        self.blocked = False
        self.sel.register(sock, selectors.EVENT_READ)

    def _detach(self) -> None:
        if self.sock is not None:
            self.sel.unregister(self.sock)
            self.sock.close()
            self.sock = None
        if self.auditor is not None:
            self.auditor.reset_stream()

    def _broken(self, reason: str) -> None:
        self.disconnects += 1
        self.last_error = reason
        self._detach()
        if self.batch is not None:  # write again from the message the failure hit
            done = self.batch.whole_messages(self.written)
            self.sent += done - self.counted
            self.counted = done
            self.written = self.batch.start_of(done)
        if not self.publishing:
            return
        if not self.spec.reconnect:
            self.dead = True
            return
        self._reconnect()

    def _reconnect(self) -> None:
        attempts = self.spec.reconnect_attempts
        for attempt in range(attempts):
            if self._idle(self.spec.reconnect_backoff * 2**attempt):
                return
            try:
                self._attach(connect(self.spec.socket, 0.0))
            except (OSError, LoadError) as exc:
                self.last_error = f"reconnect {attempt + 1}/{attempts} failed: {exc}"
                continue
            self.reconnects += 1
            return
        self.dead = True
        self.last_error = f"gave up after {attempts} reconnect attempts; {self.last_error}"

    def _idle(self, seconds: float) -> bool:
        """Sleep, still obeying commands; True if told to stop meanwhile."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and not (self.stopping or self.closing):
            if self.ctl.poll(left):
                self._command(receive(self.ctl))
        return self.stopping or self.closing

    # ----- events and commands ---------------------------------------------------

    def _poll(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            if key.fileobj is self.ctl:
                self._command(receive(self.ctl))
            elif key.fileobj is self.sock:
                if mask & selectors.EVENT_WRITE:
                    self.blocked = False
                if mask & selectors.EVENT_READ:
                    self._drain()

    def _drain(self) -> None:
        for _ in range(16):
            if self.sock is None:
                return
            try:
                n = self.sock.recv_into(self.rbuf)
            except BlockingIOError:
                return
            except OSError as exc:
                self._broken(f"read failed: {exc}")
                return
            if n == 0:
                self._broken("EOF: the relay closed the connection")
                return
            if self.auditor is not None:
                self.auditor.feed(bytes(self.rview[:n]), time.time_ns())

    def _command(self, cmd: Command) -> None:
        if isinstance(cmd, Go):
            self.going = True
        elif isinstance(cmd, Stop):
            self.stopping = True
        elif isinstance(cmd, Close):
            self.closing = True
        elif isinstance(cmd, Settle):
            self.settle = cmd

    def _linger(self) -> None:
        """Keep draining the echo (and audit it when told what was sent) until closed."""
        settler: Settler | None = None
        while not self.closing:
            now = time.monotonic()
            if settler is None and self.settle is not None and self.auditor is not None:
                settler = Settler(self.auditor, self.settle, now, self.sock is None)
            if settler is not None and settler.done(now):
                echo = settler.auditor.finish(settler.cmd.sent)
                self.ctl.send(Audited(self._report(echo)))
                settler = self.auditor = None
            self._poll(1.0 if settler is None else settler.timeout(now))

    def _report(self, echo: AuditResult | None = None) -> PublisherReport:
        return PublisherReport(
            index=self.spec.index, sent=self.sent, bytes_sent=self.bytes_sent,
            writes=self.writes, elapsed_s=self.last_write - self.started,
            disconnects=self.disconnects, reconnects=self.reconnects, dead=self.dead,
            last_error=self.last_error, echo=echo, busy=self.busy, starved=self.starved,
        )
