"""The reference relay: a single-threaded epoll loop over Unix stream sockets.

How it works: every connection is both publisher and consumer. What a connection
sends is turned into *units* by the forwarding mode (FRAME: runs of whole frames
from the framer; CHUNK/RAW: each read as is) and each unit is fanned out, in the
order units were read, to every connection (the sender too unless echo is off), so
all receivers see one global order. A write that would block queues the rest of the
unit in that consumer's backlog and arms EPOLLOUT. A consumer whose backlog passes
`max_backlog` bytes sheds its *oldest whole units* that have not started going out
(the real relays also drop the oldest), so framing is never broken, publishers are
never blocked and nobody is disconnected; each shed is counted and logged.
Signals only wake the loop (set_wakeup_fd); the loop decides what to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field

from swapctl.logs import RateLimit, event
from swapctl.protocol import Framer, Frames, Rejected, Skipped, WrongDomain, split_frames
from swapctl.protocol.header import MAGIC
from swapctl.relay.config import READ_SIZE, Forwarding, RelayConfig
from swapctl.relay.counters import Counters
from swapctl.relay.faults import FaultInjector
from swapctl.relay.listener import adopt_listener, open_listener

log = logging.getLogger("swapctl.relay")
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_CHUNK_PEEK = struct.Struct("<IB")


@dataclass(slots=True, eq=False)
class Connection:
    sock: socket.socket
    id: int
    framer: Framer | None
    out: deque[tuple[bytes, int]] = field(default_factory=deque)  # (unit, frames)
    head_sent: int = 0  # bytes of out[0] already written
    backlog: int = 0  # bytes queued in out, head included
    lagging: bool = False
    closed: bool = False
    bytes_in: int = 0
    frames_in: int = 0
    frames_out: int = 0
    lag_drops: int = 0

    @property
    def fd(self) -> int:
        return self.sock.fileno()


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.faults = FaultInjector(config.faults, self.counters)
        self.conns: dict[int, Connection] = {}
        self.epoll = select.epoll()
        self.listener: socket.socket | None = None
        self.stats_listener: socket.socket | None = None
        self.reading = True
        self.running = False
        self._next_id = 1
        self._warn = RateLimit(1.0)
        self._wake_r, self._wake_w = socket.socketpair()
        self._started = time.monotonic()

    # ----- life cycle -------------------------------------------------------------

    def listen(self) -> None:
        cfg = self.config
        if cfg.listen_fd is not None:
            self.listener = adopt_listener(cfg.listen_fd)
        else:
            self.listener = open_listener(cfg.socket)
        self.epoll.register(self.listener.fileno(), _IN)
        if cfg.stats_socket is not None:
            self.stats_listener = open_listener(cfg.stats_socket)
            self.epoll.register(self.stats_listener.fileno(), _IN)
        event(log, logging.INFO, "relay.listening", socket=str(cfg.socket),
              domain=cfg.domain.value, profile=cfg.profile.value, domain_byte=cfg.domain_byte,
              forwarding=cfg.forwarding.value, echo=cfg.echo, pid=os.getpid())

    def serve(self) -> None:
        """Run until SIGTERM/SIGINT; the listening path is left in place."""
        self._install_signals()
        self.running = True
        deadline = self.config.faults.crash_after_seconds
        try:
            while self.running:
                timeout = -1.0
                if deadline is not None:
                    timeout = max(0.0, self._started + deadline - time.monotonic())
                for fd, mask in self.epoll.poll(timeout):
                    self._dispatch(fd, mask)
                if deadline is not None and time.monotonic() - self._started >= deadline:
                    self.faults.crash("crash_after_seconds")
        finally:
            self.close()

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._drop(conn, "relay stopping")
        for sock in (self.listener, self.stats_listener):
            if sock is not None:
                sock.close()
        self.epoll.close()
        event(log, logging.INFO, "relay.stopped", **self.counters.to_dict())

    def _install_signals(self) -> None:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, lambda *_: None)  # handlers only wake the loop
        self.epoll.register(self._wake_r.fileno(), _IN)

    def _on_signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            for signum in self._wake_r.recv(64):
                if signum == signal.SIGUSR1:
                    event(log, logging.INFO, "relay.counters", **self.counters.to_dict())
                else:
                    event(log, logging.INFO, "relay.signal", signal=signal.Signals(signum).name)
                    self.running = False

    # ----- event dispatch ---------------------------------------------------------

    def _dispatch(self, fd: int, mask: int) -> None:
        conn = self.conns.get(fd)
        if conn is not None:
            if mask & _OUT:
                self._flush(conn)
            if conn.closed:
                return
            if self.reading and mask & (_IN | select.EPOLLHUP | select.EPOLLERR):
                self._read(conn)
            elif mask & (select.EPOLLHUP | select.EPOLLERR):
                self._drop(conn, "hang-up while stalled")
        elif self.listener is not None and fd == self.listener.fileno():
            self._accept()
        elif self.stats_listener is not None and fd == self.stats_listener.fileno():
            self._serve_stats()
        elif fd == self._wake_r.fileno():
            self._on_signals()

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(256):
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            self.add_connection(sock)

    def add_connection(self, sock: socket.socket) -> Connection:
        sock.setblocking(False)
        cfg = self.config
        framer = None
        if cfg.forwarding in (Forwarding.FRAME, Forwarding.SINK):
            framer = Framer(max_message=cfg.max_message, domain=cfg.domain_byte)
        conn = Connection(sock, self._next_id, framer)
        self._next_id += 1
        self.conns[conn.fd] = conn
        self.epoll.register(conn.fd, _IN if self.reading else 0)
        self.counters.connections_open += 1
        self.counters.connections_total += 1
        event(log, logging.DEBUG, "connection.open", conn=conn.id)
        return conn

    def _serve_stats(self) -> None:
        assert self.stats_listener is not None
        with contextlib.suppress(BlockingIOError):
            sock, _ = self.stats_listener.accept()
            with sock:
                sock.setblocking(True)
                sock.settimeout(1.0)
                with contextlib.suppress(OSError):
                    sock.sendall(json.dumps(self.stats()).encode() + b"\n")

    def stats(self) -> dict[str, object]:
        data: dict[str, object] = dict(self.counters.to_dict())
        data["pid"] = os.getpid()
        data["uptime_s"] = round(time.monotonic() - self._started, 3)
        data["connections"] = [
            {"id": c.id, "bytes_in": c.bytes_in, "frames_in": c.frames_in,
             "frames_out": c.frames_out, "backlog_bytes": c.backlog, "lagging": c.lagging,
             "lag_drops": c.lag_drops}
            for c in self.conns.values()
        ]
        return data

    # ----- reading: bytes in, units out ------------------------------------------

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop(conn, f"read error: {exc}")
            return
        if not data:
            self._drop(conn, "eof")
            return
        c = self.counters
        c.reads += 1
        c.bytes_in += len(data)
        conn.bytes_in += len(data)
        mode = self.config.forwarding
        if conn.framer is not None:
            self._framed(conn, conn.framer.feed(data), forward=mode is Forwarding.FRAME)
        elif mode is Forwarding.CHUNK:
            self._chunk(conn, data)
        else:
            self._unit(conn, data, 1)

    def _framed(self, conn: Connection, events: list[Frames | Skipped | Rejected],
                forward: bool) -> None:
        for ev in events:
            if isinstance(ev, Frames):
                conn.frames_in += ev.count
                if not forward:
                    self.counters.frames_in += ev.count
                elif self.faults.active:
                    for frame in split_frames(ev.data):
                        self._unit(conn, frame, 1)
                else:
                    self._unit(conn, ev.data, ev.count)
            elif isinstance(ev, Skipped):
                self.counters.skipped_bytes += ev.length
                self.counters.resyncs += 1
                self._malformed(conn, "skipped", ev.error, length=ev.length)
            else:
                if isinstance(ev.error, WrongDomain):
                    self.counters.rejected_domain += 1
                else:
                    self.counters.rejected_checksum += 1
                self._malformed(conn, "rejected", ev.error, length=len(ev.data))

    def _chunk(self, conn: Connection, data: bytes) -> None:
        """The generic Rust relay: check only the start of the read, forward it whole."""
        if len(data) >= 32:
            magic, dom = _CHUNK_PEEK.unpack_from(data)
            if magic == MAGIC and dom == self.config.domain_byte:
                self._unit(conn, data, 1)
                return
        self.counters.chunks_dropped += 1
        if self._warn.allow((conn.id, "chunk")):
            event(log, logging.WARNING, "chunk.dropped", conn=conn.id, length=len(data))

    def _malformed(self, conn: Connection, what: str, error: Exception, length: int) -> None:
        if self._warn.allow((conn.id, what)):
            event(log, logging.WARNING, f"input.{what}", conn=conn.id, length=length,
                  error=str(error), suppressed=self._warn.suppressed.get((conn.id, what), 0))

    # ----- fan-out and writing ---------------------------------------------------

    def _unit(self, sender: Connection, data: bytes, frames: int) -> None:
        if self.faults.active:
            data = self.faults.apply(data)
            if not data:
                return
            if self.faults.stall_now():
                self.stall()
        self.counters.frames_in += frames
        echo = self.config.echo
        for conn in list(self.conns.values()):
            if conn.closed or (conn is sender and not echo):
                continue
            self._deliver(conn, data, frames)

    def _deliver(self, conn: Connection, data: bytes, frames: int) -> None:
        self.counters.frames_out += frames
        conn.frames_out += frames
        if conn.out:
            conn.out.append((data, frames))
            conn.backlog += len(data)
            if conn.backlog > self.config.max_backlog:
                self._shed(conn)
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._drop(conn, f"write error: {exc}")
            return
        self.counters.bytes_out += sent
        if sent < len(data):
            conn.out.append((data, frames))
            conn.head_sent = sent
            conn.backlog = len(data) - sent
            self.epoll.modify(conn.fd, (_IN if self.reading else 0) | _OUT)

    def _flush(self, conn: Connection) -> None:
        while conn.out:
            data, _ = conn.out[0]
            try:
                sent = conn.sock.send(memoryview(data)[conn.head_sent :])
            except BlockingIOError:
                return
            except OSError as exc:
                self._drop(conn, f"write error: {exc}")
                return
            self.counters.bytes_out += sent
            conn.backlog -= sent
            conn.head_sent += sent
            if conn.head_sent < len(data):
                return
            conn.out.popleft()
            conn.head_sent = 0
        self.epoll.modify(conn.fd, _IN if self.reading else 0)
        if conn.lagging:
            conn.lagging = False
            self.counters.lagging_consumers -= 1
            event(log, logging.INFO, "consumer.caught_up", conn=conn.id)

    def _shed(self, conn: Connection) -> None:
        """Drop the oldest whole units not yet started until under the bound."""
        c = self.counters
        if not conn.lagging:
            conn.lagging = True
            c.lagging_consumers += 1
            c.lag_episodes += 1
        shed_frames = shed_bytes = 0
        keep_head = conn.head_sent > 0
        while conn.backlog > self.config.max_backlog and len(conn.out) > int(keep_head):
            index = 1 if keep_head else 0
            data, frames = conn.out[index]
            del conn.out[index]
            conn.backlog -= len(data)
            shed_frames += frames
            shed_bytes += len(data)
        conn.lag_drops += shed_frames
        c.lag_drops_frames += shed_frames
        c.lag_drops_bytes += shed_bytes
        if self._warn.allow((conn.id, "lag")):
            event(log, logging.WARNING, "consumer.lagging", conn=conn.id,
                  backlog_bytes=conn.backlog, dropped_frames_total=conn.lag_drops)

    # ----- stalls and disconnects ------------------------------------------------

    def stall(self) -> None:
        """Stop reading from every connection (queued output still drains)."""
        if not self.reading:
            return
        self.reading = False
        self.counters.stalled = True
        for conn in self.conns.values():
            self.epoll.modify(conn.fd, _OUT if conn.out else 0)
        event(log, logging.WARNING, "relay.stalled", frames_in=self.counters.frames_in)

    def _drop(self, conn: Connection, reason: str) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.framer is not None and conn.framer.buffered:
            self.counters.truncated += 1
            self._malformed(conn, "truncated", RuntimeError("partial frame at disconnect"),
                            length=conn.framer.buffered)
        self.conns.pop(conn.fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(conn.fd)
        conn.sock.close()
        c = self.counters
        c.connections_open -= 1
        c.disconnects += 1
        if conn.lagging:
            c.lagging_consumers -= 1
        event(log, logging.DEBUG, "connection.closed", conn=conn.id, reason=reason,
              unsent_bytes=conn.backlog)
