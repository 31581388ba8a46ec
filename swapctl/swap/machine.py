"""The life of every swap, as data: states, events, each strategy's path, one table each.

A strategy is the ordered list of its phases, each ended by one event (`PATHS`):

    handoff   starting -ready-> probing -probe_passed-> releasing -released-> adopting
              -adopted-> verifying -verified-> soaking -soak_done|commit-> committing
              -committed-> committed
    takeover  starting, probing, freezing -frozen-> adopting -adopted-> retiring
              -retired-> verifying -verified-> committing -committed-> committed
    bridge    starting, probing, bridging -bridged-> flipping -flipped-> draining
              -drained-> retiring -retired-> verifying -verified-> committing
    restart   starting, probing, flipping -flipped-> retiring -retired-> verifying
              -verified-> committing

Where a swap can still go back is data too (`ROLLBACK_WINDOW`): in those phases a failed
check (fail) or the operator (rollback) leads to rolling_back -rolled_back-> rolled_back
(or -rollback_failed-> failed). Past it (the old relay is gone: a takeover ended it, a
bridge retired it, a restart stopped it) a failure leads straight to failed: operator
action needed. `REQUESTS` says which operator requests each phase honours; `accepts`
answers for the daemon and the CLI; `plan` lists the phases with their deadlines.

Every state but the terminal ones has a deadline (from `Deadlines`) on an injected
clock; `tick()` turns an expired deadline into an event: soaking's deadline is the end
of the soak window (soak_done); any other is a failure. An illegal transition raises.
Every transition is handed to the journal sink. No I/O here.
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
    FREEZING = "freezing"  # takeover: the legacy relay stopped, its sockets duplicated
    BRIDGING = "bridging"  # bridge: a bridge client joins the two relays, checked
    FLIPPING = "flipping"  # the public link points at the candidate
    DRAINING = "draining"  # bridge: the old relay's clients leave (cut at the deadline)
    RETIRING = "retiring"  # the old relay is ended (its remaining clients are cut)
    VERIFYING = "verifying"  # canary traffic, counters, connections, reconnects checked
    SOAKING = "soaking"  # the old release kept warm in standby
    COMMITTING = "committing"  # the old release stopped
    COMMITTED = "committed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"  # rollback itself failed, or failure past the point of no return

    @property
    def terminal(self) -> bool:
        return self in (State.COMMITTED, State.ROLLED_BACK, State.FAILED)


class Event(enum.Enum):
    BEGIN = "begin"
    READY = "ready"
    PROBE_PASSED = "probe_passed"
    RELEASED = "released"
    ADOPTED = "adopted"
    FROZEN = "frozen"
    BRIDGED = "bridged"
    FLIPPED = "flipped"
    DRAINED = "drained"
    RETIRED = "retired"
    VERIFIED = "verified"
    SOAK_DONE = "soak_done"
    COMMIT = "commit"  # operator commits before the soak window ends
    COMMITTED = "committed"
    FAIL = "fail"  # an automatic check failed; the reason says which
    ROLLBACK = "rollback"  # the operator asked for a rollback (or an abort)
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


S, E = State, Event
_START = ((S.STARTING, E.READY), (S.PROBING, E.PROBE_PASSED))
PATHS: dict[str, tuple[tuple[State, Event], ...]] = {
    "handoff": (*_START, (S.RELEASING, E.RELEASED), (S.ADOPTING, E.ADOPTED),
                (S.VERIFYING, E.VERIFIED), (S.SOAKING, E.SOAK_DONE),
                (S.COMMITTING, E.COMMITTED)),
    "takeover": (*_START, (S.FREEZING, E.FROZEN), (S.ADOPTING, E.ADOPTED),
                 (S.RETIRING, E.RETIRED), (S.VERIFYING, E.VERIFIED),
                 (S.COMMITTING, E.COMMITTED)),
    "bridge": (*_START, (S.BRIDGING, E.BRIDGED), (S.FLIPPING, E.FLIPPED),
               (S.DRAINING, E.DRAINED), (S.RETIRING, E.RETIRED), (S.VERIFYING, E.VERIFIED),
               (S.COMMITTING, E.COMMITTED)),
    "restart": (*_START, (S.FLIPPING, E.FLIPPED), (S.RETIRING, E.RETIRED),
                (S.VERIFYING, E.VERIFIED), (S.COMMITTING, E.COMMITTED)),
}
STRATEGIES = tuple(PATHS)
# The phases from which the clients can still be put back on the old relay.
ROLLBACK_WINDOW: dict[str, tuple[State, ...]] = {
    "handoff": (S.STARTING, S.PROBING, S.RELEASING, S.ADOPTING, S.VERIFYING, S.SOAKING),
    "takeover": (S.STARTING, S.PROBING, S.FREEZING, S.ADOPTING),
    "bridge": (S.STARTING, S.PROBING, S.BRIDGING, S.FLIPPING, S.DRAINING),
    "restart": (S.STARTING, S.PROBING, S.FLIPPING),
}
# A failure while committing a handoff still finds the old release warm: roll back.
_FAIL_BACK_TOO = {"handoff": (S.COMMITTING,)}
# Operator requests each phase honours (rollback and abort both roll back; commit ends
# the soak early; a request in VERIFYING waits for the soak).
REQUESTS: dict[str, dict[str, tuple[State, ...]]] = {
    "handoff": {"rollback": ROLLBACK_WINDOW["handoff"],
                "abort": ROLLBACK_WINDOW["handoff"],
                "commit": (S.VERIFYING, S.SOAKING)},
    "takeover": {"rollback": (), "abort": (S.STARTING, S.PROBING), "commit": ()},
    "bridge": {"rollback": (S.DRAINING,), "abort": (S.STARTING, S.PROBING, S.BRIDGING),
               "commit": ()},
    "restart": {"rollback": (), "abort": (S.STARTING, S.PROBING), "commit": ()},
}


def table(strategy: str) -> dict[tuple[State, Event], State]:
    """The whole transition table of `strategy`, built from its path and window."""
    path = PATHS[strategy]
    out: dict[tuple[State, Event], State] = {(S.IDLE, E.BEGIN): path[0][0]}
    for (state, event), (after, _) in zip(path, (*path[1:], (S.COMMITTED, E.COMMITTED)),
                                          strict=True):
        out[(state, event)] = after
    if strategy == "handoff":
        out[(S.SOAKING, E.COMMIT)] = S.COMMITTING
    window = ROLLBACK_WINDOW[strategy]
    for state, _ in path:
        back = state in window or state in _FAIL_BACK_TOO.get(strategy, ())
        out[(state, E.FAIL)] = S.ROLLING_BACK if back else S.FAILED
        if state in window:
            out[(state, E.ROLLBACK)] = S.ROLLING_BACK
    out[(S.ROLLING_BACK, E.ROLLED_BACK)] = S.ROLLED_BACK
    out[(S.ROLLING_BACK, E.ROLLBACK_FAILED)] = S.FAILED
    return out


TABLES = {name: table(name) for name in PATHS}
TRANSITIONS = TABLES["handoff"]


def accepts(strategy: str, state: State, request: str) -> bool:
    """Whether a swap of `strategy` in `state` honours the operator's `request`."""
    return state in REQUESTS.get(strategy, {}).get(request, ())


