"""swapctld's watch on supervisord: notice its death at once, start it again, say so.

How it works. `Keeper.start()` asks supervisord its pid (one XML-RPC call) and opens a
pidfd on it; a thread of its own waits on that pidfd, which becomes readable the moment
supervisord exits, however it dies (psutil's pid + start time every 0.25 s where
pidfd_open is missing). Then:
- it reports: `on_event("supervisord_died", ...)` and `status()` is down, with why;
- `restart=True` (supervisord.start: swapctl): it starts supervisord again from the same
  generated configuration (`Supervisord.start`; every program is autostart=false, so it
  starts no relay), retrying with a back-off; `restart=False` (systemd owns it: the
  unit's Restart=on-failure brings it back): it asks supervisord's socket every 0.5 s;
- once one answers: `on_event("supervisord_restarted" or "supervisord_back", ...)` and
  it watches the new pid.
The relays do not need supervisord while they run: each leads a process group of its
own (supervisord's SIGKILL never reaches them) and their handoff links go to swapctld.
What they lose is supervisord knowing them; swapctl knows them by pid (spawner.py).
Fault injection for tests: SWAPCTL_SUPERVISORD_HOLD=FILE keeps supervisord down until
FILE exists (to see what is reported meanwhile).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from swapctl import process
from swapctl.errors import SwapctlError
from swapctl.supervise.client import SupervisorClient, SupervisorError
from swapctl.supervise.layout import Layout
from swapctl.supervise.supervisord import Supervisord

HOLD = "SWAPCTL_SUPERVISORD_HOLD"
POLL = 0.25           # longest wait on the pidfd before checking whether to stop
BACKOFF = (0.0, 1.0, 2.0, 5.0, 10.0)  # between failed starts

OnEvent = Callable[[str, dict[str, Any]], None]


class Keeper:
    def __init__(self, layout: Layout, *, restart: bool, on_event: OnEvent,
                 started: Supervisord | None = None) -> None:
        self.layout = layout
        self.restart = restart
        self.on_event = on_event
        self.hold = os.environ.get(HOLD, "")
        self._started = started  # the supervisord we started (ours to reap)
        self._client = SupervisorClient(layout.socket, 2.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pidfd: int | None = None
        self._pid = 0
        self._started_s = 0.0
        self._died_at = 0.0         # monotonic time of the death being repaired
        self._death = ""            # what happened, while it is down
        self._failures = 0
        self.up = False
        self.restarts = 0
        self.since = time.time()
        self.problem: str | None = "not watched yet"

    # ----- life ------------------------------------------------------------------

    def start(self) -> None:
        """Watch the supervisord that answers now (else treat it as dead) in a thread."""
        try:
            self._watch(self._client.pid())
        except SupervisorError as exc:
            self._down(f"supervisord does not answer on {self.layout.socket} ({exc})", 0)
        self._thread = threading.Thread(target=self._run, name="supervisord-keeper",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching (before `down` shuts supervisord down, or swapctld exits)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._close_pidfd()
        self._client.close()

    def status(self) -> dict[str, Any]:
        return {"up": self.up, "pid": self._pid or None, "since": self.since,
                "restarts": self.restarts, "problem": self.problem,
                "start": "swapctl" if self.restart else "systemd",
                "socket": str(self.layout.socket)}

    # ----- the thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.up:
                if self._exited(POLL):
                    self._died()
            else:
                self._revive()

    def _exited(self, timeout: float) -> bool:
        if self._pidfd is not None:
            readable, _, _ = select.select([self._pidfd], [], [], timeout)
            return bool(readable)
        self._stop.wait(timeout)
        return not process.is_same(self._pid, self._started_s)

    def _died(self) -> None:
        pid, how = self._pid, self._how_it_ended()
        self._close_pidfd()
        self._died_at = time.monotonic()
        self._failures = 0
        if self.restart:
            then = "swapctld starts it again"
        else:
            then = "waiting for systemd to start it again (systemctl status swapctl-supervisord)"
        self._down(f"supervisord (pid {pid}) died ({how}): {then}; the relays keep "
                   "serving, but none can be started, restarted or swapped until it runs",
                   pid)
        self.on_event("supervisord_died", {"pid": pid, "how": how,
                                           "restart": "swapctl" if self.restart else "systemd"})

    def _revive(self) -> None:
        if self.restart:
            if self.hold and not os.path.exists(self.hold):
                self._stop.wait(0.1)  # fault injection: held down until the file exists
                return
            self._stop.wait(BACKOFF[min(self._failures, len(BACKOFF) - 1)])
            if self._stop.is_set():
                return
            try:
                pid = self._client.pid()  # someone started one meanwhile: watch it
            except SupervisorError:
                pid = 0
            try:
                if not pid:
                    started = Supervisord(self.layout)
                    started.start()
                    self._started = started
                    pid = self._client.pid()
            except (SwapctlError, OSError) as exc:
                self._failures += 1
                self.problem = (f"{self._death}; starting it again failed {self._failures} "
                                f"time(s), the last: {exc}")
                self.on_event("supervisord_restart_failed", {"error": str(exc),
                                                             "attempt": self._failures})
                return
        else:
            try:
                pid = self._client.pid()
            except SupervisorError:
                self._stop.wait(0.5)
                return
        self._watch(pid)
        self.restarts += 1
        after = round(time.monotonic() - self._died_at, 3) if self._died_at else None
        self.on_event("supervisord_restarted" if self.restart else "supervisord_back",
                      {"pid": pid, "after_s": after})

    # ----- helpers ---------------------------------------------------------------

    def _watch(self, pid: int) -> None:
        self._pid = pid
        try:
            self._started_s = process.started(pid)
        except psutil.Error:
            self._started_s = 0.0
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None
            self._started_s = -1.0  # gone already: the next check says so
        except (OSError, AttributeError):
            self._pidfd = None  # no pidfd here: psutil's identity check instead
        self.up, self.problem, self.since = True, None, time.time()

    def _down(self, problem: str, pid: int) -> None:
        self._pid, self._death = pid, problem
        self.up, self.problem, self.since = False, problem, time.time()

    def _how_it_ended(self) -> str:
        proc = self._started.proc if self._started is not None else None
        if proc is None or proc.pid != self._pid:
            return "not swapctld's child: its exit status is unknown"
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)  # reap it
        code = proc.returncode
        if code is None:
            return "exit status unknown"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
            return f"killed by signal {-code}"
        return f"exited with {code}"

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None
