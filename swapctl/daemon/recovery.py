"""What a restarted swapctld does with the relays it finds: a pure decision.

The truth after a crash is in the live relays, not in the daemon's memory: each relay
reconnects to its control socket and says which state it is in (its HELLO). The
journal adds what the relays cannot say: which swap was running, in which phase, and
which relay was the old release and which the candidate.

Two steps, both pure:

`settle(states)`: make exactly one relay serve the clients, without losing anything.
  - a relay that is `active` (reading, holding the listener) serves; any other relay
    that still holds copies of the sockets (`released`, `adopted`) is told CLOSE: the
    serving relay has every socket and every byte it was given;
  - no relay active: the one that `released` holds the complete state (it stopped
    reading and handed a copy away; nothing it held was lost) and is RESUMEd; a relay
    that `adopted` (all or part of a transfer, never resumed, never read) is told CLOSE;
  - two relays active cannot happen through swapctl: an operator must look.

`decide(phase, serving_role)`: with the clients on the old release the swap is rolled
back; on the candidate it goes on from verification (or, if it was rolling back, the
rollback is done again); a swap that was committing is committed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from swapctl.swap.machine import State

HOLDS = ("released", "adopted")  # paused with copies of the listener and connections


@dataclass(frozen=True, slots=True)
class Settlement:
    serving: str | None  # token of the relay that serves once the actions are done
    resume: tuple[str, ...] = ()  # tokens to RESUME
    close: tuple[str, ...] = ()  # tokens to CLOSE (they let go of their copies)
    problem: str = ""  # why nobody can serve (operator action needed)


def settle(states: Mapping[str, str]) -> Settlement:
    """`states`: token -> the state each running relay reported."""
    active = sorted(t for t, s in states.items() if s == "active")
    holders = sorted(t for t, s in states.items() if s in HOLDS)
    if len(active) > 1:
        return Settlement(None, problem=f"relays {', '.join(active)} all serve the same "
                                        "socket: stop the one that should not (swapctl never "
                                        "makes two relays active)")
    if active:
        return Settlement(active[0], close=tuple(holders))
    released = [t for t in holders if states[t] == "released"]
    if len(released) == 1:
        adopted = tuple(t for t in holders if states[t] == "adopted")
        return Settlement(released[0], resume=(released[0],), close=adopted)
    if len(released) > 1:
        return Settlement(None, problem=f"relays {', '.join(released)} each released the "
                                        "clients and none serves: operator action needed")
    if holders:  # only adopters (a release that never finished on a relay now gone)
        return Settlement(None, close=tuple(holders),
                          problem="no relay holds the complete set of connections")
    return Settlement(None, problem="no relay serves the clients" if states else
                      "no relay is running")


class Next(enum.Enum):
    IDLE = "idle"  # no swap was running: carry on
    ROLL_BACK = "roll_back"  # clients are on the old release: finish as rolled back
    CONTINUE = "continue"  # clients are on the candidate: verify, soak, commit
    REDO_ROLLBACK = "redo_rollback"  # it was rolling back: move the clients back again
    COMMIT = "commit"  # it was committing: stop the old release


@dataclass(frozen=True, slots=True)
class Decision:
    next: Next
    why: str
    extra: dict[str, str] = field(default_factory=dict)


def decide(phase: State | None, serving_role: str | None) -> Decision:
    """`phase`: the unfinished swap's last journaled state (None: no swap running);
    `serving_role`: "old", "candidate" or None, after `settle`."""
    if phase is None or phase.terminal:
        return Decision(Next.IDLE, "no swap was running")
    where = phase.value
    if serving_role == "old":
        return Decision(Next.ROLL_BACK, f"swapctld restarted during {where}; the clients were "
                                        "on the old release, so the swap is rolled back")
    if serving_role != "candidate":
        return Decision(Next.ROLL_BACK, f"swapctld restarted during {where} and no relay "
                                        "of this swap serves the clients")
    if phase is State.ROLLING_BACK:
        return Decision(Next.REDO_ROLLBACK, "swapctld restarted during the rollback; the "
                                            "clients were still on the candidate")
    if phase is State.COMMITTING:
        return Decision(Next.COMMIT, "swapctld restarted while committing")
    return Decision(Next.CONTINUE, f"swapctld restarted during {where}; the clients were on "
                                   "the candidate, so the swap goes on from verification")
