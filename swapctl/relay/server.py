"""The reference relay: a single-threaded epoll loop over Unix stream sockets.

How it works: every connection is both publisher and consumer. What a connection
sends is turned into *units* by the forwarding mode (FRAME: runs of whole frames
from the framer; CHUNK/RAW: each read as is) and each unit is fanned out, in the
order units were read, to every connection (the sender too unless echo is off), so
all receivers see one global order. A write that would block queues the rest of the
unit in that consumer's backlog and arms EPOLLOUT. A consumer whose backlog passes
`max_backlog` bytes is dealt with by the slow-consumer policy: drop-oldest (the
default, like the real relays) sheds its *oldest whole units* that have not started
going out, so framing is never broken; disconnect cuts it; block stops reading every
connection (EPOLLIN off) until its backlog is back under half the bound. A connection
that has sent anything is a *publisher*: whatever the policy it is never waited for
nor cut for being slow; what is queued for it past the bound (its unread echo) is
shed and counted apart (echo_shed). Everything is counted and logged.
A connection whose write side fails (the client closed) or that is cut is taken out
of the fan-out at once, and after the current event what it had already sent is read
and forwarded before it is closed: a publisher's last messages are never lost.
Bytes held in partial frames are bounded in total (`max_partial_total`): the
connection whose read takes the total past it is cut and counted (partial_refused).
Signals only wake the loop (set_wakeup_fd); the loop decides what to do.
With `--handoff`, the listener and connections come from the orchestrator and can
be handed on (see relay/handoff_host.py and docs/handoff-protocol.md).
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

from swapctl.handoff.participant import Participant
from swapctl.logs import RateLimit, event
from swapctl.protocol import Framer, Frames, Rejected, Skipped, WrongDomain, split_frames
from swapctl.protocol.header import MAGIC
from swapctl.relay.config import MAX_DRAIN_READS, READ_SIZE, Forwarding, RelayConfig, SlowConsumer
from swapctl.relay.connection import Connection
from swapctl.relay.counters import Counters
from swapctl.relay.faults import FaultInjector
from swapctl.relay.handoff_host import RelayHandoff
from swapctl.unixsock import adopt_listener, open_listener

log = logging.getLogger("swapctl.relay")
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_HUP = select.EPOLLHUP | select.EPOLLERR
_CHUNK_PEEK = struct.Struct("<IB")
RECONNECT_INTERVAL = 0.5


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.faults = FaultInjector(config.faults, self.counters)
        self.conns: dict[int, Connection] = {}
        self.epoll = select.epoll()
        self.listener: socket.socket | None = None
        self.stats_listener: socket.socket | None = None
        self.participant: Participant | None = None
        self.reading = True  # False once stalled by a fault
        self.paused = False  # True while released in a handoff
        self.adopting = False  # paused after an ADOPT (not a RELEASE): nothing resumed yet
        self.running = False
        self._next_id = 1
        self._warn = RateLimit(1.0)
        self._wake_r, self._wake_w = socket.socketpair()
        self._started = time.monotonic()
        self._next_reconnect = 0.0
        self.handoff = RelayHandoff(self)
        self._domain = config.domain_byte
        self._framed_mode = config.forwarding in (Forwarding.FRAME, Forwarding.SINK)
        self._max_backlog = config.max_backlog
        self._low_water = config.max_backlog // 2  # block: publishers are read again below
        self._policy = config.on_slow_consumer
        self.blocked = False  # block policy: a consumer is over the bound, nothing is read
        self._blocked_since = 0.0
        self._closing: list[tuple[Connection, str]] = []  # read their last bytes, close
        # What a handoff freeze must describe, kept as it changes so that the freeze
        # reads these few connections, not every one (handoff_host.py): those that may
        # carry state (bytes owed, a partial frame: a superset, the freeze filters) and,
        # from a pre-copy on, those created since (None: no pre-copy to compare with).
        self.carrying: dict[int, Connection] = {}
        self.joined: dict[int, Connection] | None = None

    # ----- life cycle -------------------------------------------------------------

    def listen(self) -> None:
        cfg = self.config
        if cfg.handoff is not None:
            self.participant = Participant(cfg.handoff, self.handoff, cfg.token, cfg.release,
                                           no_reply_at=cfg.faults.no_reply_at)
            self.participant.connect()
            self.epoll.register(self.participant.fileno(), _IN)
        elif cfg.listen_fd is not None:
            self.set_listener(adopt_listener(cfg.listen_fd))
        else:
            self.set_listener(open_listener(cfg.socket))
        if cfg.stats_socket is not None:
            self.stats_listener = open_listener(cfg.stats_socket)
            self.epoll.register(self.stats_listener.fileno(), _IN)
        event(log, logging.INFO, "relay.started", socket=str(cfg.socket),
              domain=cfg.domain.value, profile=cfg.profile.value, domain_byte=cfg.domain_byte,
              forwarding=cfg.forwarding.value, echo=cfg.echo, pid=os.getpid(),
              on_slow_consumer=cfg.on_slow_consumer.value, max_backlog=cfg.max_backlog,
              max_partial_total=cfg.max_partial_total,
              handoff=str(cfg.handoff) if cfg.handoff else None)

    def ready(self) -> None:
        """Tell the orchestrator this relay can take over (handoff mode only)."""
        self.faults.crash_at("ready")
        if self.participant is not None:
            self.participant.send_ready()

    def fresh_epoll(self) -> None:
        """Replace the epoll set with one holding only the relay's own sockets: drops
        every client and listener registration at once (a handoff's stop-reading)."""
        old, self.epoll = self.epoll, select.epoll()
        for own in (self.participant, self.stats_listener):
            if own is not None and own.fileno() >= 0:
                self.epoll.register(own.fileno(), _IN)
        if self.running:
            self.epoll.register(self._wake_r.fileno(), _IN)
        old.close()
        for conn in self.conns.values():
            conn.registered = False

    def set_listener(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.listener = sock
        if not self.paused:
            self.epoll.register(sock.fileno(), _IN)

    def serve(self) -> None:
        """Run until SIGTERM/SIGINT; the listening path is left in place."""
        self._install_signals()
        self.running = True
        try:
            while self.running:
                for fd, mask in self.epoll.poll(self._timeout()):
                    self._dispatch(fd, mask)
                    if self._closing and not self.paused:
                        self._finish_closing()
                self._timers()
        finally:
            self.close()

    def _timeout(self) -> float:
        timeout = -1.0
        deadline = self.config.faults.crash_after_seconds
        if deadline is not None:
            timeout = max(0.0, self._started + deadline - time.monotonic())
        if self.participant is not None and self.participant.channel is None:
            timeout = RECONNECT_INTERVAL if timeout < 0 else min(timeout, RECONNECT_INTERVAL)
        return timeout

    def _timers(self) -> None:
        deadline = self.config.faults.crash_after_seconds
        if deadline is not None and time.monotonic() - self._started >= deadline:
            self.faults.crash("crash_after_seconds")
        part = self.participant
        if part is not None and part.channel is None and time.monotonic() >= self._next_reconnect:
            self._next_reconnect = time.monotonic() + RECONNECT_INTERVAL
            if part.reconnect():
                self.epoll.register(part.fileno(), _IN)

    def close(self) -> None:
        for conn, reason in self._closing:
            self._drop(conn, reason)
        self._closing.clear()
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
            self._on_connection(conn, mask)
        elif self.listener is not None and fd == self.listener.fileno():
            self._accept()
        elif self.participant is not None and fd == self.participant.fileno():
            if not self.participant.handle():
                with contextlib.suppress(OSError, ValueError):
                    self.epoll.unregister(fd)
                if self.paused:  # adopted but never resumed: stop watching those sockets
                    self.fresh_epoll()
        elif self.stats_listener is not None and fd == self.stats_listener.fileno():
            self._serve_stats()
        elif fd == self._wake_r.fileno():
            self._on_signals()

    def _on_connection(self, conn: Connection, mask: int) -> None:
        if self.paused:  # (an event polled before a release: its bytes are handed over)
            return
        if mask & _OUT:
            self._flush(conn)
        if conn.closed or conn.closing:
            return
        if self.reading and (mask & _HUP or (mask & _IN and not self.blocked)):
            self._read(conn)  # (read on a hang-up even while blocked: its last bytes)
        elif mask & _HUP:
            self._drop(conn, "hang-up while stalled")

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(256):
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            self.add_connection(sock)

    def new_connection(self, sock: socket.socket, conn_id: int | None = None,
                       nonblocking: bool = False) -> Connection:
        """A Connection object for `sock`, not yet registered for events. Its framer is
        made on first use (a handoff creates thousands of connections at once)."""
        if not nonblocking:
            sock.setblocking(False)
        if conn_id is None:
            conn_id = self._next_id
        self._next_id = max(self._next_id, conn_id) + 1
        conn = Connection(sock, conn_id, None)
        self.conns[conn.fd] = conn
        if self.joined is not None:
            self.joined[conn.id] = conn
        self.counters.connections_open += 1
        self.counters.connections_total += 1
        return conn

    def add_connection(self, sock: socket.socket) -> Connection:
        conn = self.new_connection(sock)
        self._register(conn)
        event(log, logging.DEBUG, "connection.open", conn=conn.id)
        return conn

    def _mask(self, conn: Connection) -> int:
        reading = self.reading and not self.blocked
        return (_IN if reading else 0) | (_OUT if conn.out and not conn.hold else 0)

    def _register(self, conn: Connection) -> None:
        self.epoll.register(conn.fd, self._mask(conn))
        conn.registered = True
        self._track(conn)

    def _update(self, conn: Connection) -> None:
        """After `conn`'s queue went from empty to not or back (or reading changed)."""
        if conn.registered:
            self.epoll.modify(conn.fd, self._mask(conn))
        self._track(conn)

    def _track(self, conn: Connection) -> None:
        if conn.out or conn.partial or conn.carried_in:
            self.carrying[conn.id] = conn
        else:
            self.carrying.pop(conn.id, None)

    def _serve_stats(self) -> None:
        assert self.stats_listener is not None
        with contextlib.suppress(BlockingIOError):
            sock, _ = self.stats_listener.accept()
            with sock:
                sock.setblocking(True)
                sock.settimeout(1.0)
                with contextlib.suppress(OSError):
                    sock.sendall(json.dumps(self.stats()).encode() + b"\n")

    def stats(self, per_connection: bool = True) -> dict[str, object]:
        """The counters, and with `per_connection` a summary of every connection (the
        stats socket's, for an operator). The handoff channel asks without: swapctl
        reads only counters there, and at 1,000 clients the list stopped this loop for
        ~10 ms at every verification and health check, stalling every client."""
        data: dict[str, object] = dict(self.counters.to_dict())
        data["pid"] = os.getpid()
        data["uptime_s"] = round(time.monotonic() - self._started, 3)
        data["state"] = self.handoff.handoff_state()
        if per_connection:
            data["connections"] = [c.summary() for c in self.conns.values()]
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
        self.counters.reads += 1
        self.counters.bytes_in += len(data)
        conn.bytes_in += len(data)
        self.ingest(conn, data)

    def ingest(self, conn: Connection, data: bytes) -> None:
        """Process bytes that `conn` sent, as read or carried over in a handoff."""
        mode = self.config.forwarding
        if self._framed_mode:
            framer = conn.framer
            if framer is None:
                framer = conn.framer = Framer(max_message=self.config.max_message,
                                              domain=self._domain)
            self._framed(conn, framer.feed(data), forward=mode is Forwarding.FRAME)
            held = framer.buffered
            if held != conn.partial:
                self._partial(conn, held)
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
            if magic == MAGIC and dom == self._domain:
                self._unit(conn, data, 1)
                return
        self.counters.chunks_dropped += 1
        if self._warn.allow((conn.id, "chunk")):
            event(log, logging.WARNING, "chunk.dropped", conn=conn.id, length=len(data))

    def _partial(self, conn: Connection, held: int) -> None:
        """Account for `conn`'s partial frame; cut it if it takes the total over the bound."""
        c = self.counters
        c.partial_bytes += held - conn.partial
        grew = held > conn.partial
        conn.partial = held
        self._track(conn)
        if not grew or c.partial_bytes <= self.config.max_partial_total or conn.closed:
            return
        c.partial_refused += 1
        c.partial_refused_bytes += held
        event(log, logging.WARNING, "input.partial_refused", conn=conn.id, held=held,
              partial_bytes=c.partial_bytes, max_partial_total=self.config.max_partial_total,
              advice="partial frames of all clients together passed --max-partial-total; "
                     "this client (the one that grew past it) is disconnected; raise the "
                     "bound if clients send large messages slowly")
        conn.framer = None  # (counted here, not again as truncated)
        self._drop(conn, "partial frames over --max-partial-total")

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
            if conn.closed or conn.closing or (conn is sender and not echo):
                continue
            self._deliver(conn, data, frames)

    def _deliver(self, conn: Connection, data: bytes, frames: int) -> None:
        self.counters.frames_out += frames
        conn.frames_out += frames
        if conn.out or conn.hold:
            conn.out.append((data, frames))
            conn.backlog += len(data)
            if conn.backlog > self._max_backlog:
                self._over_bound(conn)
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._output_failed(conn, f"write error: {exc}")
            return
        self.counters.bytes_out += sent
        if sent < len(data):
            conn.out.append((data, frames))
            conn.head_sent = sent
            conn.backlog = len(data) - sent
            self._update(conn)

    def _flush(self, conn: Connection) -> bool:
        """Write what is queued for `conn`; True once its backlog is empty."""
        if conn.hold:  # a handoff still owes it older bytes (handoff_host.py)
            return False
        while conn.out:
            data, _ = conn.out[0]
            try:
                sent = conn.sock.send(memoryview(data)[conn.head_sent :])
            except BlockingIOError:
                break
            except OSError as exc:
                self._output_failed(conn, f"write error: {exc}")
                return True
            self.counters.bytes_out += sent
            conn.backlog -= sent
            conn.head_sent += sent
            if conn.head_sent < len(data):
                break
            conn.out.popleft()
            conn.head_sent = 0
        if conn.blocking and conn.backlog <= self._low_water:
            self._unblock(conn)
        if conn.out:
            return False
        self._update(conn)
        if conn.lagging:
            conn.lagging = False
            self.counters.lagging_consumers -= 1
            event(log, logging.INFO, "consumer.caught_up", conn=conn.id)
        return True

    def _over_bound(self, conn: Connection) -> None:
        """`conn`'s backlog just passed the bound: the slow-consumer policy decides."""
        policy = self._policy
        if policy is SlowConsumer.DROP_OLDEST or conn.publisher:
            self._shed(conn)
        elif policy is SlowConsumer.BLOCK:
            if not conn.blocking:
                self._block(conn)
        else:
            self._cut(conn)

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
        if conn.publisher:  # its unread echo (and what others sent it): counted apart
            c.echo_shed_frames += shed_frames
            c.echo_shed_bytes += shed_bytes
        else:
            c.lag_drops_frames += shed_frames
            c.lag_drops_bytes += shed_bytes
        if self._warn.allow((conn.id, "lag")):
            event(log, logging.WARNING,
                  "publisher.echo_shed" if conn.publisher else "consumer.lagging",
                  conn=conn.id, backlog_bytes=conn.backlog, dropped_frames_total=conn.lag_drops)

    def _block(self, conn: Connection) -> None:
        """Block policy: stop reading every connection until `conn` has caught up."""
        c = self.counters
        conn.blocking = True
        c.block_episodes += 1
        c.blocking_consumers += 1
        if not self.blocked:
            self.blocked = True
            self._blocked_since = time.monotonic()
            for other in self.conns.values():
                self._update(other)
        if self._warn.allow((conn.id, "block")):
            event(log, logging.WARNING, "consumer.blocking", conn=conn.id,
                  backlog_bytes=conn.backlog, episodes=c.block_episodes)

    def _unblock(self, conn: Connection) -> None:
        c = self.counters
        conn.blocking = False
        c.blocking_consumers -= 1
        if c.blocking_consumers == 0 and self.blocked:
            self.blocked = False
            c.blocked_s += time.monotonic() - self._blocked_since
            for other in self.conns.values():
                self._update(other)

    def _cut(self, conn: Connection) -> None:
        """Disconnect policy: the slow consumer is cut (after its last bytes are read)."""
        c = self.counters
        c.slow_disconnects += 1
        c.slow_disconnect_bytes += conn.backlog
        event(log, logging.WARNING, "consumer.disconnected", conn=conn.id,
              backlog_bytes=conn.backlog, max_backlog=self._max_backlog,
              reason="slow consumer: backlog over --max-backlog (--on-slow-consumer disconnect)")
        self._output_failed(conn, "slow consumer cut")

    # ----- closing: a client's last bytes are read before it is dropped ------------

    def _output_failed(self, conn: Connection, reason: str) -> None:
        """Nothing more can (or will) be written to `conn`: take it out of the fan-out
        and, after the current event, read what it had sent, forward it, close it."""
        if conn.closing or conn.closed:
            return
        self.counters.unsent_at_close_bytes += conn.backlog
        conn.out.clear()
        conn.backlog = conn.head_sent = 0
        if conn.blocking:
            self._unblock(conn)
        if self.paused:  # a handoff holds the socket: the next relay finds it closed
            return
        conn.closing = True
        if conn.registered:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(conn.fd)
            conn.registered = False
        self._closing.append((conn, reason))

    def _finish_closing(self) -> None:
        while self._closing:
            conn, reason = self._closing.pop(0)
            if self.reading and self.conns.get(conn.fd) is conn:
                self._drain(conn)
            self._drop(conn, reason)

    def _drain(self, conn: Connection) -> None:
        """Read and forward what `conn` sent, until none is left (bounded)."""
        c = self.counters
        for _ in range(MAX_DRAIN_READS):
            try:
                data = conn.sock.recv(READ_SIZE)
            except OSError:  # (BlockingIOError: all read; others: nothing more to read)
                return
            if not data:
                return
            c.reads += 1
            c.bytes_in += len(data)
            c.drained_at_close_bytes += len(data)
            conn.bytes_in += len(data)
            self.ingest(conn, data)
            if conn.closed:
                return

    # ----- stalls and disconnects ------------------------------------------------

    def stall(self) -> None:
        """Stop reading from every connection (queued output still drains)."""
        if not self.reading:
            return
        self.reading = False
        self.counters.stalled = True
        for conn in self.conns.values():
            self._update(conn)
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
        self._forget(conn)
        c = self.counters
        c.connections_open -= 1
        c.disconnects += 1
        event(log, logging.DEBUG, "connection.closed", conn=conn.id, reason=reason,
              unsent_bytes=conn.backlog)

    def _forget(self, conn: Connection) -> None:
        """Unregister, then close: another process may hold the same socket (handoff).
        Whatever it weighed in the relay's gauges goes with it (dropped or handed over)."""
        if conn.registered:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(conn.fd)
            conn.registered = False
        self.carrying.pop(conn.id, None)
        if self.joined:
            self.joined.pop(conn.id, None)
        if conn.partial:
            self.counters.partial_bytes -= conn.partial
            conn.partial = 0
        if conn.blocking:
            self._unblock(conn)
        if conn.lagging:
            conn.lagging = False
            self.counters.lagging_consumers -= 1
        conn.sock.close()
