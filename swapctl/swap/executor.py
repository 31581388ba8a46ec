"""Runs one swap against real processes, driven by the pure state machine.

Each phase is a method that either returns (and the run fires the next event) or
raises `Failure`; every blocking call is bounded by the current state's deadline.
Where the clients are decides how a rollback is done:
  OLD          nothing moved yet: stop the candidate;
  RELEASED     the old relay released but the candidate never confirmed: RESUME the
               old relay (it kept every socket and byte), stop the candidate;
  CANDIDATE    the candidate serves: hand everything back (RELEASE it, ADOPT+RESUME
               the old relay, warm or started cold); if the candidate is dead, give
               the old relay the orchestrator's own copies of the sockets instead.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from swapctl.errors import SwapctlError
from swapctl.handoff.controller import HandOverFailed, hand_over
from swapctl.handoff.manifest import ConnState, Transfer
from swapctl.handoff.messages import ChannelClosed
from swapctl.swap.canary import Canary, CanaryError, CanaryHealth
from swapctl.swap.journal import Journal
from swapctl.swap.machine import Deadlines, Event, State, SwapMachine
from swapctl.swap.probe import ProbeFailed, ProbeSettings, probe
from swapctl.swap.service import Service, Slot, SlotError
from swapctl.swap.spawner import Release

SOAK_CHECK_FLOOR = 0.5  # seconds a soak check may take once the window has closed
Requests = Callable[[], str | None]  # polled during soak: "rollback", "commit" or None


class Failure(SwapctlError):
    def __init__(self, reason: str, event: Event = Event.FAIL) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event = event


class Where(enum.Enum):
    OLD = "old"
    RELEASED = "released"
    CANDIDATE = "candidate"


@dataclass(frozen=True, slots=True)
class SwapSettings:
    deadlines: Deadlines = field(default_factory=Deadlines)
    flush_ms: float = 10.0
    pause_budget_ms: float = 250.0  # server-side pause above this rolls back
    verify_messages: int = 20  # canary messages that must arrive through the new relay
    error_counters: tuple[str, ...] = ("lag_drops_frames", "truncated", "rejected_checksum",
                                       "fault_dropped", "fault_corrupted")
    probe_echo: bool = True
    keep_old: bool = False  # after commit, keep the old release warm (next swap reuses it)


@dataclass(slots=True)
class Marks:
    """Timestamps and figures collected along the way (ns on CLOCK_MONOTONIC)."""

    stopped_ns: int = 0  # old relay stopped reading (its clock: CLOCK_MONOTONIC, system-wide)
    released_ns: int = 0  # old relay finished describing its connections
    manifest_ns: int = 0  # the orchestrator had every manifest part
    adopted_ns: int = 0  # the candidate confirmed it holds everything
    resumed_ns: int = 0  # the candidate started reading
    handoff: dict[str, Any] = field(default_factory=dict)
    probe_ms: float = 0.0
    connections_before: int = 0
    connections_after: int | None = None
    moved: int = 0
    rollback_kind: str = ""
    rollback_started: float = 0.0
    rollback_ms: float | None = None
    rollback_flowing_ms: float | None = None
    soak_health: list[str] = field(default_factory=list)
    canary_gap_ms: float | None = None
    reused: bool = False  # the candidate was the warm standby, not a new process
    cand_released: bool = False  # a rollback took everything back from a live candidate
    errors: dict[str, int] = field(default_factory=dict)


class SwapRun:
    def __init__(self, service: Service, candidate: Release, settings: SwapSettings, *,
                 canary: Canary | None = None, requests: Requests = lambda: None,
                 aborted: Callable[[], bool] = lambda: False,
                 journal: Journal | None = None, clock: Callable[[], float] = time.monotonic,
                 domain_byte: int = 1) -> None:
        assert service.active is not None, "the service has no active relay"
        self.service = service
        self.old: Slot = service.active
        self.release = candidate
        self.settings = settings
        self.canary = canary
        self.requests = requests
        self.journal = journal or Journal(None)
        self.swap_id = f"swap-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.machine = SwapMachine(settings.deadlines, clock,
                                   lambda t: self.journal.transition(self.swap_id, t))
        self.domain_byte = domain_byte
        self.cand: Slot | None = None
        self.where = Where.OLD
        self.transfer: Transfer | None = None
        self.marks = Marks()
        self.clock = clock
        self.baseline: dict[str, Any] | None = None  # canary snapshot when the swap began
        self.aborted = aborted  # checked between phases: an operator's abort

    # ----- the run ---------------------------------------------------------------

    def run(self) -> SwapRun:
        m = self.machine
        m.fire(Event.BEGIN, release=self.release.name, command=list(self.release.command),
               old_release=self.old.release.name, old_token=self.old.token,
               soak=self.settings.deadlines.soaking)
        try:
            self._begin()
            self._start_candidate()
            m.fire(Event.READY, pid=self.cand.handle.pid if self.cand else 0,
                   token=self.cand.token if self.cand else "", reused=self.marks.reused)
            self._check_abort()
            self._probe()
            m.fire(Event.PROBE_PASSED, probe_ms=round(self.marks.probe_ms, 3))
            self._check_abort()
            self._hand_over()  # fires RELEASED once the old relay handed everything over
            self._resume()
            m.fire(Event.ADOPTED, server_pause_ms=round(self.server_pause_ms or 0, 3))
            self._finish()
        except Failure as failure:
            m.fire(failure.event, failure.reason, where=self.where.value)
            self._rollback()
        except (SwapctlError, TimeoutError, OSError) as exc:  # anything else: still roll back
            m.fire(Event.FAIL, f"unexpected error: {exc}", where=self.where.value)
            self._rollback()
        return self._ended()

    def _finish(self) -> None:
        """From VERIFYING on: verify, soak, commit."""
        m = self.machine
        if m.state is State.VERIFYING:
            self._verify()
            m.fire(Event.VERIFIED)
        if m.state is State.SOAKING:
            self._soak()
        self._commit()
        m.fire(Event.COMMITTED)

    def _ended(self) -> SwapRun:
        try:
            self.marks.connections_after = self.service.connections()
        except (SwapctlError, TimeoutError, OSError):
            self.marks.connections_after = None
        return self

    def resume(self, swap_id: str, state: State, entered: float, *, cand: Slot | None,
               where: Where, why: str) -> SwapRun:
        """Finish a swap that a previous orchestrator left in `state` (recovery after it
        was killed). The caller has already made exactly one relay serve the clients:
        `where` says which (OLD: the old release, so the swap rolls back; CANDIDATE: the
        candidate, so it goes on from verification, or rolls back if it was rolling back).
        `self.old` is the old release's slot (warm, or None-like dead)."""
        m = self.machine
        self.swap_id, self.cand, self.where = swap_id, cand, where
        # the soak window runs on from when it began; any other phase gets its whole
        # deadline again (the restart itself took part of it)
        m.restore(state, entered if state is State.SOAKING else self.clock())
        self.journal.write({"swap": swap_id, "at": round(self.clock(), 6), "event": "recovered",
                            "state": state.value, "where": where.value, "reason": why})
        try:
            if state is State.ROLLING_BACK:
                self._rollback()
                return self._ended()
            if where is Where.OLD:
                raise Failure(why)
            for event in _FORWARD.get(state, ()):
                m.fire(event, "recovered")
            if m.state in (State.VERIFYING, State.SOAKING):
                self._begin()
            self._finish()
        except Failure as failure:
            if not m.state.terminal and m.state is not State.ROLLING_BACK:
                m.fire(failure.event, failure.reason, where=self.where.value)
            self._rollback()
        except (SwapctlError, TimeoutError, OSError) as exc:
            if m.state is not State.ROLLING_BACK:
                m.fire(Event.FAIL, f"unexpected error: {exc}", where=self.where.value)
            self._rollback()
        return self._ended()

    def _check_abort(self) -> None:
        """An operator's abort between phases, before any client moves (`requests`, a
        consuming inbox, is polled only during the soak)."""
        if self.aborted():
            raise Failure("operator aborted the swap", Event.ROLLBACK)

    @property
    def pause_stages_ms(self) -> dict[str, float] | None:
        """Where the server-side pause went: export (old relay describes its connections),
        transfer (to the orchestrator, forwarded part by part), adopt (the candidate
        finishes registering), resume (the candidate starts reading)."""
        m = self.marks
        stamps = (m.stopped_ns, m.released_ns, m.manifest_ns, m.adopted_ns, m.resumed_ns)
        if not all(stamps):
            return None
        names = ("export", "transfer", "adopt", "resume")
        return {name: round((b - a) / 1e6, 3)
                for name, a, b in zip(names, stamps, stamps[1:], strict=False)}

    @property
    def server_pause_ms(self) -> float | None:
        if not (self.marks.stopped_ns and self.marks.resumed_ns):
            return None
        return (self.marks.resumed_ns - self.marks.stopped_ns) / 1e6

    def _timeout(self) -> float:
        remaining = self.machine.remaining()
        if remaining <= 0 and self.machine.state is State.SOAKING:
            return SOAK_CHECK_FLOOR  # the window closed during a check: tick() ends the soak
        if remaining <= 0:
            seconds = self.settings.deadlines.for_state(self.machine.state)
            raise Failure(f"deadline: {self.machine.state.value} took longer than {seconds}s")
        return remaining

    def _blame(self, what: str, exc: BaseException) -> Failure:
        """Turn an error talking to the candidate into a reason an operator can act on."""
        if isinstance(exc, ChannelClosed) and self.cand is not None:
            _wait_exit(self.cand, 0.5)  # EOF on the channel comes just before the exit
        if self.cand is not None and not self.cand.alive():
            return Failure(f"candidate {self.release.name} crashed during {what} "
                           f"({self.cand.handle.describe_exit()})")
        if isinstance(exc, TimeoutError):
            return Failure(f"candidate {self.release.name} did not answer {what} in time")
        return Failure(f"{what} failed: {exc}")

    # ----- phases ----------------------------------------------------------------

    def _begin(self) -> None:
        self.marks.connections_before = self.service.connections()
        if self.canary is not None:
            try:
                self.canary.mark()
                self.baseline = self.canary.snapshot()
            except CanaryError as exc:
                raise Failure(f"canary failed before the swap: {exc}") from None

    def _start_candidate(self) -> None:
        warm = self.service.warm
        if warm is not None and warm.release == self.release and warm.alive():
            self.cand, self.service.warm = warm, None  # already running, in standby
            self.marks.reused = True
            return
        deadline = self.clock() + self._timeout()
        try:
            self.cand = self.service.start_slot(self.release, deadline)
        except SlotError as exc:
            raise Failure(f"candidate not ready: {exc}") from None

    def _probe(self) -> None:
        assert self.cand is not None
        settings = ProbeSettings(self.domain_byte, self.settings.probe_echo, self._timeout())
        try:
            self.marks.probe_ms = probe(self.cand.link, settings)
        except ProbeFailed as exc:
            raise Failure(f"probe failed: {exc}") from None
        except (SwapctlError, TimeoutError, OSError) as exc:
            raise self._blame("the probe", exc) from None

    def _hand_over(self) -> None:
        """RELEASE the old relay; each manifest part goes on to the candidate as it
        arrives (pipelined); the candidate registers it without reading."""
        assert self.cand is not None
        if self.canary is not None:
            self._mark_cutover()
        self.where = Where.RELEASED  # from the release request on, the old relay may be paused
        try:
            hand_over(self.old.link, self.cand.link, self.settings.flush_ms, self._timeout,
                      self._released)
            self.marks.adopted_ns = time.monotonic_ns()
        except HandOverFailed as exc:
            if exc.side == "old":
                raise Failure(f"old relay {self.old.release.name} did not release: "
                              f"{exc.cause}") from None
            raise self._blame("adopt", exc.cause) from None

    def _released(self, transfer: Transfer) -> None:
        self.marks.manifest_ns = time.monotonic_ns()
        self.marks.released_ns = int(transfer.meta.get("released_ns", 0))
        self.transfer = transfer
        self.service.held.append(transfer)
        self.marks.stopped_ns = int(transfer.meta.get("stopped_reading_ns", 0))
        self.marks.handoff = {k: transfer.meta.get(k) for k in
                              ("flushed_bytes", "unsent_bytes", "pending_bytes")}
        self.marks.moved = len(transfer.conns)
        self.machine.fire(Event.RELEASED, connections=self.marks.moved)

    def _resume(self) -> None:
        assert self.cand is not None
        try:
            self.marks.resumed_ns = self.cand.link.resume(self._timeout())
        except (SwapctlError, TimeoutError, OSError) as exc:
            raise self._blame("resume", exc) from None
        self.where = Where.CANDIDATE
        try:
            self.old.link.close_held(self._timeout())
            self.service.warm = self.old
        except (SwapctlError, TimeoutError, OSError):
            self.service.warm = None  # the old release is gone: a rollback would be cold
        self.service.active = self.cand

    def _verify(self) -> None:
        pause = self.server_pause_ms or 0.0
        if pause > self.settings.pause_budget_ms:
            raise Failure(f"pause budget exceeded: {pause:.1f} ms > "
                          f"{self.settings.pause_budget_ms} ms")
        self.marks.errors = self._error_counts()
        if self.canary is None:
            return
        start = self._canary(record_gap=True).arrivals
        while True:
            health = self._canary(record_gap=True)
            if health.arrivals >= start + self.settings.verify_messages:
                return
            self._timeout()
            self._alive_or_fail("verification")
            time.sleep(0.002)

    def _mark_cutover(self) -> None:
        """Restart the canary's gap window just before clients stop being served, so
        the client-side pause is measured around the cutover, not the whole swap."""
        assert self.canary is not None
        try:
            self.canary.mark()
        except CanaryError as exc:
            raise Failure(f"canary failed: {exc}") from None

    def _canary(self, record_gap: bool = False) -> CanaryHealth:
        assert self.canary is not None
        try:
            health = self.canary.health(self.baseline)
        except CanaryError as exc:
            raise Failure(f"canary failed: {exc}") from None
        if record_gap:  # the cutover window: from just before release to verified
            self.marks.canary_gap_ms = max(self.marks.canary_gap_ms or 0.0, health.max_gap_ms)
        if not health.ok:
            raise Failure("; ".join(health.problems))
        return health

    def _alive_or_fail(self, phase: str) -> None:
        assert self.cand is not None
        if not self.cand.alive():
            raise Failure(f"candidate {self.release.name} crashed during {phase} "
                          f"({self.cand.handle.describe_exit()})")

    def _error_counts(self) -> dict[str, int]:
        assert self.cand is not None
        try:
            stats = self.cand.link.stats(min(self._timeout(), 2.0))
        except (SwapctlError, TimeoutError, OSError) as exc:
            raise self._blame("stats", exc) from None
        return {name: int(stats.get(name, 0)) for name in self.settings.error_counters}

    def _soak(self) -> None:
        """Watch the candidate until the soak window ends (tick fires soak_done) or the
        operator commits early."""
        m = self.machine
        next_check = 0.0
        while m.tick() is State.SOAKING:
            request = "abort" if self.aborted() else self.requests()
            if request in ("rollback", "abort"):
                raise Failure("operator asked for a rollback", Event.ROLLBACK)
            if request == "commit":
                m.fire(Event.COMMIT, "operator committed early")
                return
            self._alive_or_fail("soak")
            if self.clock() >= next_check:
                next_check = self.clock() + 0.1
                if self.canary is not None:
                    self._canary()
                self._check_errors()
            time.sleep(min(0.01, m.remaining()))

    def _check_errors(self) -> None:
        now = self._error_counts()
        grown = {k: v - self.marks.errors.get(k, 0) for k, v in now.items()
                 if v > self.marks.errors.get(k, 0)}
        if grown:
            listed = ", ".join(f"{k} +{v}" for k, v in grown.items())
            raise Failure(f"relay error counters grew on {self.release.name}: {listed}")

    def _commit(self) -> None:
        if not self.settings.keep_old:
            warm, self.service.warm = self.service.warm, None
            if warm is not None:
                warm.stop()
        self.service.drop_held()

    # ----- rollback --------------------------------------------------------------

    def _rollback(self) -> None:
        m = self.machine
        self.marks.rollback_started = self.clock()
        try:
            if self.where is Where.OLD:  # (a recovery says how the old release got them back)
                self.marks.rollback_kind = (self.marks.rollback_kind
                                            or "not needed (no client moved)")
            elif self.where is Where.RELEASED:
                self.old.link.resume(self._timeout())
                self.marks.rollback_kind = "resume (candidate never confirmed)"
            else:
                self._hand_back()
            self.marks.rollback_ms = (self.clock() - self.marks.rollback_started) * 1000
            self._confirm_flowing()
            self._stop_candidate()
        except (SwapctlError, TimeoutError, OSError) as exc:
            self._stop_candidate()
            self.service.drop_held()
            m.fire(Event.ROLLBACK_FAILED, f"rollback failed: {exc}")
            return
        self.service.drop_held()
        self.service.active = self.old
        if self.service.warm is self.old:
            self.service.warm = None
        m.fire(Event.ROLLED_BACK, rollback_ms=round(self.marks.rollback_ms or 0, 3),
               kind=self.marks.rollback_kind)

    def _hand_back(self) -> None:
        """Clients are on the candidate: move them back to the old release."""
        target = self.service.warm
        if target is not None and not target.alive():
            target = None
        transfer = self._release_candidate()
        kind = "warm" if target is not None else "cold"
        if target is None:
            target = self.service.start_slot(self.old.release, self.clock() + self._timeout())
        self.old = target
        target.link.adopt(transfer, self._timeout())
        target.link.resume(self._timeout())
        self.marks.rollback_kind = f"{kind} handoff" + (
            "" if transfer.meta.get("from_candidate") else " from held sockets (candidate dead)")

    def _release_candidate(self) -> Transfer:
        assert self.cand is not None
        if self.cand.alive():
            try:
                transfer = self.cand.link.release(self.settings.flush_ms, min(self._timeout(), 2))
                transfer.meta["from_candidate"] = True
                self.marks.cand_released = True
                self.service.held.append(transfer)
                return transfer
            except (SwapctlError, TimeoutError, OSError):
                self.cand.handle.kill()
        held = self.transfer
        if held is None:
            raise Failure("no sockets to hand back")
        return Transfer(held.listener, [(ConnState(state.id), fd) for state, fd in held.conns])

    def _stop_candidate(self) -> None:
        if self.cand is not None and self.settings.keep_old and self.marks.cand_released:
            try:
                self.cand.link.close_held(2.0)
                self.service.warm = self.cand  # handed back cleanly: keep it warm
                return
            except (SwapctlError, TimeoutError, OSError):
                pass
        if self.cand is not None:
            self.cand.stop(2.0)
            if self.service.active is self.cand:
                self.service.active = None

    def _confirm_flowing(self) -> None:
        """Rollback time as a client sees it: until canary traffic arrives again."""
        if self.canary is None or self.where is Where.OLD:
            return
        try:
            start = self.canary.health().arrivals
            deadline = self.clock() + 5
            while self.clock() < deadline:
                if self.canary.health().arrivals > start:
                    self.marks.rollback_flowing_ms = (
                        self.clock() - self.marks.rollback_started) * 1000
                    return
                time.sleep(0.001)
        except CanaryError:
            return  # the canary's own failure is reported with its final audit


# Recovery with the clients on the candidate: the events that take each state to VERIFYING.
_FORWARD: dict[State, tuple[Event, ...]] = {
    State.STARTING: (Event.READY, Event.PROBE_PASSED, Event.RELEASED, Event.ADOPTED),
    State.PROBING: (Event.PROBE_PASSED, Event.RELEASED, Event.ADOPTED),
    State.RELEASING: (Event.RELEASED, Event.ADOPTED),
    State.ADOPTING: (Event.ADOPTED,),
}


def _wait_exit(slot: Slot, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while slot.alive() and time.monotonic() < deadline:
        time.sleep(0.002)
