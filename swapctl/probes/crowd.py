"""A crowd of idle clients: N connections that read and discard what a relay sends.

How it works: `Crowd` runs `python -m swapctl.probes.crowd` in its own session (so
the crowd's reads do not compete with the caller's GIL) and talks to it in JSON lines.
The child connects N clients, says {"ready": N}, then serves one epoll set over every
connection and its stdin, at most `EVENTS_PER_WAIT` events per call: each line on
stdin is answered with the counts so far ({"disconnects", "connected",
"received_bytes"}); EOF on stdin is answered the same way, and the child exits. A
connection that ends (EOF or error) is one disconnect: with `reconnect` the client
comes back after that many seconds (as a dashboard would, retrying while the relay
refuses), without it the client is gone for good.
Used by `bench handoff` (N clients a swap must move) and `bench strategies` (N clients
that count every cut, an independent disconnect count).

Why the cap: N clients in one process are a bench's shortcut (real clients are N
processes). One epoll_wait that returns 5,000 ready sockets runs about 2 ms in the
kernel, and on a kernel without full preemption (PREEMPT_NONE, this machine's) nothing
else runs on that CPU meanwhile, not even a real-time relay woken inside the pause:
`perf sched timehist` showed the adopting relay waiting 1-2 ms for exactly that in
the slowest swaps at 5,000 clients. 64 events make each call a few tens of µs.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from swapctl.errors import SwapctlError
from swapctl.process import stop_group

READ_BUFFER = 1 << 18
EVENTS_PER_WAIT = 64  # one epoll_wait's events: bounds its time in the kernel (see above)


class Crowd:
    """The caller's side: start, ask for counts, finish, close."""

    def __init__(self, public: Path, clients: int, *, reconnect: float | None = None,
                 ready_timeout: float = 15.0) -> None:
        args = [sys.executable, "-P", "-m", "swapctl.probes.crowd", "--socket", str(public),
                "--clients", str(clients)]
        if reconnect is not None:
            args += ["--reconnect", str(reconnect)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        if "ready" not in self._line(ready_timeout):
            self.close()
            raise SwapctlError(f"crowd of {clients} clients did not connect to {public}: "
                               "is the relay accepting there? (its error is above)")

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        out: dict[str, Any] = json.loads(line) if line else {}
        return out

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """{"disconnects", "connected", "received_bytes"} so far."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return self._line(timeout)

    def finish(self, timeout: float = 10.0) -> dict[str, Any]:
        """The final counts; the crowd disconnects and exits."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        out = self._line(timeout)
        self.close()
        return out

    def close(self) -> None:
        stop_group(self.proc, 2.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m swapctl.probes.crowd")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--reconnect", type=float, default=None, metavar="SECONDS",
                        help="a client whose connection ends comes back after this long")
    args = parser.parse_args(argv)
    _Child(args.socket, args.clients, args.reconnect).run()


class _Child:
    def __init__(self, path: str, clients: int, reconnect: float | None) -> None:
        self.path, self.clients, self.reconnect = path, clients, reconnect
        self.epoll = select.epoll()
        self.socks: dict[int, socket.socket] = {}
        self.down: list[float] = []  # when each disconnected client tries again
        self.disconnects = self.received = self.connected = 0

    def _attach(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            if self.reconnect is None:
                raise
            return False
        sock.setblocking(False)
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.socks[sock.fileno()] = sock
        self.connected += 1
        return True

    def _say(self, **fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    def _counts(self) -> None:
        self._say(disconnects=self.disconnects, connected=self.connected,
                  received_bytes=self.received)

    def run(self) -> None:
        for _ in range(self.clients):
            if not self._attach():
                self.down.append(time.monotonic())
        commands = sys.stdin.fileno()
        self.epoll.register(commands, select.EPOLLIN)
        self._say(ready=self.connected)
        buf = bytearray(READ_BUFFER)
        timeout = -1.0 if self.reconnect is None else 0.05
        while True:
            for fd, _ in self.epoll.poll(timeout, EVENTS_PER_WAIT):
                if fd == commands:
                    line = sys.stdin.readline()
                    self._counts()
                    if not line:
                        return
                    continue
                conn = self.socks[fd]
                try:
                    n = conn.recv_into(buf)
                except BlockingIOError:
                    continue
                except OSError:
                    n = 0
                if n == 0:
                    self._lost(conn)
                self.received += n
            self._retry()

    def _lost(self, conn: socket.socket) -> None:
        self.disconnects += 1
        self.connected -= 1
        self.epoll.unregister(conn.fileno())
        del self.socks[conn.fileno()]
        conn.close()
        if self.reconnect is not None:
            self.down.append(time.monotonic() + self.reconnect)

    def _retry(self) -> None:
        if self.reconnect is None or not self.down:
            return
        now = time.monotonic()
        due = [t for t in self.down if t <= now]
        self.down = [t for t in self.down if t > now]
        self.down += [now + self.reconnect for _ in due if not self._attach()]


if __name__ == "__main__":
    main()
