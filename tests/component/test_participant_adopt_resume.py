"""The adopt-resume extension in the generic participant, over a real socket pair: an
ADOPT that asks to resume is refused unless the extension was granted, and when it was,
the host resumes only after the last part, and its reading is in `adopted`. And the
cyclic garbage collector stays off from an ADOPT until the relay serves again."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapctl.handoff.manifest import ConnState, Transfer, to_parts
from swapctl.handoff.messages import ADOPT_RESUME, MAX_FDS, Envelope
from swapctl.handoff.participant import Participant
from swapctl.handoff.wire import Channel


class Host:
    """Records what the participant asked of it, in order; closes what it is given."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.state = "standby"

    def handoff_state(self) -> str:
        return self.state

    def handoff_adopt(self, transfer: Transfer, first: bool) -> None:
        self.calls.append(f"adopt {len(transfer.conns)}")
        self.state = "adopted"
        for fd in transfer.fds:
            os.close(fd)

    def handoff_resume(self) -> int:
        self.calls.append("resume")
        self.state = "active"
        return 12345

    def stats(self) -> dict[str, Any]:
        return {}

    def handoff_release(self, flush_ms: float) -> Transfer:
        raise AssertionError("not asked")

    def handoff_close(self) -> None:
        raise AssertionError("not asked")

    def handoff_probe(self, fds: list[int]) -> None:
        raise AssertionError("not asked")

    def handoff_listener(self) -> int | None:
        raise AssertionError("not asked")


@pytest.fixture
def wired() -> Iterator[tuple[Channel, Participant, Host]]:
    a, b = socket.socketpair()
    host = Host()
    participant = Participant(Path("/nonexistent"), host, "t")
    participant.channel = Channel(b)
    yield Channel(a), participant, host
    a.close()
    b.close()
    gc.enable()


def _send_adopt(orch: Channel, connections: int, **extra: Any) -> list[int]:
    """An ADOPT of `connections` socket ends in as many parts as it takes; our ends."""
    ours, theirs = [], []
    for _ in range(connections):
        x, y = socket.socketpair()
        ours.append(x.detach())
        theirs.append(y.detach())
    transfer = Transfer(None, [(ConnState(i), fd) for i, fd in enumerate(theirs)])
    for msg, blob, fds in to_parts(transfer, "adopt"):
        orch.send({**msg, "id": 7, **extra}, blob, fds)
    for fd in theirs:
        os.close(fd)  # (the participant got its own copies)
    return ours


def _reply(orch: Channel) -> Envelope:
    return orch.recv(timeout=5)


def test_resume_on_adopt_is_refused_without_the_extension(
        wired: tuple[Channel, Participant, Host]) -> None:
    orch, participant, host = wired
    ours = _send_adopt(orch, 3, resume=True)
    assert participant.handle()
    reply = _reply(orch)
    assert reply.type == "error" and "adopt-resume" in reply.msg["message"]
    assert host.calls == []  # nothing adopted, nothing resumed
    for fd in ours:
        os.close(fd)


def test_resume_on_adopt_resumes_after_the_last_part(
        wired: tuple[Channel, Participant, Host]) -> None:
    orch, participant, host = wired
    participant.extensions = {ADOPT_RESUME: 1}
    ours = _send_adopt(orch, MAX_FDS + 5, resume=True)  # two parts
    assert participant.handle()
    reply = _reply(orch)
    assert reply.type == "adopted" and reply.msg["resumed_ns"] == 12345
    assert reply.msg["connections"] == MAX_FDS + 5
    assert host.calls == [f"adopt {MAX_FDS}", "adopt 5", "resume"]
    for fd in ours:
        os.close(fd)


def test_plain_adopt_does_not_resume(wired: tuple[Channel, Participant, Host]) -> None:
    orch, participant, host = wired
    participant.extensions = {ADOPT_RESUME: 1}
    ours = _send_adopt(orch, 2)
    assert participant.handle()
    reply = _reply(orch)
    assert reply.type == "adopted" and "resumed_ns" not in reply.msg
    assert host.calls == ["adopt 2"]
    for fd in ours:
        os.close(fd)


def test_no_garbage_collection_from_adopt_to_resume(
        wired: tuple[Channel, Participant, Host]) -> None:
    """A full collection over thousands of connections takes milliseconds: it must not
    land inside the pause, so the collector is off while the relay is adopted."""
    orch, participant, host = wired
    gc.enable()
    ours = _send_adopt(orch, 2)
    assert host.state == "standby"
    assert participant.handle()
    assert _reply(orch).type == "adopted"
    assert not gc.isenabled()  # adopted, not resumed: inside the pause
    orch.send({"type": "resume", "id": 8})
    assert participant.handle()
    assert _reply(orch).type == "resumed"
    assert gc.isenabled()  # serving again
    for fd in ours:
        os.close(fd)


def test_a_refused_adopt_leaves_the_collector_on(
        wired: tuple[Channel, Participant, Host]) -> None:
    orch, participant, host = wired
    gc.enable()
    ours = _send_adopt(orch, 1, resume=True)  # refused: adopt-resume was not granted
    assert participant.handle()
    assert _reply(orch).type == "error"
    assert host.state == "standby" and gc.isenabled()
    for fd in ours:
        os.close(fd)
