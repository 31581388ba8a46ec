"""Strategy `handoff`: both releases speak the handoff protocol; every connection moves.

Phases (swap/machine.py PATHS["handoff"]):
  starting    the candidate starts in standby (or the warm standby is reused);
  probing     probe connections through it, no client moved yet;
  releasing   with the pre-copy extension (both relays offer it), first, while the old
              relay serves: every fd goes to the candidate, staged, and the orchestrator
              keeps its rollback duplicates. Then the whole pause: the old relay stops
              reading and hands over its listener, connections and bytes (with pre-copy:
              only what changed since, the bytes owed following as a memfd after the
              resume); each manifest part goes on to the candidate as it arrives; the
              candidate resumes. Nothing is journaled inside the pause: RELEASED is
              recorded once the candidate reads, with the stamped times;
  adopting    the old relay lets go of its copies and stays warm;
  verifying   pause budget, error counters, canary messages through the candidate;
  soaking     (the engine's loop) the candidate watched, the old release warm;
  committing  the old release stopped (or kept warm with keep_old).
Rollback, by where the clients are: OLD, stop the candidate; RELEASED, RESUME the old
relay (it kept every socket and byte); CANDIDATE, hand everything back (RELEASE the
candidate, ADOPT+RESUME the old relay, warm or started cold; with pre-copy the same
two steps in reverse); a dead candidate's clients are handed back from the
orchestrator's own copies of the sockets.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from swapctl.errors import SwapctlError
from swapctl.gcquiet import no_gc
from swapctl.handoff.controller import (
    MAX_BACKLOGS,
    HandOverFailed,
    RelayLink,
    forward_backlog,
    hand_over,
    pre_copy,
)
from swapctl.handoff.manifest import DELTA_FORMAT, ConnState, Transfer
from swapctl.handoff.messages import ChannelClosed
from swapctl.swap.executor import Failure, SwapRun, Where
from swapctl.swap.machine import State
from swapctl.swap.priority import CONTROL_THREAD, boost
from swapctl.swap.probe import ProbeFailed, ProbeSettings, probe
from swapctl.swap.service import Slot, SlotError

CANNOT_GUARANTEE = ("nothing noted: every connection, its unread bytes and the bytes owed "
                    "to it move to the candidate")


def _spawned(run: SwapRun, token: str, pid: int) -> None:
    """Journal the candidate's slot the moment it runs: an orchestrator killed before the
    candidate said ready then knows that process is this swap's and stops it."""
    run.journal.write({"swap": run.swap_id, "at": round(run.clock(), 6), "event": "spawned",
                       "token": token, "pid": pid})


