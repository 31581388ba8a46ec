"""The orchestrator's side of a conformance case: a control socket, the public listener
(created once, as swapctl does), relay processes started from the command under test
with the handoff environment, and plain blocking clients.

Every case gets a fresh rig in its own temporary directory; closing the rig stops every
relay it started by process group and removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from swapctl.errors import SwapctlError, UsageError
from swapctl.handoff.controller import ControlServer, RelayLink
from swapctl.handoff.manifest import Transfer
from swapctl.process import stop_group
from swapctl.protocol import Framer, Frames, Rejected, Skipped, encode_message
from swapctl.protocol.tlv import Trade, encode_tlv
from swapctl.unixsock import open_listener

CONNECT_DEADLINE = 10.0  # the protocol's: a relay connects and says ready within 10 s


class CaseFailed(SwapctlError):
    """The relay under test broke the protocol or the frame semantics."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise CaseFailed(what)


def message(n: int, domain: int = 1, size: int = 0) -> bytes:
    """A Protocol V2 Trade message numbered `n` (plus `size` bytes of vendor TLVs)."""
    payload = Trade(n, n * 100, 1, 0, 1, 1).to_tlv().encode()
    while size > 0:
        chunk = min(size, 65_000)
        payload += encode_tlv(200, bytes(chunk), extended=True)
        size -= chunk
    return encode_message(domain, 2, payload, sequence=n, checksum=True)


class Peer:
    """A plain client of the relay: sends bytes, reads bytes with deadlines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = bytearray()
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _pump(self, deadline: float) -> bool:
        if self.eof:
            return False
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = self.sock.recv(1 << 20)
        except (TimeoutError, BlockingIOError):
            return False
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.raw += data
        return True

    def read(self, count: int, timeout: float = 5.0) -> bytes:
        """Wait until `count` bytes in total have arrived (or the deadline); all of them."""
        deadline = time.monotonic() + timeout
        while len(self.raw) < count and time.monotonic() < deadline and not self.eof:
            self._pump(deadline)
        return bytes(self.raw)

    def expect(self, data: bytes, what: str, timeout: float = 5.0) -> None:
        """The bytes received so far must become exactly `data` (checked byte for byte)."""
        got = self.read(len(data), timeout)
        if got != data:
            frames = _frame_count(got)
            raise CaseFailed(f"{what}: expected {len(data)} bytes ({_frame_count(data)} frames), "
                             f"got {len(got)} bytes ({frames} whole frames)"
                             + (", then the relay closed the connection" if self.eof else ""))

    def quiet(self, seconds: float = 0.3) -> bool:
        """True if nothing arrives within `seconds`."""
        before = len(self.raw)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(deadline)
        return len(self.raw) == before

    def close(self) -> None:
        self.sock.close()


def whole_frames(data: bytes) -> tuple[int, int, int]:
    """(frames, CRC errors, garbage bytes) by the protocol's framer, checksums on; a
    partial frame at the very end is only where the stream stopped, not an error."""
    frames = crc = garbage = 0
    for ev in Framer(verify_checksum=True).feed(data):
        if isinstance(ev, Frames):
            frames += ev.count
        elif isinstance(ev, Rejected):
            crc += 1
        elif isinstance(ev, Skipped):
            garbage += ev.length
    return frames, crc, garbage


def _frame_count(data: bytes) -> int:
    return sum(ev.count for ev in Framer().feed(data) if isinstance(ev, Frames))


class Relay:
    """One relay process started from the command under test, and its control link."""

    def __init__(self, proc: subprocess.Popen[bytes], link: RelayLink, log: Path) -> None:
        self.proc = proc
        self.link = link
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_bytes()[-400:].decode(errors="replace").strip()
        return ""


class Rig:
    def __init__(self, command: tuple[str, ...], domain_byte: int = 1) -> None:
        self.command = command
        self.domain = domain_byte
        self.root = Path(tempfile.mkdtemp(prefix="swc-"))
        self.public = self.root / "r.sock"
        self.control = ControlServer(self.root / "ctl.sock")
        self.listener = open_listener(self.public)
        self.relays: list[Relay] = []
        self.peers: list[Peer] = []
        self._logs: list[IO[bytes]] = []

    def spawn(self, token: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, SWAPCTL_HANDOFF=str(self.control.path), SWAPCTL_TOKEN=token,
                   SWAPCTL_SOCKET=str(self.public), SWAPCTL_RELEASE=f"conformance-{token}")
        log = (self.root / f"{token}.log").open("ab")
        self._logs.append(log)
        try:
            return subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, start_new_session=True)
        except OSError as exc:
            raise UsageError(f"--relay: cannot run {self.command[0]!r}: {exc}") from None

    def start(self, token: str = "a") -> Relay:
        """Start a relay and accept its HELLO (the relay is in standby, not yet ready)."""
        proc = self.spawn(token)
        try:
            link = self.control.accept(token, CONNECT_DEADLINE, pid=proc.pid)
        except (SwapctlError, TimeoutError) as exc:
            stop_group(proc, 1.0)
            tail = (self.root / f"{token}.log").read_bytes()[-400:].decode(errors="replace")
            raise CaseFailed(f"relay {token} did not connect and say HELLO: {exc}"
                             + (f"; its output ends with: {tail.strip()}" if tail.strip() else "")
                             ) from None
        relay = Relay(proc, link, self.root / f"{token}.log")
        self.relays.append(relay)
        return relay

    def ready(self, token: str = "a") -> Relay:
        relay = self.start(token)
        try:
            relay.link.wait_ready(CONNECT_DEADLINE)
        except (SwapctlError, TimeoutError) as exc:
            raise CaseFailed(f"relay {token} did not say READY within "
                             f"{CONNECT_DEADLINE:.0f} s: {exc}") from None
        return relay

    def active(self, token: str = "a") -> Relay:
        """A relay serving the public socket (adopted the listener, resumed)."""
        relay = self.ready(token)
        relay.link.adopt(Transfer(self.listener.fileno(), []), 2.0)
        relay.link.resume(2.0)
        return relay

    def peer(self) -> Peer:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        sock.connect(str(self.public))
        peer = Peer(sock)
        self.peers.append(peer)
        return peer

    def wait_connections(self, relay: Relay, count: int, timeout: float = 10.0) -> None:
        """Wait until the relay reports `count` open connections (accepts are async)."""
        deadline = time.monotonic() + timeout
        while True:
            have = int(relay.link.stats(2.0).get("connections_open", -1))
            if have == count:
                return
            if time.monotonic() > deadline:
                raise CaseFailed(f"relay reports {have} open connections, expected {count}")
            time.sleep(0.01)

    def msg(self, n: int, size: int = 0) -> bytes:
        return message(n, self.domain, size)

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        for relay in self.relays:
            relay.link.close()
            if relay.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(relay.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for relay in self.relays:
            stop_group(relay.proc, max(0.01, deadline - time.monotonic()))
        for log in self._logs:
            log.close()
        self.control.close()
        self.listener.close()
        shutil.rmtree(self.root, ignore_errors=True)
