"""A raw byte forwarder: the floor a Python relay is compared with. Parses nothing.

`python -m swapctl.bench.rawfwd --socket PATH` serves one Unix stream socket with the
same shape as the reference relay, minus everything Protocol V2: one epoll loop,
64 KiB reads, each read broadcast as is to every connection *including the sender*
(echo), a write that would block queued with EPOLLOUT armed, and a consumer queue
over `--max-backlog` bytes dealt with as the relay's `--on-slow-consumer` does, so
both do the same work: `drop-oldest` sheds its oldest unsent reads; `block` stops
reading every connection (EPOLLIN off, a hang-up still read) until that consumer is
back under half the bound. As in the relay, a connection that has sent anything is a
publisher, never waited for: its queue is shed. SIGTERM ends it; so does EOF on stdin
when stdin is a pipe (the benchmark that started it has gone away).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import stat
import sys
from collections import deque
from dataclasses import dataclass, field

READ_SIZE = 65_536
DEFAULT_MAX_BACKLOG = 16 * 1024 * 1024
_IN, _OUT, _HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLHUP | select.EPOLLERR
POLICIES = ("drop-oldest", "block")


@dataclass(slots=True, eq=False)
class Conn:
    sock: socket.socket
    out: deque[memoryview] = field(default_factory=deque)
    backlog: int = 0
    publisher: bool = False  # has sent something: its queue is shed, never waited for
    blocking: bool = False  # block: over the bound, nothing is read until it catches up


class RawForwarder:
    def __init__(self, listener: socket.socket, max_backlog: int,
                 policy: str = "drop-oldest") -> None:
        self.listener = listener
        self.max_backlog = max_backlog
        self.block = policy == "block"
        self.epoll = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.reads = self.bytes_in = self.shed_bytes = 0
        self.blocking = self.block_episodes = 0  # consumers over the bound; times it began
        self.epoll.register(listener.fileno(), _IN)

    def serve(self, stop_fd: int | None) -> None:
        if stop_fd is not None:
            self.epoll.register(stop_fd, _IN)
        while True:
            for fd, mask in self.epoll.poll():
                if fd == stop_fd:
                    if not os.read(fd, 4096):
                        return
                elif fd == self.listener.fileno():
                    self._accept()
                elif (conn := self.conns.get(fd)) is not None:
                    if mask & _OUT:
                        self._flush(fd, conn)
                    if fd in self.conns and (mask & _HUP or (mask & _IN and not self.blocking)):
                        self._read(fd, conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            self.conns[sock.fileno()] = Conn(sock)
            self.epoll.register(sock.fileno(), 0 if self.blocking else _IN)

    def _read(self, fd: int, conn: Conn) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(fd, conn)
            return
        self.reads += 1
        self.bytes_in += len(data)
        conn.publisher = True
        for other_fd, other in list(self.conns.items()):
            self._deliver(other_fd, other, data)

    def _deliver(self, fd: int, conn: Conn, data: bytes) -> None:
        if conn.out:
            conn.out.append(memoryview(data))
            conn.backlog += len(data)
            if conn.backlog > self.max_backlog and self.block and not conn.publisher:
                if not conn.blocking:
                    self._set_blocking(conn, True)
                return
            while conn.backlog > self.max_backlog and len(conn.out) > 1:
                dropped = conn.out[1]  # out[0] may be half written: keep it
                del conn.out[1]
                conn.backlog -= len(dropped)
                self.shed_bytes += len(dropped)
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(fd, conn)
            return
        if sent < len(data):
            conn.out.append(memoryview(data)[sent:])
            conn.backlog = len(data) - sent
            self.epoll.modify(fd, self._mask(conn))

    def _flush(self, fd: int, conn: Conn) -> None:
        while conn.out:
            try:
                sent = conn.sock.send(conn.out[0])
            except BlockingIOError:
                break
            except OSError:
                self._close(fd, conn)
                return
            conn.backlog -= sent
            if sent < len(conn.out[0]):
                conn.out[0] = conn.out[0][sent:]
                break
            conn.out.popleft()
        if conn.blocking and conn.backlog <= self.max_backlog // 2:
            self._set_blocking(conn, False)
        if not conn.out:
            self.epoll.modify(fd, self._mask(conn))

    def _mask(self, conn: Conn) -> int:
        return (0 if self.blocking else _IN) | (_OUT if conn.out else 0)

    def _set_blocking(self, conn: Conn, on: bool) -> None:
        """A consumer crossed the bound (on) or caught up (off): when the first starts or
        the last ends, every connection stops or starts being read."""
        conn.blocking = on
        was = self.blocking
        self.blocking += 1 if on else -1
        self.block_episodes += on
        if bool(was) != bool(self.blocking):
            for fd, other in self.conns.items():
                self.epoll.modify(fd, self._mask(other))

    def _close(self, fd: int, conn: Conn) -> None:
        if conn.blocking:
            self._set_blocking(conn, False)
        self.conns.pop(fd, None)
        self.epoll.unregister(fd)
        conn.sock.close()


def _listen(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m swapctl.bench.rawfwd")
    p.add_argument("--socket", required=True)
    p.add_argument("--max-backlog", type=int, default=DEFAULT_MAX_BACKLOG)
    p.add_argument("--on-slow-consumer", choices=POLICIES, default="drop-oldest")
    args = p.parse_args(argv)
    stdin_fd = sys.stdin.fileno()
    stop_fd = stdin_fd if stat.S_ISFIFO(os.fstat(stdin_fd).st_mode) else None
    fwd = RawForwarder(_listen(args.socket), args.max_backlog, args.on_slow_consumer)
    try:
        fwd.serve(stop_fd)
    except KeyboardInterrupt:
        pass
    finally:
        counters = {"reads": fwd.reads, "bytes_in": fwd.bytes_in, "shed_bytes": fwd.shed_bytes,
                    "block_episodes": fwd.block_episodes}
        print(json.dumps({"event": "rawfwd.stopped", **counters}), file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