class HandoffActions:
    strategy = "handoff"
    could_not_guarantee = CANNOT_GUARANTEE

    def __init__(self, precopy: bool = True) -> None:
        self.precopy = precopy  # use the pre-copy extension when both relays offer it

    def begin(self, run: SwapRun) -> dict[str, Any]:
        return {"release": run.release.name, "command": list(run.release.command),
                "old_release": run.old.release.name, "old_token": run.old.token,
                "soak": run.settings.deadlines.soaking, "strategy": self.strategy}

    def connections(self, run: SwapRun) -> int | None:
        return run.service.connections()

    def act(self, run: SwapRun, state: State) -> dict[str, Any]:
        if state is State.STARTING:
            self._start_candidate(run)
            assert run.cand is not None
            return {"pid": run.cand.handle.pid, "token": run.cand.token,
                    "reused": run.marks.reused}
        if state is State.PROBING:
            self._probe(run)
            return {"probe_ms": round(run.marks.probe_ms, 3)}
        if state is State.RELEASING:
            self._hand_over(run)
            m = run.marks
            return {"connections": m.moved, "stopped_ns": m.stopped_ns,
                    "resumed_ns": m.resumed_ns}
        if state is State.ADOPTING:
            self._let_old_go(run)
            return {"server_pause_ms": round(run.server_pause_ms or 0, 3)}
        if state is State.VERIFYING:
            self._verify(run)
            return {}
        if state is State.COMMITTING:
            self._commit(run)
            return {}
        raise AssertionError(f"handoff has no phase {state.value}")

    # ----- phases ----------------------------------------------------------------

    def _start_candidate(self, run: SwapRun) -> None:
        warm = run.service.warm
        if warm is not None and warm.release == run.release and warm.alive():
            run.cand, run.service.warm = warm, None  # already running, in standby
            run.marks.reused = True
            return
        deadline = run.clock() + run.timeout()
        try:
            run.cand = run.service.start_slot(run.release, deadline,
                                              spawned=lambda token, pid: _spawned(run, token, pid))
        except SlotError as exc:
            raise Failure(f"candidate not ready: {exc}") from None

    def _probe(self, run: SwapRun) -> None:
        assert run.cand is not None
        settings = ProbeSettings(run.domain_byte, run.settings.probe_echo, run.timeout())
        try:
            run.marks.probe_ms = probe(run.cand.link, settings)
        except ProbeFailed as exc:
            raise Failure(f"probe failed: {exc}") from None
        except (SwapctlError, TimeoutError, OSError) as exc:
            raise blame(run, "the probe", exc) from None

    def _hand_over(self, run: SwapRun) -> None:
        """(Pre-copy, old relay serving.) RELEASE the old relay; each manifest part goes
        on to the candidate as it arrives (pipelined); the candidate registers it
        without reading, then RESUME; then any bytes owed, as a memfd."""
        assert run.cand is not None
        base = self._pre_copy(run, run.old.link, run.cand.link)
        run.mark_cutover()
        run.where = Where.RELEASED  # from the release request on, the old relay may be paused
        generation = None if base is None else int(base.meta["generation"])
        with pause_priority(run, "realtime", run.cand, run.old):
            delta = self._release_into_candidate(run, generation)
            run.where = Where.CANDIDATE
            if holds_all(delta):  # every client waits for the first BACKLOG: see there
                self._forward_backlog(run, rounds=1)
        if base is not None:
            run.transfer = _merged(base, delta)
            self._forward_backlog(run)

    def _forward_backlog(self, run: SwapRun, rounds: int = MAX_BACKLOGS) -> None:
        """The bytes owed since the freeze, old relay -> candidate (`forward_backlog`);
        the report counts the connections covered and, when the freeze held every
        client for the first BACKLOG, how long after the resume it came."""
        assert run.cand is not None
        marks = run.marks.handoff
        first = run.old.link.backlogs == 0
        try:
            covered = forward_backlog(run.old.link, run.cand.link, run.timeout(), rounds)
        except (SwapctlError, TimeoutError, OSError) as exc:
            raise blame(run, "backlog", exc) from None
        marks["backlog_connections"] = marks.get("backlog_connections", 0) + covered
        if first and marks.get("delta_held_all") and run.marks.resumed_ns:
            marks["held_after_resume_ms"] = round(
                (time.monotonic_ns() - run.marks.resumed_ns) / 1e6, 3)

    def _release_into_candidate(self, run: SwapRun, generation: int | None) -> Transfer:
        """The pause: RELEASE the old relay into the candidate, which starts reading."""
        assert run.cand is not None
        resume = run.cand.link.adopt_resume  # one round trip fewer inside the pause
        run.marks.cand_may_read = resume
        try:
            delta = hand_over(run.old.link, run.cand.link, run.settings.flush_ms, run.timeout,
                              lambda transfer: _released(run, transfer), precopy=generation,
                              resume=resume)
            run.marks.adopted_ns = int(delta.meta.get("resumed_ns") or time.monotonic_ns())
        except HandOverFailed as exc:
            if exc.side == "old":  # (the candidate resumes only once it has every part)
                run.marks.cand_may_read = False
                raise Failure(f"old relay {run.old.release.name} did not release: "
                              f"{exc.cause}") from None
            raise blame(run, "adopt", exc.cause) from None
        try:
            if resume:
                run.marks.resumed_ns = run.marks.adopted_ns
            else:
                run.marks.cand_may_read = True
                run.marks.resumed_ns = run.cand.link.resume(run.timeout())
        except (SwapctlError, TimeoutError, OSError) as exc:
            raise blame(run, "resume", exc) from None
        return delta

    def _pre_copy(self, run: SwapRun, old: RelayLink, new: RelayLink) -> Transfer | None:
        """Every fd to `new` ahead of the freeze (None: a relay does not offer it)."""
        if not (self.precopy and old.precopy and new.precopy):
            return None
        start = time.monotonic_ns()
        try:
            base = pre_copy(old, new, run.timeout)
        except HandOverFailed as exc:
            run.service.held.append(exc.transfer)  # (closed with the rest of the copies)
            if exc.side == "old":
                raise Failure(f"relay {old.token} did not pre-copy: {exc.cause}") from None
            raise blame(run, "pre-adopt", exc.cause) from None
        run.service.held.append(base)
        run.marks.handoff.update(precopy_ms=round((time.monotonic_ns() - start) / 1e6, 3),
                                 precopied=len(base.conns))
        return base

    def _let_old_go(self, run: SwapRun) -> None:
        assert run.cand is not None
        try:
            run.old.link.close_held(run.timeout())
            run.service.warm = run.old
        except (SwapctlError, TimeoutError, OSError):
            run.service.warm = None  # the old release is gone: a rollback would be cold
        run.service.active = run.cand

    def _verify(self, run: SwapRun) -> None:
        pause = run.server_pause_ms or 0.0
        if pause > run.settings.pause_budget_ms:
            raise Failure(f"pause budget exceeded: {pause:.1f} ms > "
                          f"{run.settings.pause_budget_ms} ms")
        run.marks.errors = error_counts(run)
        run.verify_canary(lambda: alive_or_fail(run, "verification"))

    def soak_check(self, run: SwapRun) -> None:
        alive_or_fail(run, "soak")
        now = error_counts(run)
        grown = {k: v - run.marks.errors.get(k, 0) for k, v in now.items()
                 if v > run.marks.errors.get(k, 0)}
        if grown:
            listed = ", ".join(f"{k} +{v}" for k, v in grown.items())
            raise Failure(f"relay error counters grew on {run.release.name}: {listed}")

    def _commit(self, run: SwapRun) -> None:
        if not run.settings.keep_old:
            warm, run.service.warm = run.service.warm, None
            if warm is not None:
                warm.stop()
        run.service.drop_held()

    # ----- rollback --------------------------------------------------------------

    def roll_back(self, run: SwapRun) -> str:
        if run.where is Where.OLD:  # (a recovery says how the old release got them back)
            kind = run.marks.rollback_kind or "not needed (no client moved)"
        elif run.where is Where.RELEASED:
            self._silence_candidate(run)
            run.old.link.resume(run.timeout())
            kind = "resume (candidate never confirmed)"
        else:
            kind = self._hand_back(run)
        run.service.active = run.old
        if run.service.warm is run.old:
            run.service.warm = None
        return kind

    def _silence_candidate(self, run: SwapRun) -> None:
        """A candidate told to start reading (RESUME, or an ADOPT with resume) that did
        not confirm may be reading the clients' sockets: it is killed before the old
        relay reads them again, so no two relays read the same stream at once."""
        cand = run.cand
        if cand is None or not run.marks.cand_may_read or not cand.alive():
            return
        cand.handle.kill()  # (returns once the process is gone: every handle's contract)
        run.evidence.notes.append(
            f"candidate {run.release.name} was told to start reading and did not confirm: "
            "it was killed before the old relay read again; what it may have read in "
            "between is lost, and only a checker (the canary) can say whether anything was")

    def after_rollback(self, run: SwapRun) -> None:
        self._stop_candidate(run)
        run.service.drop_held()

    def _hand_back(self, run: SwapRun) -> str:
        """Clients are on the candidate: move them back to the old release."""
        target = run.service.warm
        if target is not None and not target.alive():
            target = None
        kind = "warm" if target is not None else "cold"
        cand = run.cand
        if target is None:
            target = self._start_old(run)
        run.old = target
        precopy = self.precopy and target.link.precopy
        if (cand is not None and cand.alive() and precopy and cand.link.precopy
                and self._hand_back_precopy(run, target)):
            return f"{kind} handoff"
        with pause_priority(run, "rollback_realtime", target, cand):
            transfer = self._release_candidate(run)
            target.link.adopt(transfer, run.timeout())
            target.link.resume(run.timeout())
        return f"{kind} handoff" + (
            "" if transfer.meta.get("from_candidate") else " from held sockets (candidate dead)")

    def _start_old(self, run: SwapRun) -> Slot:
        """A cold rollback starts the old release before any client moves. If it cannot
        start, a live candidate keeps serving every client (it is the active relay; the
        swap ends failed and says so): stopping it would leave the service with none."""
        try:
            return run.service.start_slot(run.old.release, run.clock() + run.timeout())
        except (SwapctlError, TimeoutError, OSError) as exc:
            cand = run.cand
            if cand is None or not cand.alive():
                raise
            run.marks.cand_kept = True
            run.service.active = cand
            raise SwapctlError(f"{run.old.release.name} could not be started ({exc}); no "
                               f"client moved: {cand.release.name} keeps serving them") from None

    def _hand_back_precopy(self, run: SwapRun, target: Slot) -> bool:
        """The swap's two steps in reverse: pre-copy candidate -> old release, then the
        freeze's delta; False (target cleared again) if the candidate failed first."""
        assert run.cand is not None
        cand = run.cand.link
        try:
            base = self._pre_copy(run, cand, target.link)
            assert base is not None
            run.transfer = Transfer(base.listener, [(ConnState(s.id), fd)
                                                    for s, fd in base.conns])
            with pause_priority(run, "rollback_realtime", target, run.cand):
                delta = hand_over(cand, target.link, run.settings.flush_ms, run.timeout,
                                  run.service.held.append,
                                  precopy=int(base.meta["generation"]),
                                  resume=target.link.adopt_resume)
                run.marks.cand_released = True
                resumed_ns = int(delta.meta.get("resumed_ns")
                                 or target.link.resume(run.timeout()))
                if holds_all(delta):  # as in the swap (_hand_over)
                    forward_backlog(cand, target.link, run.timeout(), rounds=1)
        except (Failure, HandOverFailed) as exc:
            if isinstance(exc, HandOverFailed):
                run.service.held.append(exc.transfer)
                if exc.side != "old":
                    raise
            target.link.close_held(run.timeout())  # let go of what it staged
            return False
        stopped_ns = int(delta.meta.get("stopped_reading_ns", 0))
        if stopped_ns:
            run.marks.handoff["rollback_pause_ms"] = round((resumed_ns - stopped_ns) / 1e6, 3)
        forward_backlog(cand, target.link, run.timeout())
        return True

    def _release_candidate(self, run: SwapRun) -> Transfer:
        assert run.cand is not None
        if run.cand.alive():
            try:
                transfer = run.cand.link.release(run.settings.flush_ms, min(run.timeout(), 2))
                transfer.meta["from_candidate"] = True
                run.marks.cand_released = True
                run.service.held.append(transfer)
                return transfer
            except (SwapctlError, TimeoutError, OSError):
                run.cand.handle.kill()
        held = run.transfer
        if held is None:
            raise Failure("no sockets to hand back")
        return Transfer(held.listener, [(ConnState(state.id), fd) for state, fd in held.conns])

    def _stop_candidate(self, run: SwapRun) -> None:
        cand = run.cand
        if run.marks.cand_kept:  # the rollback could not start the old release
            return
        if cand is not None and run.settings.keep_old and run.marks.cand_released:
            try:
                cand.link.close_held(2.0)
                run.service.warm = cand  # handed back cleanly: keep it warm
                return
            except (SwapctlError, TimeoutError, OSError):
                pass
        if cand is not None:
            cand.stop(2.0)
            if run.service.active is cand:
                run.service.active = None


