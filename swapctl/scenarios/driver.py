"""Drives a scenario into one or more relays in lockstep; records what each client received.

How it works: every (relay, client) pair has its own socket, and one selector loop
reads every reading client all the time. Each step is applied to every relay before
the next step, and waits on conditions, not sleeps:
- write: sent on every side, then the driver waits until each relay has *read* it
  (SIOCOUTQ on the writer's socket drops to 0), so a relay sees one read per write,
  and writes from different clients reach it in scenario order;
- connect: waits until the relay has accepted (its listener's accept queue is empty);
- settle, and before a disconnect and at the end: waits until no reading client has
  received anything for `Timing.quiet` seconds;
- at the end the silent publishers' pending data is read too.
A relay that stops reading is noted (not waited for again), as is one that closes a
client. Nothing here judges the result: the diff engine compares the streams.
"""

from __future__ import annotations

import array
import fcntl
import selectors
import socket
import termios
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from swapctl import sockdiag
from swapctl.capture.format import FLAG_WAIT, Kind, Record, open_data
from swapctl.diff.tokens import Stream
from swapctl.errors import SwapctlError
from swapctl.scenarios.model import (
    Client,
    Connect,
    Disconnect,
    Pause,
    Resume,
    Role,
    Scenario,
    Settle,
    Write,
)

SLOW_RCVBUF = 4096
_RECV = 1 << 20

Observer = Callable[[int, Record], None]  # side (index of the relay), what happened


@dataclass(frozen=True, slots=True)
class Timing:
    quiet: float = 0.03  # settle: no client received anything for this long
    switch_quiet: float = 0.001  # after a write, before another client writes
    read_timeout: float = 5.0  # a relay must read each write within this
    settle_timeout: float = 10.0
    connect_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class SideResult:
    streams: dict[str, Stream]
    notes: tuple[str, ...]


@dataclass(eq=False)
class _Conn:
    side: int
    client: Client
    ident: int
    sock: socket.socket
    reading: bool
    received: bytearray = field(default_factory=bytearray)
    pending: bytearray = field(default_factory=bytearray)
    eof: bool = False
    closed: bool = False
    registered: int = 0


