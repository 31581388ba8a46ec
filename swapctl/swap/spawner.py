"""Starting and stopping relay processes: the seam between the swap engine and the OS.

A release's command runs with its handoff settings in the environment
(SWAPCTL_HANDOFF control socket, SWAPCTL_TOKEN, SWAPCTL_SOCKET public path,
SWAPCTL_RELEASE name), so a relay needs no swapctl-specific arguments. Processes are
identified by (pid, start time) and stopped by process group: SIGTERM, wait, SIGKILL.
supervisord-backed spawning plugs in behind the same `Spawner` interface.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import psutil

from swapctl import process
from swapctl.errors import SwapctlError, UsageError
from swapctl.process import stop_group


@dataclass(frozen=True, slots=True)
class Release:
    name: str
    command: tuple[str, ...]
    handoff: bool = True  # speaks the handoff protocol
    env: tuple[tuple[str, str], ...] = ()  # extra environment (SWAPCTL_* are set by swapctl)
    compiled: str | None = None  # legacy: the socket path compiled into it (run isolated)

    @property
    def legacy(self) -> bool:
        return self.compiled is not None


class ProcessHandle(Protocol):
    pid: int
    started_s: float  # seconds since boot (process.started): with pid, its identity

    def alive(self) -> bool: ...
    def describe_exit(self) -> str: ...
    def stop(self, timeout: float = 5.0) -> int | None: ...
    def kill(self) -> None:
        """SIGKILL the relay (its process group) and return once it is gone: after this
        it reads nothing more from any socket."""
        ...


class Spawner(Protocol):
    def spawn(self, release: Release, token: str, control: Path, socket: Path) -> ProcessHandle:
        ...


class SpawnError(SwapctlError):
    """A release could not be started."""


class SubprocessHandle:
    def __init__(self, proc: subprocess.Popen[bytes], log: IO[bytes] | None,
                 log_path: Path | None = None) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._log = log
        self.log_path = log_path
        try:
            self.started_s = process.started(proc.pid)
        except psutil.NoSuchProcess:
            self.started_s = 0.0

    def alive(self) -> bool:
        """Still running, and still the process we started (pid + start time)."""
        return self.proc.poll() is None and process.is_same(self.pid, self.started_s)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def describe_exit(self) -> str:
        """Exit status and the end of the log, for an operator-facing error."""
        text = f"exit code {self.proc.poll()}"
        if self.log_path is not None and self.log_path.exists():
            tail = self.log_path.read_bytes()[-600:].decode(errors="replace").strip()
            text += f"; log {self.log_path}" + (f" ends with: {tail}" if tail else "")
        return text

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the process group, wait up to `timeout`, then SIGKILL the group."""
        code = stop_group(self.proc, timeout)
        self._close_log()
        return code

    def kill(self) -> None:
        stop_group(self.proc, 0)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class SubprocessSpawner:
    """Runs each release as a child process in its own session (process group)."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir
        self.handles: list[SubprocessHandle] = []

    def spawn(self, release: Release, token: str, control: Path, socket: Path) -> SubprocessHandle:
        env = dict(os.environ, **dict(release.env), SWAPCTL_HANDOFF=str(control),
                   SWAPCTL_TOKEN=token,
                   SWAPCTL_SOCKET=str(socket), SWAPCTL_RELEASE=release.name)
        log = log_path = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{token}.log"
            log = log_path.open("ab")
        try:
            proc = subprocess.Popen(list(release.command), env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True)
        except OSError as exc:
            if log is not None:
                log.close()
            raise UsageError(
                f"release {release.name}: cannot run {release.command[0]!r}: {exc}"
            ) from None
        handle = SubprocessHandle(proc, log, log_path)
        self.handles.append(handle)
        return handle

    def stop_all(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for handle in self.handles:
            handle.stop(max(0.1, deadline - time.monotonic()))