def refusal(strategy: str, state: State, request: str, service: str = "SERVICE") -> str:
    """Why `request` is refused in `state`, and what to do instead."""
    when = [s.value for s in REQUESTS.get(strategy, {}).get(request, ())]
    if state is S.COMMITTING or (state in (S.RETIRING, S.VERIFYING) and request != "commit"):
        return (f"{state.value}: too late to {request} this {strategy} swap; swap back with "
                f"`swapctl rollback {service}` after it ends")
    if not when:
        return f"a {strategy} swap cannot be asked to {request}; it ends on its own"
    return (f"{state.value}: a {strategy} swap accepts {request} only while "
            f"{' or '.join(when)}")


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Seconds allowed in each state (SOAKING's is the soak window itself; DRAINING's is
    the bridge's drain deadline, which is the soak window, plus the retirement)."""

    starting: float = 10.0
    probing: float = 2.0
    releasing: float = 2.0
    adopting: float = 2.0
    freezing: float = 5.0
    bridging: float = 5.0
    flipping: float = 2.0
    draining: float | None = None  # None: soaking + 10 s
    retiring: float = 10.0
    verifying: float = 5.0
    soaking: float = 5.0
    committing: float = 10.0
    rolling_back: float = 30.0

    def for_state(self, state: State) -> float | None:
        if state is State.DRAINING and self.draining is None:
            return self.soaking + 10.0
        value = getattr(self, state.value, None)
        return None if value is None else float(value)


def plan(strategy: str, deadlines: Deadlines) -> list[dict[str, Any]]:
    """The phases a swap of `strategy` goes through, each with its deadline and whether
    it can still be rolled back from there."""
    window = ROLLBACK_WINDOW[strategy]
    return [{"phase": state.value, "deadline_s": deadlines.for_state(state),
             "can_roll_back": state in window} for state, _ in PATHS[strategy]]


@dataclass(frozen=True, slots=True)
class Transition:
    at: float
    source: State
    event: Event
    target: State
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class IllegalTransition(Exception):
    """A bug in the executor: an event that cannot happen in the current state."""


class SwapMachine:
    def __init__(self, deadlines: Deadlines, clock: Callable[[], float],
                 journal: Callable[[Transition], None] = lambda _: None,
                 strategy: str = "handoff") -> None:
        self.deadlines = deadlines
        self.clock = clock
        self.journal = journal
        self.strategy = strategy
        self.table = TABLES[strategy]
        self.state = State.IDLE
        self.entered = clock()
        self.history: list[Transition] = []
        self.reason = ""

    def can(self, event: Event) -> bool:
        return (self.state, event) in self.table

    def fire(self, event: Event, reason: str = "", **details: Any) -> State:
        target = self.table.get((self.state, event))
        if target is None:
            raise IllegalTransition(f"{event.value} is not allowed in state {self.state.value} "
                                    f"of a {self.strategy} swap")
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
