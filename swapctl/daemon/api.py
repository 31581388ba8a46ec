"""The control API: JSON lines over swapctld's Unix socket.

A client sends one request line, `{"op": "status", ...}`, and reads answer lines until
one has `"type": "result"` or `"type": "error"`; `"type": "progress"` lines come
before it while a swap it waits for moves through its phases. An error carries a
`code` the CLI turns into its exit code (unknown_service, usage, busy, unhealthy,
internal). The socket is created owner-only (mode from swapctld.yaml, 0600) and every
connection's peer is checked with SO_PEERCRED: only the daemon's own uid (and root)
may speak; anyone else is answered with an error and disconnected.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from swapctl.errors import SwapctlError
from swapctl.handoff.controller import peer_credentials
from swapctl.unixsock import open_listener

Handler = Callable[[dict[str, Any]], Iterator[dict[str, Any]]]
MAX_REQUEST = 64 * 1024
READ_TIMEOUT = 10.0  # a client that connects and says nothing is let go


class ApiError(SwapctlError):
    """The daemon refused a request (its code says why)."""

    def __init__(self, message: str, code: str = "internal") -> None:
        super().__init__(message)
        self.code = code


class DaemonUnreachable(SwapctlError):
    """Nothing answers on the control socket."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, sock: socket.socket, handler: Handler) -> None:
        self.handler = handler
        super().__init__(str(sock.getsockname()), _Connection, bind_and_activate=False)
        self.socket.close()
        self.socket = sock


class _Connection(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(READ_TIMEOUT)
        _pid, uid, _gid = peer_credentials(sock)
        try:
            line = self.rfile.readline(MAX_REQUEST)  # first, even from a refused peer: its
        except TimeoutError:  # write must not meet a closed socket (EPIPE, not the answer)
            return
        sock.settimeout(None)
        if uid not in (os.getuid(), 0):
            self._send({"type": "error", "code": "permission",
                        "message": f"uid {uid} may not use swapctld's control socket (only "
                                   f"uid {os.getuid()}, the daemon's own, and root)"})
            return
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError("expected a JSON object with an op")
        except ValueError as exc:
            self._send({"type": "error", "code": "usage", "message": f"bad request: {exc}"})
            return
        try:
            for answer in self.server.handler(request):
                self._send(answer)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client went away (Ctrl-C on `swap`): the swap goes on

    def _send(self, answer: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(answer, default=str).encode() + b"\n")
        self.wfile.flush()


class ApiServer:
    def __init__(self, path: Path, handler: Handler, mode: int = 0o600) -> None:
        self.path = path
        old = os.umask(0o177)  # never world-connectable, not even for a moment
        try:
            sock = open_listener(path)
        finally:
            os.umask(old)
        sock.setblocking(True)
        os.chmod(path, mode)
        self.server = _Server(sock, handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="api",
                                       kwargs={"poll_interval": 0.2}, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():  # (shutdown() waits for serve_forever: only if started)
            self.server.shutdown()
        self.server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class ApiClient:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def stream(self, op: str, timeout: float | None = None,
               **args: Any) -> Iterator[dict[str, Any]]:
        """Send one request; yield every answer line up to and including the result.
        `timeout` bounds the wait for each line (None: the client's default)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise DaemonUnreachable(
                    f"swapctld does not answer on {self.path} ({exc.strerror}): start it "
                    "with `swapctl up` (or `systemctl start swapctld`)") from None
            except PermissionError:
                raise ApiError(f"no permission to connect to {self.path}: run as the user "
                               "swapctld runs as", "permission") from None
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            with sock.makefile("rb") as lines:
                for line in lines:
                    answer: dict[str, Any] = json.loads(line)
                    if answer.get("type") == "error":
                        raise ApiError(str(answer.get("message")), str(answer.get("code")))
                    yield answer
                    if answer.get("type") == "result":
                        return
            raise DaemonUnreachable(f"swapctld closed {self.path} before answering {op}")
        except TimeoutError:
            raise TimeoutError(f"swapctld did not answer {op} in time") from None
        finally:
            sock.close()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for answer in self.stream(op, **args):
            result = answer
        return result
