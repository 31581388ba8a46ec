"""The reference relay's handoff hooks (the `HandoffHost` side of the protocol).

RELEASE: stop reading and accepting (unregister every socket from epoll, so nothing
more is read), flush queued output until empty or `flush_ms`, then describe every
connection (partial frame read, bytes still owed, counters) and hand over the fds.
The released relay keeps its sockets until CLOSE, so RESUME can undo a failed
handoff with nothing lost. ADOPT registers handed-over sockets without reading;
RESUME starts reading, feeding each carried partial frame first and writing each
carried backlog before anything new, so per-client byte streams continue exactly.

Pre-copy extension (docs/handoff-protocol.md section 10), each step O(what changed):
- PRECOPY (serving relay): every fd and the listener go out; the relay notes the ids
  it sent and the next id it will give (`_PreCopy`), and keeps serving.
- PREADOPT (standby relay): the sockets are wrapped and registered in a *staging*
  epoll set that the loop does not poll; nothing is read.
- freeze (RELEASE naming the pre-copy): stop reading by swapping in an epoll set that
  holds only the relay's own sockets; describe only connections accepted since the
  pre-copy (with fds), those closed since (ids), and those with a partial frame read
  or bytes owed. Owed bytes are DEFERRED: after the manifest the queued units go into
  a memfd (handoff/backlog.py) with their frame counts and how far the first was sent.
- ADOPT of a delta: close the closed, wrap the new, note the carried state; a client
  owed bytes is *held* (nothing is written to it) until BACKLOG brings them.
- RESUME: the staging set becomes the loop's epoll set (O(1)); carried partial
  frames are fed. BACKLOG: the owed units go in front of anything newer, keeping the
  started unit pinned (a torn frame is completed, never shed) and the others whole.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from swapctl.handoff.backlog import read_backlogs, write_backlogs
from swapctl.handoff.manifest import (
    DEFERRED,
    DELTA_FORMAT,
    HEAD_STARTED,
    ConnState,
    Transfer,
)
from swapctl.handoff.messages import HandoffError
from swapctl.handoff.participant import Participant
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
    running: bool
    listener: socket.socket | None
    stats_listener: socket.socket | None
    participant: Participant | None
    conns: dict[int, Connection]
    carrying: dict[int, Connection]
    joined: dict[int, Connection] | None
    epoll: select.epoll
    counters: Counters
    faults: FaultInjector
    _wake_r: socket.socket

    def stats(self, per_connection: bool = True) -> dict[str, object]: ...
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
    def _drop(self, conn: Connection, reason: str) -> None: ...


@dataclass(slots=True)
class _PreCopy:
    """What the last PRECOPY sent: the delta at the freeze is computed against it."""

    generation: int
    ids: set[int]


@dataclass(slots=True)
class _Staged:
    """A relay that pre-adopted: its staging epoll set and what the freeze carried."""

    epoll: select.epoll
    conns: dict[int, Connection] = field(default_factory=dict)  # by connection id
    carried: list[Connection] = field(default_factory=list)  # with a partial frame in


class RelayHandoff:
    """Implements `HandoffHost` (and the pre-copy `PreCopyHost`) over a `Relay`."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.generation = 0
        self.precopied: _PreCopy | None = None  # serving relay: the last pre-copy sent
        self.staged: _Staged | None = None  # standby relay: pre-adopted, not resumed
        self.owed: list[Connection] = []  # frozen relay: DEFERRED, to write to a memfd
        self.retired: select.epoll | None = None  # frozen relay: the set it stopped polling
        self.holding: dict[int, tuple[Connection, int]] = {}  # adopter: id -> (conn, flags)

    def stats(self) -> dict[str, Any]:
        return self.relay.stats(per_connection=False)  # counters: see Relay.stats

    def handoff_state(self) -> str:
        relay = self.relay
        if relay.paused:
            if relay.adopting:  # adopted (all or part of a transfer), not resumed yet
                return "adopted"
            return "released" if relay.listener is not None or relay.conns else "paused"
        if relay.listener is None and not relay.conns:
            return "standby"
        return "active" if relay.listener is not None else "probing"

    # ----- version 1 ---------------------------------------------------------------

    def handoff_release(self, flush_ms: float) -> Transfer:
        relay = self.relay
        if relay.paused:
            raise HandoffError("already released")
        if self.holding:
            raise HandoffError(f"{len(self.holding)} clients still wait for bytes carried "
                               "from the previous relay (BACKLOG not received)")
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
            _close_fds(transfer.fds)
            raise HandoffError(f"cannot adopt in state {self.handoff_state()}: not standby"
                               if first else "adopt part without its first part")
        relay.paused = relay.adopting = True
        if transfer.listener is not None:
            relay.set_listener(socket.socket(fileno=transfer.listener))
        reading = select.EPOLLIN if relay.reading else 0
        for state, fd in transfer.conns:
            conn = self._wrap(state, fd)
            conn.carried_in = state.pending_in
            if state.unsent_out:
                _owe_unpinned(conn, state.unsent_out)
            relay.epoll.register(fd, reading)
            conn.registered = True
        relay.counters.adopted += len(transfer.conns)
        event(log, logging.INFO, "handoff.adopted", connections=len(transfer.conns),
              listener=transfer.listener is not None)

    def _wrap(self, state: ConnState, fd: int) -> Connection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fd)
        # O_NONBLOCK lives on the shared open file: the old relay already set it
        conn = self.relay.new_connection(sock, state.id, nonblocking=True)
        conn.bytes_in, conn.frames_in = state.bytes_in, state.frames_in
        conn.frames_out, conn.lag_drops = state.frames_out, state.lag_drops
        return conn

    def handoff_resume(self) -> int:
        relay = self.relay
        relay.faults.crash_at("resume")
        if not relay.paused:
            raise HandoffError(f"nothing to resume in state {self.handoff_state()}")
        if self.staged is not None:
            return self._resume_staged(self.staged)
        self._retire()  # (a frozen relay taken back: its sockets are re-registered below)
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
        if self.staged is not None:  # a pre-copy that never became a handoff
            self.staged.epoll.close()  # drops every staged registration at once
            self.staged = None
            for conn in relay.conns.values():
                conn.registered = False
        self._retire()
        for conn in list(relay.conns.values()):
            relay.conns.pop(conn.fd, None)
            relay._forget(conn)
            relay.counters.connections_open -= 1
            relay.counters.handed_over += 1
        if relay.listener is not None:
            relay.listener.close()  # not in the epoll set since the release
            relay.listener = None
        relay.paused = relay.adopting = False
        self.holding.clear()
        event(log, logging.INFO, "handoff.closed", state=self.handoff_state())

    def handoff_listener(self) -> int | None:
        """The listening socket's fd (sent as a copy; this relay keeps serving)."""
        listener = self.relay.listener
        return None if listener is None else listener.fileno()

    def handoff_probe(self, fds: list[int]) -> None:
        relay = self.relay
        relay.faults.crash_at("probe")
        if relay.listener is not None or relay.paused:
            _close_fds(fds)
            raise HandoffError(f"probe needs standby, relay is {self.handoff_state()}")
        for fd in fds:
            relay.add_connection(socket.socket(fileno=fd))

    # ----- pre-copy extension: the serving side ------------------------------------

    def handoff_precopy(self) -> Transfer:
        """Every fd and the listener, while this relay keeps serving (no state: the
        freeze sends what changed)."""
        relay = self.relay
        if relay.paused or relay.listener is None:
            raise HandoffError(f"pre-copy needs an active relay, this one is "
                               f"{self.handoff_state()}")
        self.generation += 1
        conns = [(ConnState(c.id, b"", b"", c.bytes_in, c.frames_in, c.frames_out,
                            c.lag_drops), c.fd) for c in relay.conns.values()]
        self.precopied = _PreCopy(self.generation, {s.id for s, _ in conns})
        relay.joined = {}  # the relay notes the connections it creates from now on
        event(log, logging.INFO, "handoff.precopied", connections=len(conns),
              generation=self.generation)
        return Transfer(relay.listener.fileno(), conns, {"generation": self.generation})

    def handoff_freeze(self, generation: int) -> Transfer:
        """Stop reading (O(1)) and describe only what changed since pre-copy
        `generation`: new connections with their fds, closed ids, carried state."""
        relay = self.relay
        pre = self.precopied
        if relay.paused:
            raise HandoffError("already released")
        if pre is None or pre.generation != generation:
            raise HandoffError(f"no pre-copy {generation} here (the last was "
                               f"{pre.generation if pre else 'none'}): pre-copy again")
        if self.holding:
            raise HandoffError(f"{len(self.holding)} clients still wait for bytes carried "
                               "from the previous relay (BACKLOG not received)")
        stopped_ns = time.monotonic_ns()
        relay.paused = True
        self.retired, relay.epoll = relay.epoll, self._own_epoll()
        self.precopied = None
        joined, relay.joined = relay.joined or {}, None
        records, flagged, owed = _delta_records(relay.carrying, joined)
        closed: list[int] = []
        if len(relay.conns) - len(joined) != len(pre.ids):  # (scan only when some closed)
            live = {c.id for c in relay.conns.values()}
            closed = [i for i in pre.ids if i not in live]
        self.owed = owed
        meta = {"stopped_reading_ns": stopped_ns, "released_ns": time.monotonic_ns(),
                "flushed_bytes": 0, "unsent_bytes": sum(n for _, n in flagged.values()),
                "pending_bytes": sum(len(s.pending_in) for s, _ in records),
                "backlog": len(owed), "generation": generation}
        return Transfer(None, records, meta, DELTA_FORMAT, closed, flagged)

    def handoff_backlog_export(self) -> tuple[dict[str, Any], int | None]:
        """OWED, once the candidate resumed: the owed units into a memfd, and the
        bookkeeping the freeze left for later (the retired epoll set)."""
        owed, self.owed = self.owed, []
        fields, fd = write_backlogs([(c.id, c.head_sent, list(c.out)) for c in owed])
        self._retire()
        event(log, logging.INFO, "handoff.released", connections=len(self.relay.conns),
              backlog_connections=len(owed), backlog_bytes=fields["data_bytes"])
        return fields, fd

    def _retire(self) -> None:
        if self.retired is None:
            return
        self.retired.close()
        self.retired = None
        for conn in self.relay.conns.values():
            conn.registered = False

    def _own_epoll(self, ep: select.epoll | None = None) -> select.epoll:
        """An epoll set with the relay's own sockets (control, stats, signals) added."""
        relay = self.relay
        ep = ep or select.epoll()
        own: list[Any] = [relay.participant, relay.stats_listener]
        if relay.running:
            own.append(relay._wake_r)
        for sock in own:
            if sock is not None and sock.fileno() >= 0:
                with contextlib.suppress(FileExistsError):
                    ep.register(sock.fileno(), select.EPOLLIN)
        return ep

    # ----- pre-copy extension: the adopting side -----------------------------------

    def handoff_preadopt(self, transfer: Transfer, first: bool) -> None:
        """Stage pre-copied sockets in an epoll set the loop does not poll yet."""
        relay = self.relay
        standby = relay.listener is None and not relay.conns and not relay.paused
        if (first and not standby) or (not first and self.staged is None):
            _close_fds(transfer.fds)
            raise HandoffError(f"cannot pre-adopt in state {self.handoff_state()}: not standby"
                               if first else "pre-adopt part without its first part")
        if first:
            relay.paused = relay.adopting = True
            self.staged = _Staged(select.epoll())
        staged = self.staged
        assert staged is not None
        reading = select.EPOLLIN if relay.reading else 0
        if transfer.listener is not None:
            relay.set_listener(socket.socket(fileno=transfer.listener))  # paused: unregistered
            staged.epoll.register(transfer.listener, select.EPOLLIN)
        for state, fd in transfer.conns:
            staged.conns[state.id] = conn = self._wrap(state, fd)
            staged.epoll.register(fd, reading)
            conn.registered = True  # (in the staging set, the loop's own from resume)
        relay.counters.adopted += len(transfer.conns)

    def handoff_adopt_delta(self, transfer: Transfer, first: bool) -> None:
        """The freeze's delta: close the closed, stage the new, note carried state."""
        relay = self.relay
        relay.faults.crash_at("adopt")
        staged = self.staged
        if staged is None:
            _close_fds(transfer.fds)
            raise HandoffError(f"a delta needs a pre-adopt first, relay is "
                               f"{self.handoff_state()}")
        for conn_id in transfer.closed:
            conn = staged.conns.pop(conn_id, None)
            if conn is not None:
                self._unstage(staged, conn)
        reading = select.EPOLLIN if relay.reading else 0
        for state, fd in transfer.conns:
            if fd >= 0:
                staged.conns[state.id] = conn = self._wrap(state, fd)
                staged.epoll.register(fd, reading)
                conn.registered = True
            else:
                found = staged.conns.get(state.id)
                if found is None:
                    raise HandoffError(f"connection {state.id} was never pre-copied here")
                conn = found
                conn.bytes_in, conn.frames_in = state.bytes_in, state.frames_in
                conn.frames_out, conn.lag_drops = state.frames_out, state.lag_drops
            if state.pending_in:
                conn.carried_in = state.pending_in
                staged.carried.append(conn)
            if state.unsent_out:
                _owe_unpinned(conn, state.unsent_out)
                staged.carried.append(conn)
            flags, _ = transfer.owed.get(state.id, (0, 0))
            if flags & DEFERRED:
                conn.hold = True  # nothing is written to it before its BACKLOG arrives
                self.holding[state.id] = (conn, flags)
        relay.counters.adopted += sum(fd >= 0 for _, fd in transfer.conns)

    def _unstage(self, staged: _Staged, conn: Connection) -> None:
        """A pre-copied connection the old relay closed meanwhile: unregister, close."""
        relay = self.relay
        with contextlib.suppress(OSError, ValueError):
            staged.epoll.unregister(conn.fd)
        conn.registered = False
        relay.conns.pop(conn.fd, None)
        relay._forget(conn)
        relay.counters.connections_open -= 1
        relay.counters.adopted -= 1

    def _resume_staged(self, staged: _Staged) -> int:
        relay = self.relay
        self._own_epoll(staged.epoll)
        relay.epoll.close()
        relay.epoll = staged.epoll  # every staged socket is watched from now on: O(1)
        self.staged = None
        relay.paused = relay.adopting = False
        resumed_ns = time.monotonic_ns()
        for conn in staged.carried:
            if conn.closed:
                continue
            if conn.out and not conn.hold:
                relay._update(conn)
                relay._flush(conn)
            if conn.carried_in and not conn.closed:
                data, conn.carried_in = conn.carried_in, b""
                relay.ingest(conn, data)
        event(log, logging.INFO, "handoff.resumed", connections=len(relay.conns),
              carried=len(staged.carried), holding=len(self.holding))
        return resumed_ns

    def handoff_backlog_import(self, fd: int | None, msg: dict[str, Any]) -> int:
        """The owed units go in front of anything queued since the resume."""
        entries = read_backlogs(fd, msg) if fd is not None else []
        for conn_id, head_sent, units in entries:
            conn, _ = self.holding.pop(conn_id, (None, 0))
            if conn is None or conn.closed:
                continue
            owed = sum(len(unit) for unit, _ in units) - head_sent
            conn.out.extendleft(reversed(cast(list[tuple[bytes, int]], units)))
            conn.head_sent = head_sent
            conn.backlog += owed
            self._unhold(conn)
        for conn, _ in self.holding.values():  # nothing was owed after all
            self._unhold(conn)
        self.holding.clear()
        return len(entries)

    def _unhold(self, conn: Connection) -> None:
        conn.hold = False
        if conn.closed:
            return
        self.relay._update(conn)
        self.relay._flush(conn)

    def handoff_control_lost(self) -> None:
        """The orchestrator went away before the BACKLOG came: a client whose stream
        stopped mid-frame is disconnected (it must never see a torn frame); the
        others are served on without the bytes the previous relay owed them."""
        if not self.holding or self.relay.paused:
            return
        for conn, flags in list(self.holding.values()):
            if flags & HEAD_STARTED:
                self.relay._drop(conn, "carried bytes lost with the orchestrator mid-frame")
            else:
                self._unhold(conn)
        event(log, logging.WARNING, "handoff.backlog_lost", connections=len(self.holding))
        self.holding.clear()


