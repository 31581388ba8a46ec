"""Steering a running swap: an operator's rollback, abort or commit, from asking to answer.

How it works. A request is honoured only in the phases where the running strategy can act
on it (`accepts`, from the state machine's table `swap.machine.REQUESTS`); anywhere else
it is refused at once with a typed error (`too_late`: e.g. a rollback while committing;
`refused`: e.g. a commit while starting), never acknowledged and then ignored.

An accepted request is a ticket that waits in `Steering` until one of two things happens,
both under one lock, so that no request falls between the check and the engine:
  - the engine polls (`take`) in a phase that honours it: the ticket is answered
    "honoured" and the engine acts on it;
  - the swap moves on (`moved`, called for every journaled record of the swap) to a
    phase that cannot honour it, or ends (`ended`): the ticket is answered "refused"
    with the phase and what to do instead.
The asker waits for that answer (at most `ANSWER_WAIT`; past it the answer is "pending":
the ticket still stands and is answered as above). A rollback or abort asked while the
swap already rolls back is answered "honoured" at once: that is what is happening.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from swapctl.daemon.requests_model import Refusal
from swapctl.swap import machine
from swapctl.swap.machine import State

ANSWER_WAIT = 5.0  # seconds the asker waits for the engine's answer (clients wait 10 s)
BACK = ("rollback", "abort")  # both put the clients back on the old release


class TooLate(Refusal):
    """The swap is past every phase that honours the request."""

    code = "too_late"


class NotNow(Refusal):
    """The running strategy does not honour the request in this phase (or at all)."""

    code = "refused"


def _state(phase: str) -> State | None:
    try:
        return State(phase)
    except ValueError:
        return None


def accepts(strategy: str, phase: str, request: str) -> bool:
    """Whether a `strategy` swap in `phase` honours the operator's `request`. A swap that
    has not begun yet (idle) takes what its first phase takes."""
    state = _state(phase)
    if state is None:
        return False
    return machine.accepts(strategy, State.STARTING if state is State.IDLE else state, request)


def too_late(strategy: str, phase: str, request: str) -> bool:
    """Whether `phase` is past every phase of `strategy` that honours `request`."""
    state = _state(phase)
    if state is None:
        return False
    if state is State.ROLLING_BACK or state.terminal:
        return True
    path = [s for s, _ in machine.PATHS.get(strategy, ())]
    honoured = [path.index(s) for s in machine.REQUESTS.get(strategy, {}).get(request, ())
                if s in path]
    return state in path and any(i < path.index(state) for i in honoured)


@dataclass
class _Ticket:
    request: str
    asked_in: str
    honoured_in: str | None = None
    note: str = ""
    refused: Refusal | None = None

    @property
    def answered(self) -> bool:
        return self.honoured_in is not None or self.refused is not None


class Steering:
    """The operator's requests to one swap (one per swap: `service`, `swap_id`,
    `strategy`; `phase` reads the swap's current phase)."""

    def __init__(self, service: str, swap_id: str, strategy: str,
                 phase: Callable[[], str]) -> None:
        self.service, self.swap_id, self.strategy, self.phase = service, swap_id, strategy, phase
        self._cond = threading.Condition()
        self._pending: list[_Ticket] = []
        self._over = False

    # ----- the asker (an API thread) ---------------------------------------------------

    def ask(self, request: str, wait: float = ANSWER_WAIT) -> dict[str, Any]:
        """Answer the operator: honoured, or pending past `wait`; a refusal is raised."""
        with self._cond:
            phase = self.phase()
            if request in BACK and phase == State.ROLLING_BACK.value:
                return self._answer(request, phase, honoured=True, note="already rolling back")
            if self._over or not accepts(self.strategy, phase, request):
                raise self._refusal(request, phase)
            self._make_room(request, phase)
            ticket = _Ticket(request, phase)
            self._pending.append(ticket)
            self._cond.wait_for(lambda: ticket.answered, timeout=wait)
            if ticket.refused is not None:
                raise ticket.refused
            if ticket.honoured_in is None:
                return self._answer(request, phase, honoured=False, pending=True,
                                    note=f"asked in {phase}; the swap takes it in its next "
                                         "phase that honours it: `swapctl status "
                                         f"{self.service}`")
            return self._answer(request, ticket.honoured_in, honoured=True, note=ticket.note)

    def _make_room(self, request: str, phase: str) -> None:
        """One kind of request waits at a time: a rollback or abort replaces a waiting
        commit (its asker is told); a commit behind a waiting rollback is refused."""
        if not self._pending or self._pending[0].request == request:
            return
        waiting = self._pending[0].request
        if waiting in BACK and request in BACK:
            return
        if request == "commit":
            raise NotNow(f"{self.service}: a {waiting} of swap {self.swap_id} is asked and "
                         "not yet taken: it wins over a commit", **self._details(request, phase))
        self._refuse_all(NotNow(f"{self.service}: the commit of swap {self.swap_id} was "
                                f"replaced by a {request} asked in {phase}",
                                **self._details("commit", phase)))

    # ----- the engine (the swap's thread) -----------------------------------------------

    def take(self, *kinds: str) -> str | None:
        """The engine polls: the waiting request if it is one of `kinds` and the current
        phase honours it (its askers are answered "honoured"), else None."""
        with self._cond:
            if not self._pending or self._pending[0].request not in kinds:
                return None
            request, phase = self._pending[0].request, self.phase()
            if not accepts(self.strategy, phase, request):
                return None
            for ticket in self._pending:
                ticket.honoured_in = phase
            self._pending.clear()
            self._cond.notify_all()
            return request

    def moved(self) -> None:
        """The swap changed phase: refuse what the new phase cannot honour."""
        with self._cond:
            if not self._pending:
                return
            request, phase = self._pending[0].request, self.phase()
            if request in BACK and phase == State.ROLLING_BACK.value:
                for ticket in self._pending:
                    ticket.honoured_in, ticket.note = phase, "already rolling back"
                self._pending.clear()
                self._cond.notify_all()
            elif not accepts(self.strategy, phase, request):
                self._refuse_all(self._refusal(request, phase))

    def ended(self) -> None:
        """The swap is over: nothing can be honoured any more."""
        with self._cond:
            self._over = True
            if self._pending:
                self._refuse_all(self._refusal(self._pending[0].request, self.phase()))

    # ----- answers ----------------------------------------------------------------------

    def _refuse_all(self, refusal: Refusal) -> None:
        for ticket in self._pending:
            ticket.refused = refusal
        self._pending.clear()
        self._cond.notify_all()

    def _refusal(self, request: str, phase: str) -> Refusal:
        state = _state(phase)
        details = self._details(request, phase)
        if state is not None and (state.terminal or self._over):
            return TooLate(f"{self.service}: swap {self.swap_id} is over ({phase}): too late "
                           f"to {request}; see `swapctl report {self.swap_id}`"
                           + (f", and swap back with `swapctl rollback {self.service}`"
                              if request in BACK and phase == "committed" else ""), **details)
        why = (machine.refusal(self.strategy, state, request, self.service) if state
               else f"{phase}: the swap cannot take a {request} now")
        kind = TooLate if too_late(self.strategy, phase, request) else NotNow
        return kind(f"{self.service}: swap {self.swap_id}: {why}", **details)

    def _details(self, request: str, phase: str) -> dict[str, Any]:
        return {"swap_id": self.swap_id, "phase": phase, "strategy": self.strategy,
                "request": request}

    def _answer(self, request: str, phase: str, *, honoured: bool, pending: bool = False,
                note: str = "") -> dict[str, Any]:
        return {"swap_id": self.swap_id, "state": phase, "requested": request,
                "honoured": honoured, "pending": pending, "note": note}
