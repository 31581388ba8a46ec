"""The control API: JSON lines over swapctld's Unix socket.

A client sends one request line, `{"op": "status", ...}`, and reads answer lines until
one has `"type": "result"` or `"type": "error"`; `"type": "progress"` lines come
before it while a swap it waits for moves through its phases. An error carries a
`code` the CLI turns into its exit code (usage, invalid, busy, too_late, refused,
too_large, timeout, unknown_service, unhealthy, permission, internal). The socket is
created owner-only (mode from swapctld.yaml, 0600) and every connection's peer is checked
with SO_PEERCRED: only the daemon's own uid (and root) may speak; anyone else is answered
with an error and disconnected.

How it works. One thread (`api`) owns the listening socket and every connection until
its request line is complete: a selector reads what each peer sends, never blocking, into
a buffer of at most `Limits.max_request` bytes, and lets go of a peer that has not ended
its line within `Limits.read_deadline` (answered `timeout`). An idle peer costs a buffer,
no thread. A complete line is decoded there (bad JSON, no object: `usage`), and only then
handed to a worker thread, at most `Limits.max_active` at once, which runs the daemon's
handler and writes its answers (each write bounded by `Limits.send_timeout`: a client
that stops reading is let go; a swap goes on). Past `max_pending` connections still
sending or `max_active` requests being answered, a new connection is answered `busy` and
closed. Every request gets one typed error line when it cannot be served; a bug in the
handler is logged with its traceback and answered `internal`. A peer that went away is
one debug line, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapctl.errors import SwapctlError
from swapctl.unixsock import open_listener, peer_credentials

log = logging.getLogger("swapctl.daemon.api")
Handler = Callable[[dict[str, Any]], Iterator[dict[str, Any]]]
GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Limits:
    max_request: int = 64 * 1024  # bytes of one request line
    read_deadline: float = 2.0  # seconds a peer has to send its whole line
    max_pending: int = 256  # connections still sending their line
    max_active: int = 64  # requests being answered (threads)
    send_timeout: float = 30.0  # seconds one answer line may wait for a reader


MAX_REQUEST = Limits().max_request


class ApiError(SwapctlError):
    """The daemon refused a request (its code says why; details: the rest of the line)."""

    def __init__(self, message: str, code: str = "internal",
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details or {}


class DaemonUnreachable(SwapctlError):
    """Nothing answers on the control socket."""


def error(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **details}


@dataclass(eq=False)
class _Peer:
    sock: socket.socket
    deadline: float
    buffer: bytearray = field(default_factory=bytearray)


class ApiServer:
    def __init__(self, path: Path, handler: Handler, mode: int = 0o600,
                 limits: Limits = Limits()) -> None:
        self.path = path
        self.handler = handler
        self.limits = limits
        old = os.umask(0o177)  # never world-connectable, not even for a moment
        try:
            self.listener = open_listener(path)
        finally:
            os.umask(old)
        self.listener.setblocking(False)
        os.chmod(path, mode)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.pending: dict[socket.socket, _Peer] = {}
        self.active = 0
        self._active_lock = threading.Lock()
        self._closing = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="api", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self.thread.is_alive():
            self.thread.join(5.0)
        for peer in list(self.pending.values()):
            self._drop(peer)
        self.selector.close()
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # ----- the loop: accept, read lines, hand them on ------------------------------------

    def _loop(self) -> None:
        while not self._closing.is_set():
            now = time.monotonic()
            soonest = min((p.deadline for p in self.pending.values()), default=now + 0.5)
            for key, _ in self.selector.select(max(0.0, min(soonest - now, 0.5))):
                if key.data is None:
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                else:
                    self._read(key.data)
            self._expire(time.monotonic())

    def _accept(self) -> None:
        for _ in range(64):  # a burst, then let the others run
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE: wait for descriptors to come back
                log.warning("api: accept failed: %s", exc.strerror)
                time.sleep(0.05)
                return
            sock.setblocking(False)
            if len(self.pending) >= self.limits.max_pending:
                self._refuse(sock, error("busy", "swapctld has "
                                         f"{len(self.pending)} connections waiting for their "
                                         "request: try again in a moment"))
                continue
            peer = _Peer(sock, time.monotonic() + self.limits.read_deadline)
            self.pending[sock] = peer
            self.selector.register(sock, selectors.EVENT_READ, peer)

    def _read(self, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("api: peer went away before its request (%s)", exc)
            self._drop(peer)
            return
        peer.buffer += data
        end = peer.buffer.find(b"\n")
        limit = self.limits.max_request
        if end > limit or (end < 0 and len(peer.buffer) > limit):
            self._unpend(peer)
            self._refuse(peer.sock, error("too_large", f"request longer than {limit} bytes: "
                                                       "swapctld's requests are one short line"))
        elif end >= 0 or not data:  # a line, or everything the peer will send (EOF)
            self._unpend(peer)
            self._dispatch(peer.sock, bytes(peer.buffer[:end] if end >= 0 else peer.buffer))

    def _expire(self, now: float) -> None:
        for peer in [p for p in self.pending.values() if p.deadline <= now]:
            self._unpend(peer)
            self._refuse(peer.sock, error(
                "timeout", f"no complete request line within {self.limits.read_deadline:g} s"))

    def _dispatch(self, sock: socket.socket, line: bytes) -> None:
        try:
            _pid, uid, _gid = peer_credentials(sock)
        except OSError as exc:
            log.debug("api: peer went away (%s)", exc)
            sock.close()
            return
        if uid not in (os.getuid(), 0):
            self._refuse(sock, error("permission", f"uid {uid} may not use swapctld's control "
                                     f"socket (only uid {os.getuid()}, the daemon's own, and "
                                     "root)"))
            return
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError("expected a JSON object with an op")
        except RecursionError:
            self._refuse(sock, error("usage", "bad request: nested too deeply"))
            return
        except ValueError as exc:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
            self._refuse(sock, error("usage", f"bad request: {str(exc)[:200]}"))
            return
        with self._active_lock:
            if self.active >= self.limits.max_active:
                busy = True
            else:
                busy, self.active = False, self.active + 1
        if busy:
            self._refuse(sock, error("busy", f"swapctld answers {self.limits.max_active} "
                                             "requests already: try again in a moment"))
            return
        threading.Thread(target=self._serve, args=(sock, request), daemon=True,
                         name=f"api-{request['op'][:20]}").start()

    def _unpend(self, peer: _Peer) -> None:
        self.pending.pop(peer.sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(peer.sock)

    def _drop(self, peer: _Peer) -> None:
        self._unpend(peer)
        peer.sock.close()

    @staticmethod
    def _refuse(sock: socket.socket, answer: dict[str, Any]) -> None:
        """Answer with one error line and hang up, without ever blocking the loop (the
        line fits in an empty socket buffer; a peer that is gone does not hear it)."""
        try:
            sock.send(json.dumps(answer).encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(BlockingIOError, InterruptedError):
                for _ in range(16):  # unread bytes would reset the peer before it reads
                    if not sock.recv(65536):
                        break
        except OSError as exc:
            log.debug("api: could not answer %s: %s", answer.get("code"), exc)
        finally:
            sock.close()

    # ----- a worker: one request, its answers ---------------------------------------------

    def _serve(self, sock: socket.socket, request: dict[str, Any]) -> None:
        sock.setblocking(True)
        sock.settimeout(self.limits.send_timeout)
        try:
            for answer in self.handler(request):
                sock.sendall(json.dumps(answer, default=str).encode() + b"\n")
                if answer.get("type") in ("result", "error"):
                    break
        except GONE as exc:  # the client went away (Ctrl-C on `swap`): the swap goes on
            log.debug("api: %s client went away: %s", request.get("op"), exc)
        except Exception as exc:  # a bug in the handler: say so to the client, log it once
            log.exception("api: %s failed", request.get("op"))
            with contextlib.suppress(OSError):
                sock.sendall(json.dumps(error("internal", f"swapctld failed on "
                                              f"{request.get('op')}: {exc}; see swapctld.log"))
                             .encode() + b"\n")
        finally:
            sock.close()
            with self._active_lock:
                self.active -= 1


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
            # refused before it read all of it (busy, too large): the answer is there to read
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            with sock.makefile("rb") as lines:
                for line in lines:
                    answer: dict[str, Any] = json.loads(line)
                    if answer.get("type") == "error":
                        details = {k: v for k, v in answer.items()
                                   if k not in ("type", "code", "message")}
                        raise ApiError(str(answer.get("message")), str(answer.get("code")),
                                       details)
                    yield answer
                    if answer.get("type") == "result":
                        return
            raise DaemonUnreachable(f"swapctld closed {self.path} before answering {op}")
        except ConnectionResetError:
            raise DaemonUnreachable(f"swapctld closed {self.path} before answering "
                                    f"{op}") from None
        except TimeoutError:
            raise TimeoutError(f"swapctld did not answer {op} in time") from None
        finally:
            sock.close()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for answer in self.stream(op, **args):
            result = answer
        return result