class Driver:
    """Runs one scenario on `len(paths)` relays at once; see the module docstring."""

    def __init__(self, paths: Sequence[Path], timing: Timing | None = None,
                 observer: Observer | None = None) -> None:
        self.paths = list(paths)
        self.timing = timing or Timing()
        self.observer = observer
        self.sel = selectors.DefaultSelector()
        self.conns: dict[tuple[int, str], _Conn] = {}
        self.done: dict[tuple[int, str], Stream] = {}
        self.notes: list[list[str]] = [[] for _ in self.paths]
        self.shared: list[str] = []  # notes about the run, not about one relay
        self.stalled = [False] * len(self.paths)
        self.inodes = [sockdiag.socket_inode(p) for p in self.paths]
        self.use_diag = True
        self.last_rx = time.monotonic()

    def run(self, scenario: Scenario) -> list[SideResult]:
        ids = {c.name: n for n, c in enumerate(scenario.clients, 1)}
        try:
            for client in scenario.clients:
                if client.at_start:
                    self._connect(client, ids[client.name])
            self._accepted()
            self._quiet(self.timing.switch_quiet)
            for number, step in enumerate(scenario.steps, 1):
                self._step(scenario, step, number, ids)
            self._finish(scenario)
            return self._results(scenario)
        finally:
            for conn in self.conns.values():
                conn.sock.close()
            self.sel.close()

    # ----- steps -------------------------------------------------------------

    def _step(self, scenario: Scenario, step: object, number: int, ids: dict[str, int]) -> None:
        if isinstance(step, Write):
            self._write(step, number)
            nxt = scenario.steps[number] if number < len(scenario.steps) else None
            if step.wait and isinstance(nxt, Write) and nxt.client != step.client:
                self._quiet(self.timing.switch_quiet)
        elif isinstance(step, Settle):
            self._settle()
            self._observe_all(Kind.SETTLE, 0, b"")
        elif isinstance(step, Connect):
            self._connect(scenario.client(step.client), ids[step.client])
            self._accepted()
            self._quiet(self.timing.switch_quiet)
        elif isinstance(step, Disconnect):
            self._settle()
            for side in range(len(self.paths)):
                self._close(self.conns.pop((side, step.client)))
        elif isinstance(step, Pause | Resume):
            for side in range(len(self.paths)):
                conn = self.conns[(side, step.client)]
                conn.reading = isinstance(step, Resume)
                self._observe(conn, Kind.RESUME if conn.reading else Kind.PAUSE, b"")
                self._update(conn)

    def _connect(self, client: Client, ident: int) -> None:
        for side, path in enumerate(self.paths):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if client.role is Role.SLOW:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
            sock.settimeout(self.timing.connect_timeout)
            try:
                sock.connect(str(path))
            except OSError as exc:
                sock.close()
                raise SwapctlError(f"cannot connect client {client.name} to {path}: {exc}; "
                                   "did the relay exit? (see its log)") from None
            sock.setblocking(False)
            conn = _Conn(side, client, ident, sock, reading=client.reads)
            self.conns[(side, client.name)] = conn
            self._observe(conn, Kind.OPEN, open_data(client))
            self._update(conn)

    def _write(self, step: Write, number: int) -> None:
        waiting = []
        for side in range(len(self.paths)):
            conn = self.conns[(side, step.client)]
            conn.pending += step.data
            self._observe(conn, Kind.WRITE, step.data, FLAG_WAIT if step.wait else 0)
            self._update(conn)
            if not self.stalled[side]:
                waiting.append(conn)
        deadline = time.monotonic() + self.timing.read_timeout
        while True:
            left = [c for c in waiting if c.pending or (step.wait and _unread(c.sock))]
            if not left:
                return
            if time.monotonic() > deadline:
                for conn in left:
                    self.stalled[conn.side] = True
                    self.notes[conn.side].append(
                        f"the relay stopped reading: step {number} (write of "
                        f"{len(step.data)} bytes by {step.client}) not read within "
                        f"{self.timing.read_timeout}s; later writes are not waited for")
                return
            self._pump(0.0005 if not any(c.pending for c in left) else 0.05)

    def _accepted(self) -> None:
        """Wait until every relay has accepted the connections made so far."""
        if not self.use_diag:
            return
        deadline = time.monotonic() + self.timing.connect_timeout
        while True:
            try:
                queues = sockdiag.accept_queues()
            except OSError as exc:
                self.use_diag = False
                self.shared.append(f"cannot read accept queues ({exc}): connects are "
                                   "followed by a settle only")
                self._settle()
                return
            if all(queues.get(ino, 0) == 0 for ino in self.inodes):
                return
            if time.monotonic() > deadline:
                raise SwapctlError(f"a relay did not accept new connections within "
                                   f"{self.timing.connect_timeout}s; is it stuck?")
            self._pump(0.0005)

    def _finish(self, scenario: Scenario) -> None:
        if not scenario.steps or not isinstance(scenario.steps[-1], Settle):
            self._settle()
        waiting = [c for c in self.conns.values() if not c.reading]
        for conn in waiting:  # silent publishers and paused consumers: read what waits
            conn.reading = True
            self._update(conn)
        if waiting:
            self._settle()

    # ----- waiting ---------------------------------------------------------------

    def _settle(self) -> None:
        self._quiet(self.timing.quiet, self.timing.settle_timeout)

    def _quiet(self, quiet: float, limit: float | None = None) -> None:
        """Pump until nothing has been received for `quiet` seconds (at most `limit`)."""
        if quiet <= 0:
            return
        start = time.monotonic()
        self.last_rx = start
        while True:
            now = time.monotonic()
            if now - self.last_rx >= quiet:
                return
            if limit is not None and now - start > limit:
                self.shared.append(f"clients were still receiving after {limit}s of settle")
                return
            self._pump(quiet - (now - self.last_rx))

    def _pump(self, timeout: float) -> None:
        for key, mask in self.sel.select(max(0.0, timeout)):
            conn: _Conn = key.data
            if mask & selectors.EVENT_WRITE:
                self._send(conn)
            if mask & selectors.EVENT_READ and not conn.closed:
                self._recv(conn)

    def _recv(self, conn: _Conn) -> None:
        while True:
            try:
                data = conn.sock.recv(_RECV)
            except BlockingIOError:
                return
            except OSError as exc:
                data = b""
                self.notes[conn.side].append(f"client {conn.client.name}: read error {exc}")
            if not data:
                conn.eof = True
                self._observe(conn, Kind.EOF, b"")
                self._update(conn)
                return
            conn.received += data
            self.last_rx = time.monotonic()
            self._observe(conn, Kind.READ, data)

    def _send(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self.notes[conn.side].append(f"client {conn.client.name}: write error {exc}")
            conn.pending.clear()
            self._update(conn)
            return
        del conn.pending[:sent]
        if not conn.pending:
            self._update(conn)

    def _update(self, conn: _Conn) -> None:
        want = 0
        if not conn.closed:
            if conn.reading and not conn.eof:
                want |= selectors.EVENT_READ
            if conn.pending:
                want |= selectors.EVENT_WRITE
        if want == conn.registered:
            return
        if not want:
            self.sel.unregister(conn.sock)
        elif not conn.registered:
            self.sel.register(conn.sock, want, conn)
        else:
            self.sel.modify(conn.sock, want, conn)
        conn.registered = want

    # ----- results ---------------------------------------------------------------

    def _close(self, conn: _Conn) -> None:
        conn.closed = True
        self._update(conn)
        self._observe(conn, Kind.CLOSE, b"")
        conn.sock.close()
        self.done[(conn.side, conn.client.name)] = Stream(bytes(conn.received), conn.eof)

    def _results(self, scenario: Scenario) -> list[SideResult]:
        for conn in list(self.conns.values()):
            self._close(conn)
        self.conns.clear()
        return [SideResult({c.name: self.done[(side, c.name)] for c in scenario.clients
                            if (side, c.name) in self.done}, tuple(self.notes[side]))
                for side in range(len(self.paths))]

    def _observe(self, conn: _Conn, kind: Kind, data: bytes, flags: int = 0) -> None:
        if self.observer is not None:
            record = Record("", kind, conn.ident, data, time.time_ns(), flags)
            self.observer(conn.side, record)

    def _observe_all(self, kind: Kind, ident: int, data: bytes) -> None:
        if self.observer is not None:
            for side in range(len(self.paths)):
                self.observer(side, Record("", kind, ident, data, time.time_ns()))


def _unread(sock: socket.socket) -> int:
    """Bytes this socket sent that the peer has not read yet (SIOCOUTQ)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
    return buf[0]
