"""Our private supervisord: started from the `supervisor` package, stopped with `shutdown()`.

`Supervisord(layout).start()` writes the generated configuration, runs
`python -m supervisor.supervisord -c CONF` (nodaemon) as our child in its own session,
and returns once its XML-RPC socket answers. `stop()` stops each running program with a
per-process call (group calls cost about a second), then `shutdown()`s supervisord and
waits for it. As a last resort it SIGKILLs supervisord's process group and the process
group of every program it had started (supervisord puts each child in a group of its
own, so killing supervisord's group alone would leave the relays running).
`stop_outliving` stops the relays that outlived an earlier supervisord (it knows none of
them: the launcher's pid records do).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import psutil

from swapctl.errors import SwapctlError
from swapctl.supervise import slotfile
from swapctl.supervise.client import STOPPED_STATES, SupervisorClient, SupervisorError
from swapctl.supervise.layout import Layout, write_config


class SupervisordStartError(SwapctlError):
    """supervisord did not start or did not answer on its socket in time."""


class Supervisord:
    def __init__(self, layout: Layout, call_timeout: float = 5.0) -> None:
        self.layout = layout
        self.call_timeout = call_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: SupervisorClient | None = None

    @property
    def output(self) -> Path:
        return self.layout.state_dir / "supervisord.out"

    def start(self, timeout: float = 10.0) -> SupervisorClient:
        layout = self.layout
        if layout.socket.exists():
            self._refuse_if_answering()
        config = write_config(layout)
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [layout.python, "-P", "-m", "supervisor.supervisord", "-c", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                cwd=layout.state_dir)
        self.client = SupervisorClient(layout.socket, self.call_timeout)
        try:
            self._wait_answering(self.client, timeout)
        except BaseException:
            self.kill()
            raise
        return self.client

    def _refuse_if_answering(self) -> None:
        probe = SupervisorClient(self.layout.socket, 1.0)
        try:
            pid = probe.pid()
        except SupervisorError:
            return  # a stale socket file: supervisord replaces it
        finally:
            probe.close()
        raise SupervisordStartError(
            f"a supervisord (pid {pid}) already answers on {self.layout.socket}: use it "
            f"(supervisorctl -c {self.layout.config} status) or stop it first")

    def _wait_answering(self, client: SupervisorClient, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SupervisordStartError(
                    f"supervisord exited with {self.proc.returncode} before answering on "
                    f"{self.layout.socket}; {self._output_tail()}")
            with contextlib.suppress(SupervisorError):
                if client.state() == "RUNNING" and client.pid() == self.proc.pid:
                    return
            if time.monotonic() >= deadline:
                raise SupervisordStartError(
                    f"supervisord (pid {self.proc.pid}) did not answer on {self.layout.socket}"
                    f" within {timeout:g}s; {self._output_tail()}")
            time.sleep(0.01)

    def _output_tail(self) -> str:
        for path in (self.output, self.layout.log):
            with contextlib.suppress(OSError):
                tail = path.read_bytes()[-800:].decode(errors="replace").strip()
                if tail:
                    return f"{path} ends with: {tail}"
        return f"nothing in {self.output} or {self.layout.log}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every program (per process), then supervisord; kill what is left."""
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout
        if self.proc.poll() is None and self.client is not None:
            try:
                stop_programs(self.client, self.layout, deadline)
                self.client.shutdown()
                self.proc.wait(max(0.1, deadline - time.monotonic()))
            except (SupervisorError, subprocess.TimeoutExpired):
                pass  # the last resort below
        self.kill()


    def kill(self) -> None:
        """SIGKILL supervisord's group and the group of every process it started."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:  # reaped: its pid may belong to someone else now
            if self.client is not None:
                self.client.close()
            return
        groups = {self.proc.pid}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error, OSError):
                    groups.add(os.getpgid(child.pid))
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.client is not None:
            self.client.close()

    def __enter__(self) -> Supervisord:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def stop_programs(client: SupervisorClient, layout: Layout, deadline: float) -> list[str]:
    """Stop every running program of the layout (per process: group calls cost about a
    second) and wait, until `deadline`, for them to stop; returns those that ran."""
    running = [i.name for i in client.infos(layout.programs()) if i.running]
    stopping = list(running)
    for name in stopping:
        with contextlib.suppress(SupervisorError):  # it may have just exited
            client.stop(name)
    while stopping and time.monotonic() < deadline:
        stopping = [i.name for i in client.infos(stopping) if i.state not in STOPPED_STATES]
        time.sleep(0.005)
    return running


def stop_outliving(layout: Layout, deadline: float) -> list[str]:
    """Stop every relay that outlived the supervisord that started it (found by its
    slot's pid record): SIGTERM to its process group, SIGKILL at `deadline`. Call it
    after `stop_programs`, which stops those the running supervisord knows; returns the
    programs it stopped."""
    found = {}
    for program in layout.programs():
        record = slotfile.live_pid(layout.slot_dir(program))
        if record is not None:
            found[program] = record
    for sig, until in ((signal.SIGTERM, deadline), (signal.SIGKILL, deadline + 1.0)):
        for record in found.values():
            if slotfile.live_pid_is(record):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(record.pid, sig)
        while any(slotfile.live_pid_is(r) for r in found.values()) \
                and time.monotonic() < until:
            time.sleep(0.01)
    return sorted(found)
