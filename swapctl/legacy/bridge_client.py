"""The bridge client: one process connected to two relays, forwarding frames both ways.

How it works: the bridge connects to relay A and relay B as an ordinary client (no
handshake exists). Each side's byte stream goes through a `Framer`; every run of whole
frames read from one side is passed through that side's `EchoFilter` (what the bridge
itself wrote there comes back as echo and is dropped) and the rest is queued, byte for
byte, for the other side. Garbage and partial frames are never forwarded (counted as
skipped). Sockets are non-blocking; each side has a bounded output buffer, written as
far as the kernel takes it at once and then on EPOLLOUT. When the buffer towards a
side is over `max_buffer`, the bridge stops reading the other side (backpressure:
the source relay's own backlog bound then decides, and counts, what it sheds).

Ordering across the bridge: frames from one side reach the other in the order that
side's relay delivered them, so each publisher's order holds end to end (a relay keeps
each sender's order). There is no global order between the two relays: a consumer on
B sees A's publishers' frames interleaved with B's own publishers' frames by arrival
time, not in the order a consumer on A sees them. See bridge_echo for identical frames.

`python -m swapctl.legacy.bridge_client --a PATH --b PATH` runs it as a process; it
prints one JSON line when both sides are connected, then answers `stats`, `drain` and
`stop` lines on stdin with one JSON line each (`BridgeProcess` is the handle). EOF on
stdin means the parent is gone: stop at once. Exit codes: 0 stopped when asked;
3 a relay could not be reached or closed the bridge's connection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swapctl import unixsock
from swapctl.errors import SwapctlError
from swapctl.legacy.bridge_echo import EchoFilter, frame_ends
from swapctl.process import stop_group
from swapctl.protocol import Framer, Frames, Skipped

READ_SIZE = 1 << 20
READS_PER_WAKE = 4
EXIT_RELAY = 3


class BridgeError(SwapctlError):
    """The bridge could not reach a relay, lost a side, or stopped answering."""


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    a: Path
    b: Path
    names: tuple[str, str] = ("old", "new")
    echo_a: bool = True  # relay A echoes a sender's frames back (every real one does but
    echo_b: bool = True  # the intermediate signal relay and the sinks)
    max_buffer: int = 32 << 20  # bytes queued towards one side before reading pauses
    echo_grace: float = 0.5  # seconds before a missing echo is looked for deeper
    echo_timeout: float = 5.0  # seconds before an echo that never came is given up
    connect_timeout: float = 5.0


@dataclass(slots=True)
class SideCounts:
    frames_in: int = 0  # frames read from this relay (echo included)
    bytes_in: int = 0
    forwarded_frames: int = 0  # frames read here and queued for the other side
    forwarded_bytes: int = 0
    written_bytes: int = 0  # bytes written into this relay
    skipped_bytes: int = 0  # garbage or cut frames read here, never forwarded
    paused: int = 0  # times reading this side paused because the other side was full


@dataclass(slots=True)
class Side:
    name: str
    path: Path
    sock: socket.socket
    echo: EchoFilter
    framer: Framer = field(default_factory=Framer)
    out: bytearray = field(default_factory=bytearray)
    counts: SideCounts = field(default_factory=SideCounts)
    reading: bool = True
    writing: bool = False

    def stats(self) -> dict[str, Any]:
        return {**asdict(self.counts), "echo_dropped_frames": self.echo.counts.frames,
                "echo_dropped_bytes": self.echo.counts.bytes,
                "echo_missing_frames": self.echo.counts.missing,
                "echo_resyncs": self.echo.counts.resyncs,
                "echo_pending_bytes": self.echo.pending, "queued_bytes": len(self.out)}


def connect(path: Path, timeout: float) -> socket.socket:
    """A non-blocking connection to `path`, retried until `timeout` (unixsock's wait)."""
    try:
        sock = unixsock.connect(path, timeout)
    except OSError as exc:
        raise BridgeError(f"bridge cannot connect to {path}: {exc}") from None
    sock.setblocking(False)
    return sock


class Bridge:
    """The forwarding loop; `step()` is one wake-up, for embedding or the process main."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.sel = selectors.DefaultSelector()
        self.sides: tuple[Side, Side] = (
            self._side(config.names[0], config.a, config.echo_a),
            self._side(config.names[1], config.b, config.echo_b),
        )
        self.buf = bytearray(READ_SIZE)
        self.view = memoryview(self.buf)
        self.closed: str = ""  # why a side is gone
        self.started = time.monotonic()

    def _side(self, name: str, path: Path, echo: bool) -> Side:
        cfg = self.config
        sock = connect(path, cfg.connect_timeout)
        side = Side(name, path, sock, EchoFilter(echo=echo, grace=cfg.echo_grace,
                                                 timeout=cfg.echo_timeout))
        self.sel.register(sock, selectors.EVENT_READ, side)
        return side

    def other(self, side: Side) -> Side:
        return self.sides[1] if side is self.sides[0] else self.sides[0]

    def step(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            if key.data is not None:
                self.handle(key.data, mask)
        self.expire()

    def handle(self, side: Side, mask: int) -> None:
        """One side is writable and/or readable."""
        if mask & selectors.EVENT_WRITE:
            self._flush(side)
        if mask & selectors.EVENT_READ and side.reading and not self.closed:
            self._read(side)

    def expire(self) -> None:
        now = time.monotonic()
        for side in self.sides:
            side.echo.expire(now)

    def _read(self, side: Side) -> None:
        dst = self.other(side)
        for _ in range(READS_PER_WAKE):
            try:
                n = side.sock.recv_into(self.buf)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(side, f"read failed: {exc}")
                return
            if n == 0:
                self._lost(side, "the relay closed the connection")
                return
            self._ingest(side, dst, bytes(self.view[:n]))
            if len(dst.out) > self.config.max_buffer:
                self._pause(side)
                return

    def _ingest(self, side: Side, dst: Side, data: bytes) -> None:
        c = side.counts
        c.bytes_in += len(data)
        now = time.monotonic()
        for event in side.framer.feed(data):
            if isinstance(event, Frames):
                c.frames_in += event.count
                fwd = side.echo.filter(event.data, event.count, now)
                if fwd:
                    c.forwarded_frames += (event.count if fwd is event.data
                                           else _count(fwd))
                    c.forwarded_bytes += len(fwd)
                    self._queue(dst, fwd, now)
            elif isinstance(event, Skipped):
                c.skipped_bytes += event.length
            else:
                c.skipped_bytes += len(event.data)

    def _queue(self, dst: Side, data: bytes, now: float) -> None:
        dst.echo.wrote(data, now)
        if dst.out:
            dst.out += data
            return
        try:
            n = dst.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._lost(dst, f"write failed: {exc}")
            return
        dst.counts.written_bytes += n
        if n < len(data):
            dst.out += memoryview(data)[n:]
            self._want_write(dst, True)

    def _flush(self, side: Side) -> None:
        while side.out:
            try:
                n = side.sock.send(side.out)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(side, f"write failed: {exc}")
                return
            side.counts.written_bytes += n
            del side.out[:n]
        self._want_write(side, False)
        src = self.other(side)
        if not src.reading:
            src.reading = True
            self._update(src)

    def _pause(self, side: Side) -> None:
        side.reading = False
        side.counts.paused += 1
        self._update(side)

    def _want_write(self, side: Side, on: bool) -> None:
        if side.writing != on:
            side.writing = on
            self._update(side)

    def _update(self, side: Side) -> None:
        mask = (selectors.EVENT_READ if side.reading else 0) | (
            selectors.EVENT_WRITE if side.writing else 0)
        if mask and self._registered(side):
            self.sel.modify(side.sock, mask, side)
        elif mask:
            self.sel.register(side.sock, mask, side)
        elif self._registered(side):
            self.sel.unregister(side.sock)

    def _registered(self, side: Side) -> bool:
        try:
            self.sel.get_key(side.sock)
        except KeyError:
            return False
        return True

    def _lost(self, side: Side, reason: str) -> None:
        self.closed = self.closed or f"{side.name} relay ({side.path}): {reason}"

    @property
    def idle(self) -> bool:
        """Nothing queued and every frame written has come back as echo."""
        return all(not s.out and s.echo.pending == 0 for s in self.sides)

    def drain(self, timeout: float) -> bool:
        """Run until idle (everything written has passed through its relay) or timeout."""
        deadline = time.monotonic() + timeout
        while not self.closed and not self.idle and time.monotonic() < deadline:
            self.step(0.01)
        return self.idle

    def stats(self) -> dict[str, Any]:
        a, b = self.sides
        return {"uptime_s": round(time.monotonic() - self.started, 3),
                "closed": self.closed, "idle": self.idle,
                a.name: a.stats(), b.name: b.stats()}

    def close(self) -> None:
        for side in self.sides:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(side.sock)
            side.sock.close()
        self.sel.close()


def _count(run: bytes) -> int:
    return len(frame_ends(run))


# ----- the process --------------------------------------------------------------------

def serve(config: BridgeConfig, commands: Any = sys.stdin, out: Any = sys.stdout) -> int:
    try:
        bridge = Bridge(config)
    except BridgeError as exc:
        print(json.dumps({"ready": False, "error": str(exc)}), file=out, flush=True)
        return EXIT_RELAY
    fd = commands.fileno()
    bridge.sel.register(fd, selectors.EVENT_READ, None)
    os.set_blocking(fd, False)
    print(json.dumps({"ready": True, "pid": os.getpid()}), file=out, flush=True)
    pending = b""
    try:
        while not bridge.closed:
            for key, mask in bridge.sel.select(1.0):
                if key.data is not None:
                    bridge.handle(key.data, mask)
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    return 0  # the parent is gone
                pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if _command(bridge, line.decode().strip(), out):
                    return 0
            bridge.expire()
        print(json.dumps({"event": "lost", **bridge.stats()}), file=out, flush=True)
        return EXIT_RELAY
    finally:
        bridge.close()


def _command(bridge: Bridge, line: str, out: Any) -> bool:
    if line == "stats":
        print(json.dumps(bridge.stats()), file=out, flush=True)
        return False
    verb, _, arg = line.partition(" ")
    if verb in ("drain", "stop"):
        idle = bridge.drain(float(arg) if arg else 5.0)
        print(json.dumps({**bridge.stats(), "drained": idle}), file=out, flush=True)
        return verb == "stop"
    print(json.dumps({"error": f"unknown command {line!r}"}), file=out, flush=True)
    return False


class BridgeProcess:
    """Handle on a bridge process (its own process group)."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.final: dict[str, Any] | None = None

    def start(self, timeout: float = 15.0) -> int:
        cfg = self.config
        args = [sys.executable, "-P", "-m", "swapctl.legacy.bridge_client", "--a", str(cfg.a),
                "--b", str(cfg.b), "--names", ",".join(cfg.names),
                "--max-buffer", str(cfg.max_buffer), "--echo-grace", str(cfg.echo_grace),
                "--echo-timeout", str(cfg.echo_timeout),
                "--connect-timeout", str(cfg.connect_timeout)]
        args += [] if cfg.echo_a else ["--no-echo-a"]
        args += [] if cfg.echo_b else ["--no-echo-b"]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        hello = self._read(timeout)
        if not hello.get("ready"):
            self.close()
            raise BridgeError(f"bridge did not start: {hello.get('error', hello)}")
        return int(hello["pid"])

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise BridgeError(f"bridge did not answer within {timeout} s "
                              f"(exit code {self.proc.poll()})")
        data: dict[str, Any] = json.loads(line)
        if data.get("event") == "lost":
            raise BridgeError(f"bridge lost a relay: {data.get('closed')}")
        return data

    def _ask(self, command: str, timeout: float) -> dict[str, Any]:
        if self.proc is None or self.proc.stdin is None:
            raise BridgeError("bridge not running")
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise BridgeError(f"bridge exited (code {self.proc.poll()})") from None
        return self._read(timeout)

    def stats(self) -> dict[str, Any]:
        return self._ask("stats", 5.0)

    def drain(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait until everything the bridge holds has passed through both relays."""
        return self._ask(f"drain {timeout}", timeout + 5.0)

    def stop(self, timeout: float = 5.0) -> dict[str, Any]:
        """Drain (bounded), then exit; returns the final counters."""
        if self.final is None:
            try:
                self.final = self._ask(f"stop {timeout}", timeout + 5.0)
            finally:
                self.close()
        return self.final

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, 2.0)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.proc = None


_DEFAULTS = BridgeConfig(Path("a"), Path("b"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swapctl.legacy.bridge_client")
    parser.add_argument("--a", required=True, type=Path)
    parser.add_argument("--b", required=True, type=Path)
    parser.add_argument("--names", default="old,new")
    parser.add_argument("--no-echo-a", action="store_true")
    parser.add_argument("--no-echo-b", action="store_true")
    parser.add_argument("--max-buffer", type=int, default=_DEFAULTS.max_buffer)
    parser.add_argument("--echo-grace", type=float, default=_DEFAULTS.echo_grace)
    parser.add_argument("--echo-timeout", type=float, default=_DEFAULTS.echo_timeout)
    parser.add_argument("--connect-timeout", type=float, default=_DEFAULTS.connect_timeout)
    args = parser.parse_args(argv)
    first, _, second = args.names.partition(",")
    config = BridgeConfig(args.a, args.b, (first, second or "b"), not args.no_echo_a,
                          not args.no_echo_b, args.max_buffer, args.echo_grace,
                          args.echo_timeout, args.connect_timeout)
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
