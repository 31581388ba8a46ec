"""swapctld's start after a crash or restart: attach to the relays that still run.

`recover(runtime, found, listener_fd)`: `found` is what supervisord runs for the
service, each with its slot file. Handoff relays are waited for on the handoff socket
(they reconnect every 0.5 s and say their state); legacy relays cannot say anything, so
their process state and the public link speak for them. Then exactly one relay is made
to serve (recovery.settle), the listener goes back into swapctld's fd store, and an
unfinished swap is finished or rolled back (recovery.decide, SwapRun.resume).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from swapctl.config.convert import to_canary
from swapctl.daemon import legacy, recovery
from swapctl.daemon.jobs import GoneHandle, SwapJob
from swapctl.daemon.runtime import ServiceRuntime
from swapctl.errors import SwapctlError
from swapctl.legacy.takeover import end_relay
from swapctl.supervise.spawner import SupervisorHandle
from swapctl.swap import journal as journal_file
from swapctl.swap.executor import SwapRun, Where
from swapctl.swap.handoff_actions import HandoffActions
from swapctl.swap.machine import State
from swapctl.swap.service import Slot
from swapctl.unixsock import adopt_listener

ATTACH_TIMEOUT = 8.0  # relays retry their control connection every 0.5 s


def start(rt: ServiceRuntime, listener_fd: int | None = None) -> dict[str, Any]:
    """A service's start in swapctld: attach to the relays supervisord runs (a restart
    of swapctld), settle them and finish any swap the journal says was running; or start
    the last good release."""
    with rt.lock:
        rt.service.open_control()
        found = rt.spawner.running()
        if not found:
            return rt.start_fresh(listener_fd)
        return recover(rt, found, listener_fd)


def recover(rt: ServiceRuntime, found: list[tuple[Any, SupervisorHandle]],
            listener_fd: int | None) -> dict[str, Any]:
    svc = rt.service
    slots: dict[str, Slot] = {}
    old_legacy: list[Slot] = []
    problems = []
    for spec, handle in found:
        token = spec.env.get("SWAPCTL_TOKEN", "")
        try:
            release = rt.release(spec.release, configured=False, command=spec.argv)
            if release.legacy:
                old_legacy.append(Slot(release, token, handle, legacy.no_link()))
                continue
            slots[token] = svc.attach(release, token, handle, time.monotonic() + ATTACH_TIMEOUT)
        except (SwapctlError, OSError) as exc:
            problems.append(f"{handle.program} (pid {handle.pid}): {exc}")
    states = {token: str(slot.link.hello.get("state", "")) for token, slot in slots.items()}
    outcome: dict[str, Any] = {"service": rt.name, "action": "attached", "relays": states,
                               "legacy": [s.release.name for s in old_legacy],
                               "problems": problems}
    unfinished = _unfinished(rt)
    serving_legacy = _legacy_serving(rt, old_legacy, states)
    if serving_legacy is not None:
        return _legacy_serves(rt, serving_legacy, slots=slots, old_legacy=old_legacy,
                              unfinished=unfinished, outcome=outcome)
    for slot in old_legacy:  # a handoff relay took over (or nothing points at them)
        if legacy.is_stopped(slot.handle.pid):
            end_relay(slot.handle.pid)  # frozen by a takeover: it must never run again
        slot.stop(2.0)
    settled = recovery.settle(states)
    for token in settled.close:
        slots[token].link.close_held(5.0)
    for token in settled.resume:
        slots[token].link.resume(5.0)
    outcome.update(closed=list(settled.close), resumed=list(settled.resume))
    if settled.serving is None:
        outcome["problem"] = settled.problem
        for slot in slots.values():
            slot.stop(2.0)
        rt.journal_event("recovery_failed", problem=settled.problem)
        outcome.update(rt.start_fresh(listener_fd))
        outcome["action"] = "restarted (clients lost their connections)"
        return outcome
    serving = slots[settled.serving]
    svc.active = serving
    if listener_fd is None:
        listener_fd = serving.link.listener(5.0)
    svc.listener = adopt_listener(listener_fd)
    rt.listener_store(listener_fd)
    others = [s for t, s in slots.items() if t != settled.serving]
    if unfinished is not None and unfinished["begin"].get("strategy") not in (None, "handoff"):
        _close_legacy_swap(rt, unfinished, serving.release.name)
        unfinished = None
    if unfinished is None:
        for slot in others:  # a warm standby of a finished swap, or a stray
            svc.warm = slot if svc.warm is None else svc.warm
        rt.remember(serving.release.name)
    else:
        outcome["swap"] = _finish(rt, unfinished, slots, settled.serving)
    rt.refresh()
    return outcome


def _legacy_serving(rt: ServiceRuntime, old_legacy: list[Slot],
                    states: dict[str, str]) -> Slot | None:
    """The legacy relay that serves: frozen by a takeover that never confirmed (no
    handoff relay active), or the one the public link points at."""
    if not old_legacy:
        return None
    frozen = [slot for slot in old_legacy if legacy.is_stopped(slot.handle.pid)]
    if frozen:  # a takeover was under way
        if "active" in states.values():
            return None  # the candidate had resumed: it serves, the frozen relay is ended
        legacy.thaw_if_stopped(frozen[0].handle.pid)
        return frozen[0]  # never confirmed: it kept every socket and byte, it goes on
    public = rt.service.socket_path
    target = Path(os.readlink(public)) if public.is_symlink() else None
    for slot in old_legacy:  # (a bridge or restart: the link says who serves)
        if target is not None and target == legacy.slot_socket(rt.spawner, slot):
            return slot
    return None


def _legacy_serves(rt: ServiceRuntime, serving: Slot, *, slots: dict[str, Slot],
                   old_legacy: list[Slot], unfinished: dict[str, Any] | None,
                   outcome: dict[str, Any]) -> dict[str, Any]:
    svc = rt.service
    for slot in slots.values():  # candidates of a takeover that never confirmed
        if slot.link.hello.get("state") in recovery.HOLDS:
            slot.link.close_held(5.0)
        slot.stop(2.0)
    for slot in old_legacy:
        if slot is not serving:
            slot.stop(2.0)
    svc.active = serving
    rt.legacy_socket = legacy.slot_socket(rt.spawner, serving)
    if unfinished is not None:
        _close_legacy_swap(rt, unfinished, serving.release.name)
    rt.remember(serving.release.name)
    rt.refresh()
    outcome["action"] = f"attached (legacy {serving.release.name} serves)"
    return outcome


def _close_legacy_swap(rt: ServiceRuntime, unfinished: dict[str, Any], serving: str) -> None:
    """A takeover or restart swapctld was killed in: its outcome is who serves now."""
    target = str(unfinished["begin"].get("release", ""))
    decision = "committed" if serving == target else "rolled_back"
    why = f"swapctld restarted during {unfinished['begin'].get('strategy')}; {serving} serves"
    rt.journal.write({"swap": unfinished["swap"], "at": round(time.monotonic(), 6),
                      "event": "recovered", "state": unfinished["state"], "reason": why})
    rt.journal.write({"swap": unfinished["swap"], "at": round(time.monotonic(), 6),
                      "from": unfinished["state"], "event": decision, "to": decision,
                      "reason": why})


def _unfinished(rt: ServiceRuntime) -> dict[str, Any] | None:
    """The last swap of this service in the journal, if it has no terminal record."""
    if not rt.paths.journal.exists():
        return None
    last: dict[str, Any] | None = None
    for record in journal_file.stream(rt.paths.journal):  # (only the last swap is kept)
        swap = record.get("swap")
        if last is not None and swap == last["swap"]:
            last["records"].append(record)
        if record.get("service") != rt.name or swap is None:
            continue
        if record.get("event") == "begin":
            last = {"swap": swap, "begin": record, "state": "starting",
                    "at": record["at"], "token": "", "records": [record]}
        elif last is not None and swap == last["swap"]:
            if "to" in record:
                last["state"], last["at"] = record["to"], record["at"]
            if record.get("token"):  # the candidate's slot (spawned, then ready)
                last["token"] = record["token"]
    if last is None or State(last["state"]).terminal:
        return None
    return last


def _finish(rt: ServiceRuntime, unfinished: dict[str, Any], slots: dict[str, Slot],
            serving: str) -> dict[str, Any]:
    begin = unfinished["begin"]
    old_token, cand_token = begin.get("old_token", ""), unfinished["token"]
    role = "old" if serving == old_token else "candidate" if serving == cand_token else None
    decision = recovery.decide(State(unfinished["state"]), role)
    svc = rt.service
    old = slots.get(old_token) or Slot(
        rt.release(begin.get("old_release") or rt.config.active, configured=False), old_token,
        GoneHandle(), legacy.no_link())  # gone: only a name for a cold restart
    cand = slots.get(cand_token)
    for token, slot in slots.items():  # neither side of this swap: a stray, never served
        if token not in (serving, old_token, cand_token):
            slot.stop(2.0)
    svc.active, svc.warm = old, None
    target = rt.release(str(begin.get("release", "")), configured=False,
                        command=tuple(begin.get("command", ())))
    soak = begin.get("soak")  # the window the swap was started with (--soak)
    run = SwapRun(svc, target, rt.settings(float(soak) if soak is not None else None),
                  canary=to_canary(rt.config),
                  journal=rt.journal, requests=rt.requested,
                  aborted=rt.abort_requested, domain_byte=rt.domain_byte, actions=HandoffActions())
    if role == "candidate" and cand is not None:
        svc.active, svc.warm = cand, (old if old.alive() else None)
        where = Where.CANDIDATE
    else:
        where = Where.OLD
        run.marks.rollback_kind = "recovery: " + decision.why
    rt.journal.records.extend(unfinished["records"])  # the report tells the whole swap
    run.swap_id = unfinished["swap"]
    job = SwapJob.of_run(run, "recovery")
    rt.run_recovered(job, lambda: run.resume(
        unfinished["swap"], State(unfinished["state"]), float(unfinished["at"]), cand=cand,
        where=where, why=decision.why))
    return {"swap_id": unfinished["swap"], "phase": unfinished["state"],
            "decision": decision.next.value, "why": decision.why}
