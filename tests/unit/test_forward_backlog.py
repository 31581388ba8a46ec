"""forward_backlog asks OWED at most twice (defer-all: the ring's end, then the
DEFERRED clients) and refuses a relay whose every BACKLOG says `more`. The real relays'
two rounds are exercised by the conformance cases (swapctl/conformance/extension_cases.py)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from swapctl.handoff.controller import MAX_BACKLOGS, forward_backlog
from swapctl.handoff.messages import Envelope, HandoffError


class OldRelay:
    """Answers each OWED with a BACKLOG (a real memfd) that says `more` as scripted."""

    def __init__(self, mores: list[bool]) -> None:
        self.token, self.backlog_due, self.mores, self.asked = "old", True, mores, 0
        self.backlogs = 0
        self.fds: list[int] = []

    def request(self, msg: dict[str, Any], timeout: float) -> Envelope:
        assert msg == {"type": "owed"}
        more = self.mores[self.asked] if self.asked < len(self.mores) else True
        self.asked += 1
        fd = os.memfd_create("backlog")
        self.fds.append(fd)
        body: dict[str, Any] = {"type": "backlog", "re": self.asked, "connections": 3}
        if more:
            body["more"] = True
        return Envelope(body, b"", [fd])


class NewRelay:
    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def request(self, msg: dict[str, Any], timeout: float, fds: list[int]) -> Envelope:
        assert len(fds) == 1
        self.got.append(msg)
        return Envelope({"type": "backlogged", "connections": msg["connections"]})


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_two_backlogs_are_forwarded_when_the_first_says_more() -> None:
    old, new = OldRelay([True, False]), NewRelay()
    assert forward_backlog(old, new, 1.0) == 6  # type: ignore[arg-type]
    assert old.asked == 2 and [m.get("more") for m in new.got] == [True, None]
    assert "re" not in new.got[0], "the old relay's reply id is not passed on"
    assert all(closed(fd) for fd in old.fds), "the orchestrator's copies of the memfds are closed"


def test_a_relay_whose_every_backlog_says_more_is_refused_not_asked_forever() -> None:
    old, new = OldRelay([]), NewRelay()  # every BACKLOG says more
    with pytest.raises(HandoffError, match=f"the protocol has {MAX_BACKLOGS} at most"):
        forward_backlog(old, new, 1.0)  # type: ignore[arg-type]
    assert old.asked == MAX_BACKLOGS == len(new.got)
    assert all(closed(fd) for fd in old.fds)


def test_nothing_is_asked_when_no_backlog_is_due() -> None:
    old, new = OldRelay([]), NewRelay()
    old.backlog_due = False
    assert forward_backlog(old, new, 1.0) == 0  # type: ignore[arg-type]
    assert old.asked == 0 and new.got == []


def test_the_first_backlog_alone_then_the_rest_in_a_later_call() -> None:
    # (the swap forwards the first BACKLOG, which every held client waits for, before
    # it lowers the pause's priorities, and the DEFERRED clients' after)
    old, new = OldRelay([True, False]), NewRelay()
    assert forward_backlog(old, new, 1.0, rounds=1) == 3  # type: ignore[arg-type]
    assert old.asked == 1 and old.backlog_due, "the `more` is remembered on the link"
    assert forward_backlog(old, new, 1.0) == 3  # type: ignore[arg-type]
    assert old.asked == 2 and not old.backlog_due
    assert forward_backlog(old, new, 1.0) == 0  # type: ignore[arg-type]
    assert old.asked == 2
