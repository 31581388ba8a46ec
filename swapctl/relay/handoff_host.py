"""The reference relay's handoff hooks (the `HandoffHost` side of the protocol).

RELEASE: stop reading and accepting (unregister every socket from epoll, so nothing
more is read), flush queued output until empty or `flush_ms`, then describe every
connection (partial frame read, bytes still owed, counters) and hand over the fds.
The released relay keeps its sockets until CLOSE, so RESUME can undo a failed
handoff with nothing lost. ADOPT registers handed-over sockets without reading;
RESUME starts reading, feeding each carried partial frame first and writing each
carried backlog before anything new, so per-client byte streams continue exactly.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from typing import Any, Protocol

from swapctl.handoff.manifest import ConnState, Transfer
from swapctl.handoff.messages import HandoffError
from swapctl.logs import event
from swapctl.relay.connection import Connection
from swapctl.relay.counters import Counters
from swapctl.relay.faults import FaultInjector

log = logging.getLogger("swapctl.relay.handoff")


class Relay(Protocol):
    """What the hooks need of a relay (`relay.server.Relay` is the one there is): its
    listener, connection table and epoll set, and the few steps that use them. Named
    here, not imported, so that the server can own its hooks without an import cycle."""

    paused: bool
    adopting: bool
    reading: bool
    listener: socket.socket | None
    conns: dict[int, Connection]
    epoll: select.epoll
    counters: Counters
    faults: FaultInjector

    def stats(self) -> dict[str, object]: ...
    def fresh_epoll(self) -> None: ...
    def set_listener(self, sock: socket.socket) -> None: ...
    def new_connection(self, sock: socket.socket, conn_id: int | None = None,
                       nonblocking: bool = False) -> Connection: ...
    def add_connection(self, sock: socket.socket) -> Connection: ...
    def ingest(self, conn: Connection, data: bytes) -> None: ...
    def _register(self, conn: Connection) -> None: ...
    def _update(self, conn: Connection) -> None: ...
    def _flush(self, conn: Connection) -> bool: ...
    def _forget(self, conn: Connection) -> None: ...


class RelayHandoff:
    """Implements `HandoffHost` over a `Relay`'s listener and connection table."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def stats(self) -> dict[str, Any]:
        return self.relay.stats()

    def handoff_state(self) -> str:
        relay = self.relay
        if relay.paused:
            if relay.adopting:  # adopted (all or part of a transfer), not resumed yet
                return "adopted"
            return "released" if relay.listener is not None or relay.conns else "paused"
        if relay.listener is None and not relay.conns:
            return "standby"
        return "active" if relay.listener is not None else "probing"

    def handoff_release(self, flush_ms: float) -> Transfer:
        relay = self.relay
        if relay.paused:
            raise HandoffError("already released")
        stopped_ns = time.monotonic_ns()
        relay.paused = True
        relay.fresh_epoll()  # nothing is read or accepted from here on
        flushed = _flush_until(relay, time.monotonic() + flush_ms / 1000)
        conns = [
            (ConnState(c.id, c.carried_in + (c.framer.pending if c.framer else b""),
                       c.unsent(), c.bytes_in, c.frames_in, c.frames_out, c.lag_drops), c.fd)
            for c in relay.conns.values()
        ]
        listener = None if relay.listener is None else relay.listener.fileno()
        meta = {"stopped_reading_ns": stopped_ns, "released_ns": time.monotonic_ns(),
                "flushed_bytes": flushed, "unsent_bytes": sum(len(s.unsent_out) for s, _ in conns),
                "pending_bytes": sum(len(s.pending_in) for s, _ in conns)}
        event(log, logging.INFO, "handoff.released", connections=len(conns), **meta)
        return Transfer(listener, conns, meta)

    def handoff_adopt(self, transfer: Transfer, first: bool = True) -> None:
        """Take one part of a transfer. Sockets are registered for reading at once (so
        resume is O(1)) but nothing is read or written before resume: the loop skips
        connections while paused, and EPOLLOUT is only armed at resume."""
        relay = self.relay
        relay.faults.crash_at("adopt")
        standby = relay.listener is None and not relay.conns and not relay.paused
        if standby != first:
            for fd in transfer.fds:
                socket.socket(fileno=fd).close()
            raise HandoffError(f"cannot adopt in state {self.handoff_state()}: not standby"
                               if first else "adopt part without its first part")
        relay.paused = relay.adopting = True
        if transfer.listener is not None:
            relay.set_listener(socket.socket(fileno=transfer.listener))
        reading = select.EPOLLIN if relay.reading else 0
        for state, fd in transfer.conns:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fd)
            # O_NONBLOCK lives on the shared open file: the old relay already set it
            conn = relay.new_connection(sock, state.id, nonblocking=True)
            conn.carried_in = state.pending_in
            if state.unsent_out:
                conn.out.append((state.unsent_out, 0))
                conn.backlog = len(state.unsent_out)
            conn.bytes_in, conn.frames_in = state.bytes_in, state.frames_in
            conn.frames_out, conn.lag_drops = state.frames_out, state.lag_drops
            relay.epoll.register(fd, reading)
            conn.registered = True
        relay.counters.adopted += len(transfer.conns)
        event(log, logging.INFO, "handoff.adopted", connections=len(transfer.conns),
              listener=transfer.listener is not None)

    def handoff_resume(self) -> int:
        relay = self.relay
        relay.faults.crash_at("resume")
        if not relay.paused:
            raise HandoffError(f"nothing to resume in state {self.handoff_state()}")
        relay.paused = relay.adopting = False
        if relay.listener is not None:
            relay.epoll.register(relay.listener.fileno(), select.EPOLLIN)
        for conn in list(relay.conns.values()):
            if not conn.registered:  # resuming after a release: the epoll set was emptied
                relay._register(conn)
            elif conn.out:
                relay._update(conn)  # arm EPOLLOUT for carried bytes
        resumed_ns = time.monotonic_ns()
        for conn in list(relay.conns.values()):
            if conn.out:
                relay._flush(conn)
            if conn.carried_in and not conn.closed:
                data, conn.carried_in = conn.carried_in, b""
                relay.ingest(conn, data)
        event(log, logging.INFO, "handoff.resumed", connections=len(relay.conns))
        return resumed_ns

    def handoff_close(self) -> None:
        relay = self.relay
        if not relay.paused:
            raise HandoffError(f"close without release, in state {self.handoff_state()}")
        for conn in list(relay.conns.values()):
            relay.conns.pop(conn.fd, None)
            relay._forget(conn)
            relay.counters.connections_open -= 1
            relay.counters.handed_over += 1
        if relay.listener is not None:
            relay.listener.close()  # not in the epoll set since the release
            relay.listener = None
        relay.paused = relay.adopting = False
        event(log, logging.INFO, "handoff.closed", state=self.handoff_state())

    def handoff_listener(self) -> int | None:
        """The listening socket's fd (sent as a copy; this relay keeps serving)."""
        listener = self.relay.listener
        return None if listener is None else listener.fileno()

    def handoff_probe(self, fds: list[int]) -> None:
        relay = self.relay
        relay.faults.crash_at("probe")
        if relay.listener is not None or relay.paused:
            for fd in fds:
                socket.socket(fileno=fd).close()
            raise HandoffError(f"probe needs standby, relay is {self.handoff_state()}")
        for fd in fds:
            relay.add_connection(socket.socket(fileno=fd))



def _flush_until(relay: Relay, deadline: float) -> int:
    """Write queued output, waiting for writability until `deadline`; bytes written."""
    before = relay.counters.bytes_out
    poller = select.poll()
    waiting = {c.fd: c for c in relay.conns.values() if c.out and not relay._flush(c)}
    for fd in waiting:
        poller.register(fd, select.POLLOUT)
    while waiting and time.monotonic() < deadline:
        timeout_ms = max(0, int((deadline - time.monotonic()) * 1000))
        for fd, _ in poller.poll(timeout_ms):
            conn = waiting.get(fd)
            if conn is not None and relay._flush(conn):
                poller.unregister(fd)
                del waiting[fd]
    return relay.counters.bytes_out - before
