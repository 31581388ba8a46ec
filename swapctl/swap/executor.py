"""The one swap engine: runs any strategy's path (swap/machine.py) against real processes.

A strategy is an `Actions` object: one method per phase of its path (`act`), what a
soak checks (`soak_check`), how the clients go back (`roll_back`) and what to stop
after a rollback (`after_rollback`). The engine walks the path of the machine: before a
phase that can still be rolled back it honours an operator's abort; it runs the phase
(every blocking call bounded by the state's deadline, `timeout()`), then fires the
phase's event with the details the action returned (journaled by the machine). A
phase raises `Failure`; the engine fires fail (or rollback) and, inside the strategy's
rollback window, rolls back; past it the swap ends failed (operator action needed).
Soaking is the engine's own loop: operator requests, the strategy's checks, the window.

Where the clients are (`Where`) is the engine's to know and the recovery's to read:
  OLD        nothing moved yet: the old relay serves;
  RELEASED   the old relay let go but the candidate never confirmed;
  CANDIDATE  the candidate serves.
The report (swap/report.py) and the exit code (swap/evidence.py) are built from the
run: its machine history, its marks, the strategy's `Evidence` and the canary.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from swapctl.errors import SwapctlError
from swapctl.handoff.manifest import Transfer
from swapctl.swap.canary import Canary, CanaryError, CanaryHealth
from swapctl.swap.evidence import Evidence
from swapctl.swap.journal import Journal
from swapctl.swap.machine import PATHS, Deadlines, Event, State, SwapMachine
from swapctl.swap.service import Service, Slot
from swapctl.swap.spawner import Release

SOAK_CHECK_FLOOR = 2.0  # seconds a soak check may take, however little is left of the window
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
    reconnect_window_s: float = 2.0  # after clients are cut: how long to wait for them
    pause_priority: int = 10  # SCHED_FIFO of both relays during the pause (0: left alone)


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
    connections_before: int | None = 0
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
    cand_kept: bool = False  # a rollback could not start the old release: the candidate serves
    cand_may_read: bool = False  # the candidate was told to start reading (RESUME, adopt-resume)
    errors: dict[str, int] = field(default_factory=dict)
    stages: dict[str, float] | None = None  # where the pause went (strategy's own stages)


class Actions(Protocol):
    """One strategy's phase actions (see the module doc)."""

    strategy: str
    could_not_guarantee: str

    def begin(self, run: SwapRun) -> dict[str, Any]: ...

    def connections(self, run: SwapRun) -> int | None: ...

    def act(self, run: SwapRun, state: State) -> dict[str, Any]: ...

    def soak_check(self, run: SwapRun) -> None: ...

    def roll_back(self, run: SwapRun) -> str: ...

    def after_rollback(self, run: SwapRun) -> None: ...


