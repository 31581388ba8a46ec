"""A load run's parent reads each child's message once, even when the child has already
exited by the time the parent looks (CI failure: "consumer 1 closed its control pipe
unexpectedly" on a loaded box: the consumer sent Audited and exited; the parent found its
pipe and its exit both ready, read the message for the one, then read EOF for the other)."""

from __future__ import annotations

from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from swapctl.probes.config import LoadConfig
from swapctl.probes.control import LoadError, Ready
from swapctl.probes.load import LoadSession, _Child


def _report_and_exit(message: Ready | None, ctl: Connection) -> None:
    if message is not None:
        ctl.send(message)  # then return: the process exits at once


def _child(session: LoadSession, message: Ready | None) -> _Child:
    parent_end, child_end = session._ctx.Pipe()
    process = session._ctx.Process(target=_report_and_exit, args=(message, child_end),
                                   daemon=True)
    process.start()
    child_end.close()
    process.join(10)  # gone before the parent looks: its pipe and its exit are both ready
    assert process.exitcode == 0
    return _Child("consumer", 1, process, parent_end)


def test_a_child_that_reported_and_exited_is_read_once() -> None:
    session = LoadSession(LoadConfig(Path("/nonexistent/x.sock")), start_method="fork")
    child = _child(session, Ready(123))
    try:
        assert session._expect([child], Ready, 10) == {("consumer", 1): Ready(123)}
    finally:
        child.ctl.close()


def test_a_child_that_exited_without_reporting_is_still_an_error() -> None:
    session = LoadSession(LoadConfig(Path("/nonexistent/x.sock")), start_method="fork")
    child = _child(session, None)
    try:
        with pytest.raises(LoadError, match=r"consumer 1 .* closed its control pipe"):
            session._expect([child], Ready, 10)
    finally:
        child.ctl.close()