def _delta_records(carrying: dict[int, Connection], joined: dict[int, Connection]
                   ) -> tuple[list[tuple[ConnState, int]], dict[int, tuple[int, int]],
                              list[Connection]]:
    """The frozen relay's records: connections created since the pre-copy (`joined`,
    with their fds) and any with a partial frame read or bytes owed (owed bytes
    DEFERRED). Inside the pause it reads only those: the relay keeps both tables as
    they change (`carrying` may hold connections with nothing left: filtered here), so
    the freeze's cost follows what changed, not how many clients there are."""
    records: list[tuple[ConnState, int]] = []
    flagged: dict[int, tuple[int, int]] = {}
    owed: list[Connection] = []
    for c in [*joined.values(), *(c for i, c in carrying.items() if i not in joined)]:
        pending = c.carried_in
        if c.partial and c.framer is not None:
            pending += c.framer.pending
        is_new = c.id in joined
        if not (pending or c.out or is_new):
            continue
        if c.out:
            flagged[c.id] = (DEFERRED | (HEAD_STARTED if c.head_sent else 0), c.backlog)
            owed.append(c)
        records.append((ConnState(c.id, pending, b"", c.bytes_in, c.frames_in, c.frames_out,
                                  c.lag_drops), c.fd if is_new else -1))
    return records, flagged, owed


def _owe_unpinned(conn: Connection, unsent: bytes) -> None:
    """Bytes carried without their frame boundaries (a version-1 transfer): they may
    start mid-frame, so they go out as one unit that is never shed. It is queued as a
    *started* unit (one placeholder byte counted as sent), the one thing shedding
    keeps: a consumer never sees a torn frame."""
    conn.out.append((b"\0" + unsent, 0))
    conn.head_sent = 1
    conn.backlog = len(unsent)


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        socket.socket(fileno=fd).close()


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
