"""The service's lease: one run at a time, and the recovery of a run that was killed.

    STATE/playbooks/leases/SERVICE.lock   flock'ed for the whole run (the kernel lets go
                                          when the process dies, however it dies)
    STATE/playbooks/leases/SERVICE.json   run id, pid, journal, baseline, and state:
                                          "running" until the run ended and cleaned up

A lease file that says "running" while nobody holds the lock belongs to a run that did
not end: killed by SIGKILL, the OOM killer, a reboot, or a cleanup that could not
restore the baseline. The next run on that service (a `swapctl drill`, `swapctl run`)
restores that run's baseline first (aborting a swap it had started, or swapping
back), closes its journal as "killed" with what was done, writes its reports, and only
then begins.

swapctld holds a lease of its own for the run (op `lease`, renewed every LEASE_TTL/3 by
a thread of the run): if the run stops renewing (killed, frozen, its host process hung)
the daemon aborts the swap the run had going, or swaps the baseline back in, within
LEASE_TTL and a second, without waiting for the next run. A run that ends cleanly
releases it; a run whose cleanup could not restore the baseline lets it expire, so the
daemon tries once more.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from swapctl.config.load import Config
from swapctl.daemon.api import ApiClient, ApiError, DaemonUnreachable
from swapctl.daemon.paths import read_json, write_json
from swapctl.errors import UsageError
from swapctl.playbook import reports
from swapctl.playbook.context import RunJournal
from swapctl.playbook.restore import Restore

log = logging.getLogger("swapctl.playbook")
LEASE_TTL = 15.0  # seconds swapctld waits for a renewal before it restores the baseline


class Busy(UsageError):
    """Another run holds the service."""


def _paths(config: Config, service: str) -> tuple[Path, Path]:
    leases = Path(config.daemon.state_dir) / "playbooks" / "leases"
    return leases / f"{service}.lock", leases / f"{service}.json"


class Lease:
    def __init__(self, config: Config, service: str, client: ApiClient) -> None:
        self.config, self.service, self.client = config, service, client
        self.lock_path, self.path = _paths(config, service)
        self.fd = -1
        self.recovered: dict[str, Any] | None = None
        self.holder = ""
        self.replaces = ""  # the run id of a dead run whose swapctld lease we take over
        self._renewing = threading.Event()

    def __enter__(self) -> Lease:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            holder = read_json(self.path) or {}
            raise Busy(f"{self.service}: run {holder.get('run_id', '?')} (pid "
                       f"{holder.get('pid', '?')}) is running a playbook on it: wait for it "
                       "to end") from None
        held = read_json(self.path)
        if held is not None and held.get("state") == "running":
            self.replaces = str(held.get("run_id") or "")  # dead: its lock was free
            self.recovered = recover(self.config, self.client, held)
            write_json(self.path, {**held, "state": "recovered", "recovered": self.recovered})
        return self

    def hold(self, journal: RunJournal, baseline: str) -> None:
        write_json(self.path, {"service": self.service, "run_id": journal.data["run_id"],
                               "pid": os.getpid(), "journal": str(journal.path),
                               "baseline": baseline, "started": time.time(),
                               "state": "running"})
        self.holder = str(journal.data["run_id"])
        try:
            self.client.call("lease", service=self.service, holder=self.holder,
                             ttl_s=LEASE_TTL, restore_to=baseline, replaces=self.replaces)
        except ApiError as exc:
            raise Busy(f"{self.service}: swapctld refused the run's lease: {exc}") from None
        self._renewing.set()
        threading.Thread(target=self._renew, name="lease", daemon=True).start()

    def _renew(self) -> None:
        while self._renewing.is_set():
            time.sleep(LEASE_TTL / 3)
            if not self._renewing.is_set():
                return
            try:
                self.client.call("lease_renew", service=self.service, holder=self.holder)
            except (ApiError, DaemonUnreachable, TimeoutError, OSError) as exc:
                log.warning("lease renewal failed: %s", exc)

    def release(self, clean: bool) -> None:
        """clean: the baseline serves (else the lease stays "running": the next run
        restores it again, and swapctld's lease, no longer renewed, expires: it restores
        the baseline itself)."""
        self._renewing.clear()
        if clean:
            Lease.mark_done(self.config, self.service, clean=True)
            if self.holder:
                try:
                    self.client.call("lease_release", service=self.service,
                                     holder=self.holder)
                except (ApiError, DaemonUnreachable, TimeoutError, OSError) as exc:
                    log.warning("lease release failed: %s", exc)

    @staticmethod
    def mark_done(config: Config, service: str, clean: bool) -> None:
        _, path = _paths(config, service)
        held = read_json(path)
        if held is not None and clean:
            write_json(path, {**held, "state": "done", "ended": time.time()})

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._renewing.clear()  # (not released: unless the run said clean, it expires)
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def recover(config: Config, client: ApiClient, held: dict[str, Any]) -> dict[str, Any]:
    """Restore the baseline of a run that did not end; close its journal as killed."""
    journal_path = Path(str(held.get("journal", "")))
    data = read_json(journal_path) if journal_path.name else None
    events = (data or {}).get("events", [])
    ours = [e["swap_id"] for e in events if e.get("decision") == "swap_started"]
    started = [e.get("step") for e in events if e.get("event") == "step_started"]
    service, baseline = str(held["service"]), str(held["baseline"])
    actions = Restore(client, service, baseline, ours).run()  # RestoreFailed: refuse to go on
    outcome = {"run_id": held.get("run_id"), "pid": held.get("pid"), "baseline": baseline,
               "last_step": started[-1] if started else None, "actions": actions,
               "at": time.time()}
    if data is not None and data.get("state") != "running":
        write_json(journal_path, {**data, "recovered_by_next_run": outcome})
    elif data is not None:
        reason = (f"the run (pid {held.get('pid')}) stopped without ending, in step "
                  f"{outcome['last_step']!r}; the next run restored {baseline}: "
                  + ("; ".join(actions) or f"{baseline} served already"))
        data.update(state="killed", ended=time.time(), recovered_by_next_run=outcome,
                    result={"ok": False, "state": "killed", "reason": reason,
                            "restore_failed": False,
                            "seconds": round(time.time() - float(data.get("started", 0)), 3)})
        write_json(journal_path, data)
        drill = data.get("kind") == "drill"
        reports.write_all(journal_path.parent, data, config, drill)
    return outcome
