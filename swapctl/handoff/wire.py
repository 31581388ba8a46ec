"""Handoff protocol framing: one message = 16-byte header + JSON + binary blob (+ fds).

Header (little-endian `<4sIIHH`): magic b"SWH1", json_len, blob_len, nfds, flags (0).
The JSON is a UTF-8 object with a "type" key; the blob carries raw bytes that the JSON
refers to by [offset, length]; up to 253 file descriptors ride with the message as
SCM_RIGHTS ancillary data on the sendmsg that carries the header. The receiver reads
the header with recvmsg (that read collects the fds), then exactly json_len + blob_len
bytes. See docs/handoff-protocol.md.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import struct
import time
from typing import Any

from swapctl.handoff.messages import MAX_FDS, ChannelClosed, Envelope, HandoffError

MAGIC = b"SWH1"
HEADER = struct.Struct("<4sIIHH")
MAX_JSON = 16 * 1024 * 1024
MAX_BLOB = 512 * 1024 * 1024


class Channel:
    """A blocking, framed handoff channel over a connected Unix stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(True)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, msg: dict[str, Any], blob: bytes = b"", fds: list[int] | None = None) -> None:
        fds = fds or []
        if len(fds) > MAX_FDS:
            raise HandoffError(f"{len(fds)} fds in one message; the limit is {MAX_FDS}")
        body = json.dumps(msg, separators=(",", ":")).encode()
        head = HEADER.pack(MAGIC, len(body), len(blob), len(fds), 0)
        data = head + body + blob
        try:
            if fds:
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                sent = self.sock.sendmsg([data], ancillary)
            else:
                sent = self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(memoryview(data)[sent:])
        except OSError as exc:
            raise ChannelClosed(f"cannot send {msg.get('type')}: {exc}") from None

    def recv(self, timeout: float | None = None) -> Envelope:
        """Read one whole message; raises ChannelClosed on EOF, TimeoutError on timeout."""
        self.sock.settimeout(timeout)
        try:
            head, fds = self._recv_head()
            magic, json_len, blob_len, nfds, _ = HEADER.unpack(head)
            if magic != MAGIC or json_len > MAX_JSON or blob_len > MAX_BLOB:
                _close_all(fds)
                raise HandoffError(f"bad handoff header {head.hex()}: not protocol v1 framing")
            if len(fds) != nfds:
                _close_all(fds)
                raise HandoffError(f"header announced {nfds} fds, {len(fds)} arrived")
            deadline = None if timeout is None else time.monotonic() + max(timeout, 1.0)
            body = self._recv_exact(json_len + blob_len, deadline)
        finally:
            self.sock.settimeout(None)
        msg = json.loads(body[:json_len])
        if not isinstance(msg, dict) or "type" not in msg:
            _close_all(fds)
            raise HandoffError(f"handoff message without a type: {body[:80]!r}")
        return Envelope(msg, body[json_len:], fds)

    def _recv_head(self) -> tuple[bytes, list[int]]:
        fds = array.array("i")
        space = socket.CMSG_SPACE(MAX_FDS * fds.itemsize)
        data, ancdata, flags, _ = self.sock.recvmsg(HEADER.size, space, socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % fds.itemsize
                fds.frombytes(payload[:usable])
        if flags & socket.MSG_CTRUNC:
            _close_all(list(fds))
            raise HandoffError("file descriptors were truncated in transit (MSG_CTRUNC)")
        if not data:
            raise ChannelClosed("control channel closed by peer")
        if len(data) < HEADER.size:
            data += self._recv_exact(HEADER.size - len(data), None)
        return data, list(fds)

    def _recv_exact(self, n: int, deadline: float | None) -> bytes:
        parts: list[bytes] = []
        while n:
            if deadline is not None:
                self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                raise ChannelClosed("control channel closed mid-message")
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)


def close_fds(env: Envelope) -> None:
    """Close the fds an envelope brought (when refusing or discarding it)."""
    _close_all(env.fds)
    env.fds = []


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
