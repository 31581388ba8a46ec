"""`SupervisorSpawner`: the swap engine's `Spawner`, with supervisord owning the relays.

spawn(release): pick the service's free slot (blue or green: the one supervisord does
not report running), write its slot file (argv + SWAPCTL_HANDOFF/TOKEN/SOCKET/RELEASE),
and `startProcess(slot, wait=False)` and `getProcessInfo(slot)` in one round trip. The
launcher execs the release, so the pid supervisord reports is the relay's; the handle
is that pid plus its create time, exactly as `SubprocessSpawner`'s handles are.

stop() asks supervisord (`stopProcess`, SIGTERM to the group, SIGKILL after
`stopwaitsecs`) and bounds the wait itself. It never stops a process that has not
exec'd yet: supervisord's forked child keeps supervisord's Python signal handlers
until its execve, so a SIGTERM in those first milliseconds is swallowed and the stop
is lost. If supervisord cannot be reached, the handle signals its own process group,
identified by pid + create time, as the subprocess spawner does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from swapctl import isolation
from swapctl.errors import UsageError
from swapctl.supervise import slotfile
from swapctl.supervise.client import ProcessInfo, SupervisorClient, SupervisorError
from swapctl.supervise.layout import SLOTS, Layout, program_name
from swapctl.swap.spawner import Release, SpawnError

POLL = 0.005
EXEC_WAIT = 1.0      # longest wait for a fresh child to exec before stopping it anyway
STOP_GRACE = 0.01    # and at least this long after the start
TAIL = 600


@dataclass(slots=True)
class _Context:
    client: SupervisorClient
    layout: Layout
    supervisord_cmdline: list[str] = field(default_factory=list)


class SupervisorHandle:
    def __init__(self, ctx: _Context, program: str, release: str, pid: int,
                 log_offset: int) -> None:
        self._ctx = ctx
        self.program = program
        self.release = release
        self.pid = pid
        self.started = time.monotonic()
        self.log_offset = log_offset
        self.log_path = ctx.layout.program_log(program)
        self.exitstatus: int | None = None
        try:
            self.create_time = psutil.Process(pid).create_time() if pid else 0.0
        except psutil.NoSuchProcess:
            self.create_time = 0.0

    def alive(self) -> bool:
        """Still running, and still the process we started (pid + create time)."""
        if not self.pid:
            return False
        try:
            proc = psutil.Process(self.pid)
            return (proc.create_time() == self.create_time
                    and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def _info(self) -> ProcessInfo:
        return self._ctx.client.info(self.program)

    def _ours(self, info: ProcessInfo) -> bool:
        return bool(self.pid) and info.pid == self.pid

    def _wait_gone(self, deadline: float) -> ProcessInfo | None:
        """supervisord's info once it no longer runs our pid (reaped), or None at deadline."""
        while True:
            info = self._info()
            if not self._ours(info):
                if self.exitstatus is None and info.pid == 0:
                    self.exitstatus = info.exitstatus
                return info
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL)

    def _wait_execed(self, deadline: float) -> None:
        """Until the child runs the launcher (or the relay), not supervisord's fork."""
        while time.monotonic() < deadline:
            try:
                execed = psutil.Process(self.pid).cmdline() != self._ctx.supervisord_cmdline
            except psutil.Error:
                return
            if execed and time.monotonic() - self.started >= STOP_GRACE:
                return
            time.sleep(POLL)

    def stop(self, timeout: float = 5.0) -> int | None:
        """stopProcess, wait up to `timeout` for supervisord to reap it, then SIGKILL."""
        deadline = time.monotonic() + timeout
        try:
            info = self._info()
            if self._ours(info):
                self._wait_execed(min(deadline, time.monotonic() + EXEC_WAIT))
                try:
                    self._ctx.client.stop(self.program)
                except SupervisorError as exc:
                    if exc.fault != "NOT_RUNNING":  # exited, or already stopping
                        raise
            if self._wait_gone(deadline) is None:  # (also records the exit status)
                self.kill()
        except SupervisorError:
            self._stop_by_signal(deadline)
        self._kill_leftovers()
        return self.exitstatus

    def _stop_by_signal(self, deadline: float) -> None:
        """supervisord is unreachable: SIGTERM our group, wait, SIGKILL (like the fake)."""
        self._signal_group(signal.SIGTERM)
        while self.alive() and time.monotonic() < deadline:
            time.sleep(POLL)
        self._signal_group(signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the relay's process group; wait until supervisord has reaped it."""
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(SupervisorError):
            self._wait_gone(time.monotonic() + 5.0)

    def _kill_leftovers(self) -> None:
        """SIGKILL anything the relay left in its process group (as the fake does)."""
        if not self.pid:
            return
        try:
            if psutil.Process(self.pid).create_time() != self.create_time:
                return  # the pid is someone else's now
        except psutil.NoSuchProcess:
            pass  # the leader is gone; members of its group may not be
        except psutil.Error:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        # supervisord makes each child the leader of its own process group (setpgrp)
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def describe_exit(self) -> str:
        """How it ended (supervisord's state and log line) and the end of this run's log."""
        try:
            info = self._wait_gone(time.monotonic() + 1.0)
            if info is None:
                text = f"supervisord program {self.program} still runs it as pid {self.pid}"
            else:
                text = f"supervisord program {self.program}: {self._how_it_ended(info)}"
        except SupervisorError as exc:
            text = f"supervisord program {self.program}: unknown ({exc})"
        tail = self._log_tail()
        text += f"; log {self.log_path}" + (f" ends with: {tail}" if tail else " is empty")
        return text

    def _how_it_ended(self, info: ProcessInfo) -> str:
        if info.pid not in (0, self.pid):
            return f"pid {self.pid} ended; the slot now runs pid {info.pid}"
        # supervisord's own log says "exited: NAME (terminated by SIGKILL; not expected)"
        pattern = re.compile(rf"(exited|stopped): {re.escape(self.program)} \(([^)]*)\)")
        matches = pattern.findall(self._ctx.client.main_log(4000))
        if matches:
            return f"{info.state} ({matches[-1][1]})"
        if info.spawnerr:
            return f"{info.state}: {info.spawnerr}"
        return f"{info.state} (exit status {info.exitstatus})"

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                start = self.log_offset if self.log_offset <= size else 0  # rotated
                log.seek(max(start, size - TAIL))
                return log.read().decode(errors="replace").strip()
        except OSError:
            return ""


def _dead(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class SupervisorSpawner:
    """Starts a service's releases in its blue and green supervisord programs."""

    def __init__(self, client: SupervisorClient, layout: Layout, service: str,
                 cwd: Path | None = None) -> None:
        if service not in layout.services:
            raise UsageError(f"service {service!r} has no supervisord programs: the layout "
                             f"declares {', '.join(layout.services)}")
        self.service = service
        self.cwd = cwd  # None: supervisord's directory (the state dir)
        self.programs = [program_name(service, slot) for slot in SLOTS]
        self._ctx = _Context(client, layout)
        self.handles: list[SupervisorHandle] = []

    def spawn(self, release: Release, token: str, control: Path,
              socket: Path) -> SupervisorHandle:
        ctx = self._ctx
        if not ctx.supervisord_cmdline:
            ctx.supervisord_cmdline = psutil.Process(ctx.client.pid()).cmdline()
        if shutil.which(release.command[0]) is None:
            raise UsageError(f"release {release.name}: cannot run {release.command[0]!r}: "
                             "not found or not executable")
        program = self.free_slot()
        argv = release.command
        if release.compiled is not None:  # legacy: its compiled-in directory is the slot's own
            private = self.private_dir(program, token)
            private.mkdir(mode=0o700, parents=True, exist_ok=True)
            argv = tuple(isolation.command(
                release.command, [isolation.Bind(private, Path(release.compiled).parent)]))
        env = {**dict(release.env), "SWAPCTL_HANDOFF": str(control), "SWAPCTL_TOKEN": token,
               "SWAPCTL_SOCKET": str(socket), "SWAPCTL_RELEASE": release.name}
        spec = slotfile.SlotSpec(release.name, argv, env,
                                 str(self.cwd) if self.cwd else None)
        slotfile.write(ctx.layout.slot_dir(program), spec)
        log = ctx.layout.program_log(program)
        offset = log.stat().st_size if log.exists() else 0
        started, info = ctx.client.multicall([("supervisor.startProcess", (program, False)),
                                              ("supervisor.getProcessInfo", (program,))])
        if isinstance(started, SupervisorError) or isinstance(info, SupervisorError):
            failed = SupervisorHandle(ctx, program, release.name, 0, offset)
            raise SpawnError(f"release {release.name}: supervisord did not start {program}: "
                             f"{started if isinstance(started, Exception) else info}; "
                             f"{failed.describe_exit()}")
        handle = SupervisorHandle(ctx, program, release.name,
                                  ProcessInfo.from_rpc(info).pid, offset)
        self.handles.append(handle)
        return handle

    def private_dir(self, program: str, token: str) -> Path:
        """A legacy release's compiled-in directory, as seen from outside its namespace:
        one per start (token), never the folder of an earlier start, whose socket path a
        listener taken over from it may still be bound to and serving."""
        return self._ctx.layout.slot_dir(program) / f"root-{token}"

    def running(self) -> list[tuple[slotfile.SlotSpec, SupervisorHandle]]:
        """The service's relays supervisord runs now, each with the slot file it was
        started from (release and token): what a restarted daemon attaches to."""
        ctx = self._ctx
        if not ctx.supervisord_cmdline:
            ctx.supervisord_cmdline = psutil.Process(ctx.client.pid()).cmdline()
        found = []
        for info in ctx.client.infos(self.programs):
            if not info.running or _dead(info.pid):
                continue
            try:
                spec = slotfile.read(ctx.layout.slot_dir(info.name))
            except slotfile.SlotFileError:
                continue  # started by hand, never by swapctl: not ours to attach
            log = ctx.layout.program_log(info.name)
            handle = SupervisorHandle(ctx, info.name, spec.release, info.pid,
                                      log.stat().st_size if log.exists() else 0)
            self.handles.append(handle)
            found.append((spec, handle))
        return found

    def free_slot(self, reap_wait: float = 2.0) -> str:
        """The first of blue, green that supervisord does not report running.

        A relay that just died is still RUNNING until supervisord reaps it (a cold
        rollback right after the old release crashed): wait up to `reap_wait` for that.
        """
        deadline = time.monotonic() + reap_wait
        while True:
            infos = self._ctx.client.infos(self.programs)
            for info in infos:
                if not info.running:
                    return info.name
            if not any(_dead(i.pid) for i in infos) or time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        busy = ", ".join(f"{i.name} {i.state} pid {i.pid}" for i in infos)
        raise SpawnError(
            f"service {self.service}: both slots are busy ({busy}): finish or abort the swap "
            f"in progress, or stop one (supervisorctl -c {self._ctx.layout.config} stop NAME)")

    def stop_all(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for handle in self.handles:
            handle.stop(max(0.1, deadline - time.monotonic()))
