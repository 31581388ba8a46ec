"""`SupervisorSpawner`: the swap engine's `Spawner`, with supervisord owning the relays.

spawn(release): pick the service's free slot (blue or green: the one supervisord does
not report running), write its slot file (argv + SWAPCTL_HANDOFF/TOKEN/SOCKET/RELEASE),
and `startProcess(slot, wait=False)` and `getProcessInfo(slot)` in one round trip. The
launcher execs the release, so the pid supervisord reports is the relay's; the handle
is that pid plus its start time, exactly as `SubprocessSpawner`'s handles are.

stop() asks supervisord (`stopProcess`, SIGTERM to the group, SIGKILL after
`stopwaitsecs`) and bounds the wait itself. It never stops a process that has not
exec'd yet: supervisord's forked child keeps supervisord's Python signal handlers
until its execve, so a SIGTERM in those first milliseconds is swallowed and the stop
is lost. If supervisord cannot be reached, the handle signals its own process group,
identified by pid + start time, as the subprocess spawner does.

supervisord's death. Its children outlive it (each leads a process group of its own),
and a restarted supervisord knows none of them (every program is STOPPED,
autostart=false). A handle made before the restart is then *adopted*: swapctl still
knows it by pid + start time, stops it by signals to its group, and tells its death
apart from supervisord's stale log lines. The launcher's pid record (slotfile.live_pid)
keeps a slot whose relay outlived supervisord busy (`free_slot`) and lets a restarted
swapctld find that relay (`running`). A spawn that finds supervisord unreachable waits
up to `reconnect_wait` for it to answer again (swapctld restarts it), then starts the
release, or takes the relay it had started just before supervisord died.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil

from swapctl import isolation, process
from swapctl.errors import UsageError
from swapctl.supervise import slotfile
from swapctl.supervise.client import (
    ProcessInfo,
    SupervisorClient,
    SupervisorError,
    SupervisorUnreachable,
)
from swapctl.supervise.layout import SLOTS, Layout, program_name
from swapctl.swap.spawner import Release, SpawnError

POLL = 0.005
EXEC_WAIT = 1.0      # longest wait for a fresh child to exec before stopping it anyway
STOP_GRACE = 0.01    # and at least this long after the start
TAIL = 600
T = TypeVar("T")


@dataclass(slots=True)
class _Context:
    client: SupervisorClient
    layout: Layout
    supervisord_cmdline: list[str] = field(default_factory=list)
    generation: int = 0  # supervisord restarts seen (handles of an older one are adopted)


class SupervisorHandle:
    def __init__(self, ctx: _Context, program: str, release: str, pid: int,
                 log_offset: int, *, adopted: bool = False) -> None:
        self._ctx = ctx
        self.generation = -1 if adopted else ctx.generation
        self.program = program
        self.release = release
        self.pid = pid
        self.started = time.monotonic()
        self.log_offset = log_offset
        self.log_path = ctx.layout.program_log(program)
        self.exitstatus: int | None = None
        try:
            self.started_s = process.started(pid) if pid else 0.0
        except psutil.NoSuchProcess:
            self.started_s = 0.0

    def alive(self) -> bool:
        """Still running, and still the process we started (pid + start time)."""
        return bool(self.pid) and process.is_same(self.pid, self.started_s)

    @property
    def adopted(self) -> bool:
        """Started by a supervisord that has died since: swapctl alone knows it."""
        return self.generation != self._ctx.generation

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
            elif self.alive():  # outlived the supervisord that started it: ours to stop
                self._stop_by_signal(deadline)
            elif not self.adopted:
                self._wait_gone(deadline)  # records the exit status
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
            if process.started(self.pid) != self.started_s:
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
        if self.adopted:
            text = (f"pid {self.pid} of {self.program} ended outside supervisord (it outlived "
                    "the supervisord that started it, whose exit status is lost with it)")
            tail = self._log_tail()
            return text + f"; log {self.log_path}" + (f" ends with: {tail}" if tail
                                                      else " is empty")
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
        self.reconnect_wait = 0.0  # how long a spawn waits for supervisord to answer again

    def spawn(self, release: Release, token: str, control: Path,
              socket: Path) -> SupervisorHandle:
        ctx = self._ctx
        if not ctx.supervisord_cmdline:
            ctx.supervisord_cmdline = psutil.Process(ctx.client.pid()).cmdline()
        if shutil.which(release.command[0]) is None:
            raise UsageError(f"release {release.name}: cannot run {release.command[0]!r}: "
                             "not found or not executable")
        program = self._when_reachable(self.free_slot)
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
        handle = self._start(program, release.name, token, offset)
        self.handles = [h for h in self.handles if h.alive()]
        self.handles.append(handle)
        return handle

    def _start(self, program: str, release: str, token: str, offset: int) -> SupervisorHandle:
        ctx = self._ctx
        calls: list[tuple[str, tuple[str | bool, ...]]] = [
            ("supervisor.startProcess", (program, False)),
            ("supervisor.getProcessInfo", (program,))]
        try:
            started, info = ctx.client.multicall(calls)
        except SupervisorUnreachable as exc:
            self._wait_reachable(exc)
            record = slotfile.live_pid(ctx.layout.slot_dir(program))
            if record is not None and record.token == token:  # it died after the start
                return SupervisorHandle(ctx, program, release, record.pid, offset,
                                        adopted=True)
            started, info = ctx.client.multicall(calls)
        if isinstance(started, SupervisorError) or isinstance(info, SupervisorError):
            failed = SupervisorHandle(ctx, program, release, 0, offset)
            raise SpawnError(f"release {release}: supervisord did not start {program}: "
                             f"{started if isinstance(started, Exception) else info}; "
                             f"{failed.describe_exit()}")
        return SupervisorHandle(ctx, program, release, ProcessInfo.from_rpc(info).pid, offset)

    def _when_reachable(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except SupervisorUnreachable as exc:
            self._wait_reachable(exc)
            return call()

    def _wait_reachable(self, exc: SupervisorUnreachable) -> None:
        """supervisord did not answer: wait up to `reconnect_wait` for it to (swapctld
        starts it again, or systemd does), or raise `exc`."""
        deadline = time.monotonic() + self.reconnect_wait
        while time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                self._ctx.client.pid()
                return
            except SupervisorError:
                continue
        raise exc

    def supervisord_died(self) -> list[SupervisorHandle]:
        """supervisord died: every handle made before is adopted from now on (the next
        supervisord will not know it); returns the relays that outlived it, untouched."""
        self._ctx.generation += 1
        return [h for h in self.handles if h.alive()]

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
            slot_dir = ctx.layout.slot_dir(info.name)
            pid, token = info.pid, ""
            if not info.running or _dead(info.pid):  # or it outlived an older supervisord
                record = slotfile.live_pid(slot_dir)
                if record is None:
                    continue
                pid, token = record.pid, record.token
            try:
                spec = slotfile.read(slot_dir)
            except slotfile.SlotFileError:
                continue  # started by hand, never by swapctl: not ours to attach
            if token and spec.env.get("SWAPCTL_TOKEN") != token:
                continue  # the slot file was rewritten since: it does not describe pid
            log = ctx.layout.program_log(info.name)
            handle = SupervisorHandle(ctx, info.name, spec.release, pid,
                                      log.stat().st_size if log.exists() else 0,
                                      adopted=bool(token))
            self.handles.append(handle)
            found.append((spec, handle))
        return found

    def free_slot(self, reap_wait: float = 2.0) -> str:
        """The first of blue, green that supervisord does not report running.

        A relay that just died is still RUNNING until supervisord reaps it (a cold
        rollback right after the old release crashed): wait up to `reap_wait` for that.
        """
        deadline = time.monotonic() + reap_wait
        layout = self._ctx.layout
        while True:
            infos = self._ctx.client.infos(self.programs)
            outside = {i.name: slotfile.live_pid(layout.slot_dir(i.name))
                       for i in infos if not i.running}
            for info in infos:
                if not info.running and outside[info.name] is None:
                    return info.name
            if not any(_dead(i.pid) for i in infos) or time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        busy = ", ".join(f"{i.name} {i.state} pid {i.pid}" if i.running else
                         f"{i.name} pid {getattr(outside[i.name], 'pid', '?')} (outlived an "
                         "earlier supervisord)" for i in infos)
        raise SpawnError(
            f"service {self.service}: both slots are busy ({busy}): finish or abort the swap "
            f"in progress, or stop one (supervisorctl -c {self._ctx.layout.config} stop NAME)")

    def stop_all(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for handle in self.handles:
            handle.stop(max(0.1, deadline - time.monotonic()))