@contextlib.contextmanager
def pause_priority(run: SwapRun, key: str, adopter: Slot | None,
                   releasing: Slot | None = None) -> Iterator[None]:
    """Swapctl's thread and the adopting relay run real-time through the pause
    (swap/priority.py); the report says how, in `handoff[key]`. A service with
    pause_priority 0 changes nothing.

    Of the releasing relay, only a thread named `swapctl-handoff` is raised: a relay's
    own control thread, which serves no client and does nothing but the freeze (the
    Rust crate's; docs/handoff-protocol.md section 12). The rest of it is left alone: it
    reads RELEASE when its own loop comes to it, and raised while it still serves (the
    Python relay under load: up to 150 ms) it kept its clients from the CPU, so the
    canary saw gaps of 65-117 ms where 13 was usual. (The Rust crate's control thread
    lends its priority to its own workers while it freezes, and only then: sched.rs.)

    Nor does swapctl run a cyclic garbage collection inside it (swapctl/gcquiet.py).
    When the freeze holds every client for the first BACKLOG (`holds_all`), that BACKLOG
    is forwarded inside it too."""
    pids = [adopter.link.pid] if adopter is not None and adopter.alive() else []
    old = [releasing.link.pid] if releasing is not None and releasing.alive() else []
    boosted = boost(pids, run.settings.pause_priority, named=(old, CONTROL_THREAD))
    try:
        with no_gc():  # swapctl's own collections wait too (the relays': participant.py)
            yield
    finally:
        boosted.restore()
        if boosted.priority:
            run.marks.handoff[key] = boosted.summary()
        if boosted.denied:
            run.evidence.notes.append(f"the pause ran at the relays' own scheduling, not "
                                      f"SCHED_FIFO {boosted.priority}: {boosted.denied}")


