"""Child processes of a benchmark: each in its own session, none outliving the scope.

How it works: `ProcessScope` starts every child with `start_new_session=True` (its
own process group), stdin/stdout as pipes and stderr to a file in the run's private
directory. Leaving the scope, however it is left (return, error, Ctrl-C, or SIGTERM,
which the scope turns into an exception while it is open), sends SIGTERM to every
child's process group, waits a grace period, then SIGKILLs the group. Children talk
to the benchmark in JSON lines (`Child.read_event`); a child that fails or goes
quiet raises `ChildFailed` quoting the end of its stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from swapctl import unixsock
from swapctl.errors import SwapctlError
from swapctl.process import signal_group


class ChildFailed(SwapctlError):
    """A benchmark process failed, exited early or stopped answering."""


class Interrupted(SwapctlError):
    """The benchmark was told to stop (SIGTERM) and cleaned up its processes."""


def stopped_by(signal_name: str) -> str:
    """What a bench stopped by a signal says (exit 3)."""
    return f"stopped by {signal_name}; every benchmark process was terminated"


STOPPED_BY_SIGTERM = stopped_by("SIGTERM")


class _Terminated(BaseException):
    """SIGTERM, raised wherever the bench was. A BaseException: a swap treats a
    SwapctlError (or any Exception) as a failed swap and goes on to the next one, so
    anything less would be caught before it ended the run."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside, SIGTERM unwinds the bench (in the main thread): every `with`, `finally`
    and ExitStack on the way out stops the processes it started, and the caller gets
    `Interrupted`. SIGTERM's default action ends the bench at once and leaves its relays
    and clients running. A second SIGTERM during the unwinding is ignored. (`ProcessScope`
    has its own handler: it owns its children and holds the signal back while one
    starts; this is for benches whose processes belong to the swap engine's objects.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the unwinding finish
        raise _Terminated

    old = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except _Terminated:
        raise Interrupted(STOPPED_BY_SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, old)


class Child:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_event(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the child prints; raises ChildFailed on error, exit or silence."""
        if self.proc.stdout is None:
            raise ChildFailed(f"{self.name} was started without a stdout pipe")
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildFailed(f"{self.name} said nothing for {timeout:g} s{self.tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65_536)
                if not chunk:
                    code = self.proc.wait(5)
                    raise ChildFailed(f"{self.name} exited with code {code}{self.tail()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        event: dict[str, Any] = json.loads(line)
        if event.get("event") == "error":
            raise ChildFailed(f"{self.name} failed: {event.get('error')}{self.tail()}")
        return event

    def tail(self, limit: int = 1500) -> str:
        try:
            text = self.log.read_text(errors="replace")[-limit:].strip()
        except OSError:
            return ""
        return f"; its output ends with:\n{text}" if text else ""


class ProcessScope:
    def __init__(self, workdir: Path, grace: float = 3.0) -> None:
        self.workdir = workdir
        self.grace = grace
        self.children: list[Child] = []
        self._old_handler: Any = None
        self._starting = False  # a SIGTERM now would orphan the child being started
        self._terminated = False

    def __enter__(self) -> ProcessScope:
        if threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._terminated = True
        if not self._starting:
            self._interrupt()

    def _interrupt(self) -> None:
        raise Interrupted(STOPPED_BY_SIGTERM)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.close()
        finally:
            if self._old_handler is not None:
                signal.signal(signal.SIGTERM, self._old_handler)

    def start(self, name: str, args: list[str], *, talks: bool = True) -> Child:
        """Start `args` in a new session; stdout is a pipe to us if it `talks` (JSON
        lines), else it joins stderr in the child's log file. stdin is always a pipe:
        it closes when we exit, however we exit."""
        log = self.workdir / f"{len(self.children):02d}-{name}.log"
        self._starting = True
        try:
            with log.open("wb") as err:
                out = subprocess.PIPE if talks else err
                proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=out,
                                        stderr=err, start_new_session=True, bufsize=0)
            child = Child(name, proc, log)
            self.children.append(child)
        finally:
            self._starting = False
        if self._terminated:
            self._interrupt()
        return child

    def stop(self, child: Child) -> int:
        """SIGTERM the child's process group, then SIGKILL it after the grace period."""
        proc = child.proc
        if proc.poll() is None:  # not reaped yet, so its pid (= group id) is still ours
            signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
        code = proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        return code

    def close(self) -> None:
        for child in self.children:
            if child.proc.poll() is None:
                signal_group(child.pid, signal.SIGTERM)
        for child in reversed(self.children):
            self.stop(child)


def wait_connectable(path: Path, child: Child, timeout: float) -> None:
    """Wait until `path` accepts connections (a relay's only readiness signal)."""

    def alive() -> None:
        if child.proc.poll() is not None:
            raise ChildFailed(f"{child.name} exited with code {child.proc.returncode} before "
                              f"{path} accepted connections{child.tail()}")

    try:
        unixsock.wait_connectable(path, timeout, alive=alive)
    except OSError:
        raise ChildFailed(f"{child.name} did not accept connections on {path} within "
                          f"{timeout:g} s{child.tail()}") from None
