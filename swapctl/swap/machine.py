"""The life of one swap, as data: states, events, one transition table, deadlines.

    IDLE -begin-> STARTING -ready-> PROBING -probe_passed-> RELEASING -released->
    ADOPTING -adopted-> VERIFYING -verified-> SOAKING -soak_done|commit-> COMMITTING
    -committed-> COMMITTED
    any active state -fail|rollback-> ROLLING_BACK -rolled_back-> ROLLED_BACK
                                                   -rollback_failed-> FAILED

Every state but the terminal ones has a deadline (from `Deadlines`) measured on an
injected clock; `tick()` turns an expired deadline into an event: SOAKING's deadline
is the end of the soak window (soak_done); any other is a failure. An illegal
transition raises. Every transition is handed to the journal sink. No I/O here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class State(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"  # candidate spawned; waiting for it to say ready
    PROBING = "probing"  # probe connections through the candidate, no client moved yet
    RELEASING = "releasing"  # the active relay stops reading and hands over its fds
    ADOPTING = "adopting"  # the candidate registers them and resumes reading
    VERIFYING = "verifying"  # canary traffic, counters and connections checked
    SOAKING = "soaking"  # the old release kept warm in standby
    COMMITTING = "committing"  # the old release stopped
    COMMITTED = "committed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"  # rollback itself failed: operator action needed

    @property
    def terminal(self) -> bool:
        return self in (State.COMMITTED, State.ROLLED_BACK, State.FAILED)


class Event(enum.Enum):
    BEGIN = "begin"
    READY = "ready"
    PROBE_PASSED = "probe_passed"
    RELEASED = "released"
    ADOPTED = "adopted"
    VERIFIED = "verified"
    SOAK_DONE = "soak_done"
    COMMIT = "commit"  # operator commits before the soak window ends
    COMMITTED = "committed"
    FAIL = "fail"  # an automatic check failed; the reason says which
    ROLLBACK = "rollback"  # the operator asked for a rollback
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


S, E = State, Event
_ACTIVE = (S.STARTING, S.PROBING, S.RELEASING, S.ADOPTING, S.VERIFYING, S.SOAKING)
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.IDLE, E.BEGIN): S.STARTING,
    (S.STARTING, E.READY): S.PROBING,
    (S.PROBING, E.PROBE_PASSED): S.RELEASING,
    (S.RELEASING, E.RELEASED): S.ADOPTING,
    (S.ADOPTING, E.ADOPTED): S.VERIFYING,
    (S.VERIFYING, E.VERIFIED): S.SOAKING,
    (S.SOAKING, E.SOAK_DONE): S.COMMITTING,
    (S.SOAKING, E.COMMIT): S.COMMITTING,
    (S.COMMITTING, E.COMMITTED): S.COMMITTED,
    (S.ROLLING_BACK, E.ROLLED_BACK): S.ROLLED_BACK,
    (S.ROLLING_BACK, E.ROLLBACK_FAILED): S.FAILED,
    **{(state, E.FAIL): S.ROLLING_BACK for state in (*_ACTIVE, S.COMMITTING)},
    **{(state, E.ROLLBACK): S.ROLLING_BACK for state in _ACTIVE},
}


class IllegalTransition(Exception):
    """A bug in the executor: an event that cannot happen in the current state."""


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Seconds allowed in each state (SOAKING's is the soak window itself)."""

    starting: float = 10.0
    probing: float = 2.0
    releasing: float = 2.0
    adopting: float = 2.0
    verifying: float = 5.0
    soaking: float = 5.0
    committing: float = 10.0
    rolling_back: float = 30.0

    def for_state(self, state: State) -> float | None:
        value = getattr(self, state.value, None)
        return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Transition:
    at: float
    source: State
    event: Event
    target: State
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class SwapMachine:
    def __init__(self, deadlines: Deadlines, clock: Callable[[], float],
                 journal: Callable[[Transition], None] = lambda _: None) -> None:
        self.deadlines = deadlines
        self.clock = clock
        self.journal = journal
        self.state = State.IDLE
        self.entered = clock()
        self.history: list[Transition] = []
        self.reason = ""

    def fire(self, event: Event, reason: str = "", **details: Any) -> State:
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            raise IllegalTransition(f"{event.value} is not allowed in state {self.state.value}")
        now = self.clock()
        step = Transition(now, self.state, event, target, reason, details)
        self.history.append(step)
        if event in (Event.FAIL, Event.ROLLBACK, Event.ROLLBACK_FAILED):
            self.reason = reason
        self.state, self.entered = target, now
        self.journal(step)
        return target

    def restore(self, state: State, entered: float, reason: str = "") -> None:
        """Continue a swap another orchestrator left in `state` (entered at `entered`,
        clock time, e.g. from its journal). Not a transition: nothing is journaled."""
        self.state, self.entered = state, entered
        self.reason = reason

    def deadline(self) -> float | None:
        """When the current state expires (clock time), or None if it never does."""
        seconds = self.deadlines.for_state(self.state)
        return None if seconds is None or self.state.terminal else self.entered + seconds

    def remaining(self) -> float:
        deadline = self.deadline()
        return float("inf") if deadline is None else max(0.0, deadline - self.clock())

    def tick(self) -> State:
        """Fire the event an expired deadline implies, if any."""
        deadline = self.deadline()
        if deadline is None or self.clock() < deadline:
            return self.state
        if self.state is State.SOAKING:
            return self.fire(Event.SOAK_DONE)
        if self.state is State.ROLLING_BACK:
            return self.fire(Event.ROLLBACK_FAILED, f"rollback exceeded {self.remaining_budget()}")
        seconds = self.deadlines.for_state(self.state)
        return self.fire(Event.FAIL, f"deadline: {self.state.value} took longer than {seconds}s")

    def remaining_budget(self) -> str:
        return f"{self.deadlines.rolling_back}s"

    def durations(self) -> list[tuple[State, float]]:
        """How long each state lasted, in order."""
        out = []
        for before, after in zip(self.history, self.history[1:], strict=False):
            out.append((before.target, after.at - before.at))
        return out