def _released(run: SwapRun, transfer: Transfer) -> None:
    """The old relay described everything (inside the pause: bookkeeping only)."""
    run.marks.manifest_ns = int(transfer.meta.get("received_ns") or time.monotonic_ns())
    run.marks.released_ns = int(transfer.meta.get("released_ns", 0))
    run.transfer = transfer
    run.service.held.append(transfer)
    run.marks.stopped_ns = int(transfer.meta.get("stopped_reading_ns", 0))
    run.marks.handoff.update({k: transfer.meta.get(k) for k in
                              ("flushed_bytes", "unsent_bytes", "pending_bytes")})
    if transfer.table == DELTA_FORMAT:  # the pre-copied, less the closed, plus the new
        new = sum(fd >= 0 for _, fd in transfer.conns)
        run.marks.handoff.update(delta_new=new, delta_closed=len(transfer.closed),
                                 delta_from_tail=int(transfer.meta.get("from_tail") or 0),
                                 # defer-all: every client held for the BACKLOG (section 13)
                                 delta_held_all=transfer.meta.get("hold") == "staged")
        run.marks.moved = int(run.marks.handoff.get("precopied", 0)) - len(transfer.closed) + new
    else:
        run.marks.moved = len(transfer.conns)


def holds_all(delta: Transfer) -> bool:
    """The freeze left every client owed a fan-out's end to the first BACKLOG, and the
    candidate holds every staged client until it comes (`defer-all`,
    docs/handoff-protocol.md section 13): that wait is part of every client's pause, so
    the swap asks for it before it lowers the pause's priorities. After them, swapctl's
    thread waited behind the busy clients for its CPU before it asked: from the resume
    to the OWED request took 0.7-30 ms (1,000 clients under load) while every client
    waited. Only the first BACKLOG: the ring's end, at most 64 KiB a client (at 5,000
    clients under load up to 17 MB, 8 ms in the old relay); the DEFERRED clients' (a
    never-reader's 16 MiB) is written at normal priority, after."""
    return delta.meta.get("hold") == "staged"