class SwapRun:
    """One swap of any strategy: `actions` is the strategy (HandoffActions() for a handoff,
    legacy/actions.py for the others)."""

    def __init__(self, service: Service, candidate: Release, settings: SwapSettings, *,
                 canary: Canary | None = None, requests: Requests = lambda: None,
                 aborted: Callable[[], bool] = lambda: False,
                 journal: Journal | None = None, clock: Callable[[], float] = time.monotonic,
                 domain_byte: int = 1, actions: Actions) -> None:
        assert service.active is not None, "the service has no active relay"
        self.actions = actions
        self.strategy = actions.strategy
        self.service = service
        self.old: Slot = service.active
        self.release = candidate
        self.settings = settings
        self.canary = canary
        self.canary_final: dict[str, Any] | None = None  # a strategy stopped it early
        self.requests = requests
        self.journal = journal or Journal(None)
        self.swap_id = f"swap-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.machine = SwapMachine(settings.deadlines, clock,
                                   lambda t: self.journal.transition(self.swap_id, t),
                                   strategy=self.strategy)
        self.domain_byte = domain_byte
        self.cand: Slot | None = None
        self.where = Where.OLD
        self.transfer: Transfer | None = None
        self.marks = Marks()
        self.evidence = Evidence()
        self.details: dict[str, Any] = {}  # strategy-specific figures for the report
        self.clock = clock
        self.baseline: dict[str, Any] | None = None  # canary snapshot when the swap began
        self.aborted = aborted  # checked between phases: an operator's abort

    # ----- the run ---------------------------------------------------------------

    def begin(self) -> None:
        """Journal the swap's start (BEGIN), once. swapctld calls it before it answers
        the request with the swap's id, so a swapctld killed right after answering
        leaves a swap that recovery finds and reports, never an id with no trace."""
        if self.machine.state is State.IDLE:
            self.machine.fire(Event.BEGIN, **self.actions.begin(self))

    def run(self) -> SwapRun:
        self.begin()
        try:
            self._begin()
            self._walk()
        except Failure as failure:
            self._fail(failure)
        except (SwapctlError, TimeoutError, OSError) as exc:  # anything else: still roll back
            self._fail(Failure(f"unexpected error: {exc}"))
        return self._ended()

    def _walk(self) -> None:
        """Every remaining phase of the strategy's path, in order."""
        m = self.machine
        for state, event in PATHS[self.strategy]:
            if m.state is not state:
                continue  # (a recovered swap starts part way; an early commit skips soak)
            if state is State.SOAKING:
                self._soak()
                continue
            if m.can(Event.ROLLBACK):
                self.check_abort()
            details = self.actions.act(self, state)
            m.fire(event, **details)

    def _fail(self, failure: Failure) -> None:
        m = self.machine
        if m.state.terminal:
            return
        if m.state is not State.ROLLING_BACK:
            event = failure.event if m.can(failure.event) else Event.FAIL
            m.fire(event, failure.reason, where=self.where.value)
        if m.state is State.ROLLING_BACK:
            self._rollback()

    def _ended(self) -> SwapRun:
        try:
            self.marks.connections_after = self.actions.connections(self)
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
            self._walk()
        except Failure as failure:
            self._fail(failure)
        except (SwapctlError, TimeoutError, OSError) as exc:
            self._fail(Failure(f"unexpected error: {exc}"))
        return self._ended()

    def check_abort(self) -> None:
        """An operator's abort between phases (`requests`, a consuming inbox, is polled
        only during the soak and by phases that wait, such as a bridge's drain)."""
        if self.aborted():
            raise Failure("operator aborted the swap", Event.ROLLBACK)

    @property
    def pause_stages_ms(self) -> dict[str, float] | None:
        """Where the server-side pause went: export (old relay describes its connections),
        transfer (to the orchestrator, forwarded part by part), adopt (the candidate
        finishes registering), resume (the candidate starts reading; 0 with the
        adopt-resume extension, where it starts at the end of its adopt)."""
        if self.marks.stages is not None:
            return self.marks.stages
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

    def timeout(self) -> float:
        """What is left of the current state's deadline (a Failure once it is gone). A
        soak check gets at least SOAK_CHECK_FLOOR: the window's end is tick()'s to act on,
        and a check begun 10 ms before it must not fail for want of time (3 plain swaps of
        the 60-minute soak rolled back so: "did not answer stats in time")."""
        remaining = self.machine.remaining()
        if self.machine.state is State.SOAKING:
            return max(remaining, SOAK_CHECK_FLOOR)
        if remaining <= 0:
            seconds = self.settings.deadlines.for_state(self.machine.state)
            raise Failure(f"deadline: {self.machine.state.value} took longer than {seconds}s")
        return remaining

    # ----- the canary --------------------------------------------------------------

    def _begin(self) -> None:
        self.marks.connections_before = self.actions.connections(self)
        if self.canary is not None:
            try:
                self.canary.mark()
                self.baseline = self.canary.snapshot()
            except CanaryError as exc:
                raise Failure(f"canary failed before the swap: {exc}") from None

    def mark_cutover(self) -> None:
        """Restart the canary's gap window just before clients stop being served, so
        the client-side pause is measured around the cutover, not the whole swap."""
        if self.canary is None or self.canary_final is not None:
            return
        try:
            self.canary.mark()
        except CanaryError as exc:
            raise Failure(f"canary failed: {exc}") from None

    def canary_health(self, record_gap: bool = False) -> CanaryHealth:
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

    def verify_canary(self, alive: Callable[[], None] | None = None) -> None:
        """Until `verify_messages` more canary messages arrived through the candidate."""
        if self.canary is None or self.canary_final is not None:
            return
        start = self.canary_health(record_gap=True).arrivals
        while self.canary_health(record_gap=True).arrivals < start + \
                self.settings.verify_messages:
            self.timeout()
            if alive is not None:
                alive()
            time.sleep(0.002)

    def stop_canary(self) -> None:
        """Take the canary's final audit now (before a strategy cuts its clients)."""
        if self.canary is None or self.canary_final is not None:
            return
        try:
            self.marks.canary_gap_ms = max(self.marks.canary_gap_ms or 0.0,
                                           self.canary.health().max_gap_ms)
            self.canary_final = self.canary.stop()
        except CanaryError as exc:
            self.details["canary_error"] = str(exc)

    def poll_request(self) -> str | None:
        """An operator's request, for phases that wait (soak, a bridge's drain)."""
        return "abort" if self.aborted() else self.requests()

    # ----- soak and rollback -------------------------------------------------------

    def _soak(self) -> None:
        """Watch the candidate until the soak window ends (tick fires soak_done) or the
        operator commits early."""
        m = self.machine
        next_check = 0.0
        while m.tick() is State.SOAKING:
            request = self.poll_request()
            if request in ("rollback", "abort"):
                raise Failure("operator asked for a rollback", Event.ROLLBACK)
            if request == "commit":
                m.fire(Event.COMMIT, "operator committed early")
                return
            if self.clock() >= next_check:
                next_check = self.clock() + 0.1
                if self.canary is not None and self.canary_final is None:
                    self.canary_health()
                self.actions.soak_check(self)
            time.sleep(min(0.01, m.remaining()))

    def _rollback(self) -> None:
        m = self.machine
        self.marks.rollback_started = self.clock()
        try:
            self.marks.rollback_kind = self.actions.roll_back(self)
            self.marks.rollback_ms = (self.clock() - self.marks.rollback_started) * 1000
            self._confirm_flowing()
            self.actions.after_rollback(self)
        except (SwapctlError, TimeoutError, OSError) as exc:
            self.actions.after_rollback(self)
            m.fire(Event.ROLLBACK_FAILED, f"rollback failed: {exc}")
            return
        m.fire(Event.ROLLED_BACK, rollback_ms=round(self.marks.rollback_ms or 0, 3),
               kind=self.marks.rollback_kind)

    def _confirm_flowing(self) -> None:
        """Rollback time as a client sees it: until canary traffic arrives again."""
        if self.canary is None or self.canary_final is not None or self.where is Where.OLD:
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
