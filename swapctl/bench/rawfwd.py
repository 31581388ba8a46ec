"""A raw byte forwarder: the floor a Python relay is compared with. Parses nothing.

`python -m swapctl.bench.rawfwd --socket PATH` serves one Unix stream socket with the
same shape as the reference relay, minus everything Protocol V2: one epoll loop,
64 KiB reads, each read broadcast as is to every connection *including the sender*
(echo), a write that would block queued with EPOLLOUT armed, and a consumer queue
over `--max-backlog` bytes shedding its oldest unsent reads (as the relay does, so
both do the same work). SIGTERM ends it; so does EOF on stdin when stdin is a pipe
(the benchmark that started it has gone away).
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
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT


@dataclass(slots=True, eq=False)
class Conn:
    sock: socket.socket
    out: deque[memoryview] = field(default_factory=deque)
    backlog: int = 0


class RawForwarder:
    def __init__(self, listener: socket.socket, max_backlog: int) -> None:
        self.listener = listener
        self.max_backlog = max_backlog
        self.epoll = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.reads = self.bytes_in = self.shed_bytes = 0
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
                    if mask & ~_OUT and fd in self.conns:
                        self._read(fd, conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            self.conns[sock.fileno()] = Conn(sock)
            self.epoll.register(sock.fileno(), _IN)

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
        for other_fd, other in list(self.conns.items()):
            self._deliver(other_fd, other, data)

    def _deliver(self, fd: int, conn: Conn, data: bytes) -> None:
        if conn.out:
            conn.out.append(memoryview(data))
            conn.backlog += len(data)
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
            self.epoll.modify(fd, _IN | _OUT)

    def _flush(self, fd: int, conn: Conn) -> None:
        while conn.out:
            try:
                sent = conn.sock.send(conn.out[0])
            except BlockingIOError:
                return
            except OSError:
                self._close(fd, conn)
                return
            conn.backlog -= sent
            if sent < len(conn.out[0]):
                conn.out[0] = conn.out[0][sent:]
                return
            conn.out.popleft()
        self.epoll.modify(fd, _IN)

    def _close(self, fd: int, conn: Conn) -> None:
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
    args = p.parse_args(argv)
    stdin_fd = sys.stdin.fileno()
    stop_fd = stdin_fd if stat.S_ISFIFO(os.fstat(stdin_fd).st_mode) else None
    fwd = RawForwarder(_listen(args.socket), args.max_backlog)
    try:
        fwd.serve(stop_fd)
    except KeyboardInterrupt:
        pass
    finally:
        counters = {"reads": fwd.reads, "bytes_in": fwd.bytes_in, "shed_bytes": fwd.shed_bytes}
        print(json.dumps({"event": "rawfwd.stopped", **counters}), file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