def _merged(base: Transfer, delta: Transfer) -> Transfer:
    """The orchestrator's copies after a pre-copy swap: the pre-copied sockets but the
    ones closed since (their copies closed now, after the pause), plus the new ones."""
    closed = set(delta.closed)
    keep: list[tuple[ConnState, int]] = []
    for state, fd in base.conns:
        if state.id in closed:
            with contextlib.suppress(OSError):
                os.close(fd)
        else:
            keep.append((ConnState(state.id), fd))
    base.conns = keep  # (held: drop_held closes what is left)
    new = [(ConnState(state.id), fd) for state, fd in delta.conns if fd >= 0]
    return Transfer(base.listener, keep + new, delta.meta)


def blame(run: SwapRun, what: str, exc: BaseException) -> Failure:
    """Turn an error talking to the candidate into a reason an operator can act on."""
    if isinstance(exc, ChannelClosed) and run.cand is not None:
        _wait_exit(run.cand, 0.5)  # EOF on the channel comes just before the exit
    if run.cand is not None and not run.cand.alive():
        return Failure(f"candidate {run.release.name} crashed during {what} "
                       f"({run.cand.handle.describe_exit()})")
    if isinstance(exc, TimeoutError):
        return Failure(f"candidate {run.release.name} did not answer {what} in time")
    return Failure(f"{what} failed: {exc}")


def alive_or_fail(run: SwapRun, phase: str) -> None:
    assert run.cand is not None
    if not run.cand.alive():
        raise Failure(f"candidate {run.release.name} crashed during {phase} "
                      f"({run.cand.handle.describe_exit()})")


def error_counts(run: SwapRun) -> dict[str, int]:
    assert run.cand is not None
    try:
        stats = run.cand.link.stats(min(run.timeout(), 2.0))
    except (SwapctlError, TimeoutError, OSError) as exc:
        raise blame(run, "stats", exc) from None
    return {name: int(stats.get(name, 0)) for name in run.settings.error_counters}


def _wait_exit(slot: Slot, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while slot.alive() and time.monotonic() < deadline:
        time.sleep(0.002)
