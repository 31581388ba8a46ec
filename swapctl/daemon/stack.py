"""`swapctl up` and `swapctl down` outside systemd: swapctld as a detached process.

`up` starts `python -m swapctl daemon` in a session of its own (so it outlives the
shell, and a Ctrl-C there never reaches it), its output appended to LOG/swapctld.log,
and returns once the control API answers (the daemon answers only after recovering
every service). It is idempotent: a daemon that answers already is left alone, but if
it reports supervisord down, `up` waits for swapctld to have started it again (and
adopted the relays that outlived it), or fails saying why it is still down.
`down` asks the daemon to stop every relay, the supervisord swapctl started, and
itself, and waits until its process is gone; with swapctld already gone (killed), it
stops the relays through supervisord and shuts that down itself, and stops those that
outlived an earlier supervisord by their process groups (their slots' pid records).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from swapctl.config.load import Config
from swapctl.daemon.api import ApiClient, DaemonUnreachable
from swapctl.daemon.paths import Paths, layout_of
from swapctl.errors import SwapctlError
from swapctl.supervise.client import SupervisorClient, SupervisorError
from swapctl.supervise.supervisord import stop_outliving, stop_programs
from swapctl.unixsock import is_live


class StartFailed(SwapctlError):
    """swapctld exited or did not answer in time."""


def client_for(config: Config, timeout: float = 10.0) -> ApiClient:
    return ApiClient(Paths.of(config).control, timeout)


def up(config: Config, timeout: float = 60.0) -> dict[str, Any]:
    paths = Paths.of(config)
    paths.make()
    client = client_for(config, 2.0)
    try:
        running = {"started": False, **client.call("ping")}
    except DaemonUnreachable:
        pass
    else:
        return {**running, **_supervisord_repaired(client, timeout)}
    log = paths.daemon_log
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "swapctl", "daemon", "--config-dir",
             str(config.directory)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise StartFailed(f"swapctld exited with {code} while starting; "
                              f"{log} says: {_since(log, offset)}")
        try:
            return {"started": True, **client.call("ping")}
        except (DaemonUnreachable, TimeoutError, ConnectionError):
            pass
        if time.monotonic() >= deadline:
            raise StartFailed(f"swapctld (pid {proc.pid}) did not answer on {paths.control} "
                              f"within {timeout:g}s; {log} says: {_since(log, offset)}")
        time.sleep(0.1)


def _supervisord_repaired(client: ApiClient, timeout: float) -> dict[str, Any]:
    """swapctld answers: if supervisord is down, wait until swapctld has it back."""
    deadline = time.monotonic() + timeout
    first = state = client.call("status")["daemon"].get("supervisord_state")
    while state is not None and not state.get("up"):
        if time.monotonic() >= deadline:
            raise StartFailed(f"swapctld answers, but supervisord is still down after "
                              f"{timeout:g}s: {state.get('problem')}; see `swapctl status` "
                              f"and supervisord's log beside {state.get('socket')}")
        time.sleep(0.2)
        state = client.call("status")["daemon"].get("supervisord_state")
    if first is None or first.get("up"):
        return {"supervisord": state}
    return {"supervisord": state, "repaired": {"supervisord_was": first.get("problem")}}


def down(config: Config, timeout: float = 60.0) -> dict[str, Any]:
    client = client_for(config, timeout)
    try:
        pid = int(client.call("ping")["pid"])
    except DaemonUnreachable:
        return _down_without_daemon(config, timeout)
    client.call("down")
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        raise StartFailed(f"swapctld (pid {pid}) did not stop within {timeout:g}s") from None
    return {"stopped": True, "pid": pid}


def _down_without_daemon(config: Config, timeout: float) -> dict[str, Any]:
    """swapctld is gone (killed, crashed) but the supervisord swapctl started may still
    run the relays: stop them through it, shut it down, remove the stale public paths."""
    if config.daemon.supervisord.start != "swapctl":
        return {"stopped": False, "running": False}
    layout = layout_of(config, Paths.of(config))
    sup = SupervisorClient(layout.socket, 5.0)
    try:
        sup_pid: int | None = sup.pid()
        running = stop_programs(sup, layout, time.monotonic() + timeout)
        sup.shutdown()
    except SupervisorError:
        sup_pid, running = None, []
    finally:
        sup.close()
    outliving = stop_outliving(layout, time.monotonic() + min(timeout, 5.0))
    if sup_pid is None and not outliving:
        return {"stopped": False, "running": False}
    if sup_pid is not None:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            psutil.Process(sup_pid).wait(timeout)
    for service in config.services.values():
        public = Path(service.socket)
        if (public.is_symlink() or public.is_socket()) and not is_live(public):
            with contextlib.suppress(FileNotFoundError):
                public.unlink()
    return {"stopped": True, "pid": None, "supervisord_pid": sup_pid,
            "relays": running + outliving}


def _since(log: Path, offset: int) -> str:
    try:
        text = log.read_bytes()[offset:].decode(errors="replace").strip()
    except OSError:
        return "(no log)"
    return text[-1500:] or "(nothing)"
