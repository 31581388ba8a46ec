"""A torn journal tail on the real stack: swapctld killed after a crash mid-write, started
again, must keep every record, recover a swap journaled after the tear and say it
repaired the journal.

Before the repair existed, the first record after the restart was glued onto the torn
line and `journal.read` stopped there: a swap started after that and interrupted by a
crash was never found again (no recovery, no report).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from swapctl.daemon.paths import Paths
from swapctl.daemon.runtime import CRASH_AT
from swapctl.swap import journal as journal_file
from tests.stack import Stack, make_stack, teardown

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TORN = b'{"service": "market_data", "swap": "torn", "at": 1.0, "from": "soak'


@pytest.fixture
def stack_root() -> Iterator[Stack]:
    s = make_stack()
    try:
        yield s
    finally:
        left = teardown(s)
        assert not left, f"processes left running: {left}"


def _kill_daemon(s: Stack) -> None:
    pid = s.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(30)
    assert not psutil.pid_exists(pid)


def _wait_gone(pid: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(30)
    assert not psutil.pid_exists(pid), "swapctld did not crash where it was told to"


def _log_events(s: Stack, name: str) -> list[dict[str, Any]]:
    found = []
    for line in Paths.of(s.config).daemon_log.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == name:
                found.append(entry)
    return found


def _events(records: list[dict[str, Any]], swap_id: str) -> list[Any]:
    return [(r.get("event"), r.get("to")) for r in records if r.get("swap", swap_id) == swap_id]


def test_torn_tail_sigkill_and_restart_keep_every_record_and_recovery(
        stack_root: Stack) -> None:
    s = stack_root
    journal = Paths.of(s.config).journal
    s.up()
    code, first = s.json("swap", "market_data", "--to", "v2", "--yes")
    assert code == 0 and first["decision"] == "committed", first
    before = journal_file.read(journal)
    assert any(r.get("swap") == first["swap_id"] for r in before)

    # a crash while writing a record: swapctld dies with half a line on disk
    with journal.open("ab") as out:
        out.write(TORN)
    _kill_daemon(s)

    # started again, told to crash once the next swap soaks: that swap's records come
    # after the repaired tear, and only the journal can tell the next start about it
    s.up(env={CRASH_AT: "soaking"})
    repaired = _log_events(s, "journal.repaired")
    assert len(repaired) == 1, repaired
    assert repaired[0]["bytes"] == len(TORN) and repaired[0]["head"] == TORN.decode()
    assert repaired[0]["path"] == str(journal)
    pid = s.daemon_pid()
    done = s.cli("swap", "market_data", "--to", "v1", "--soak", "1s", "--no-wait", "-o", "json")
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout)["swap_id"]
    _wait_gone(pid)

    s.up()
    recovered = s.wait_report(second, timeout=60)
    assert recovered["kind"] == "recovery" and recovered["decision"] == "committed", recovered
    events = [r.get("event") for r in recovered["journal"]]
    assert events[0] == "begin" and "recovered" in events, events
    assert s.status()["active"]["release"] == "v1"

    code, third = s.json("swap", "market_data", "--to", "v2", "--yes")
    assert code == 0 and third["decision"] == "committed", third

    found = journal_file.scan(journal)
    assert found.bad_lines == [], "the torn line was cut, nothing was glued to it"
    assert found.records[:len(before)] == before, "every record before the tear is kept"
    ids = [first["swap_id"], second, third["swap_id"]]
    code, rows = s.json("history", "market_data")
    assert code == 0 and {r["swap_id"] for r in rows} == set(ids), rows
    for swap_id in ids:
        code, report = s.json("report", swap_id)
        assert code == 0 and report["decision"] == "committed", report
        on_disk = [r for r in found.records if r.get("swap") == swap_id]
        assert on_disk and _events(report["journal"], swap_id) == _events(on_disk, swap_id)
    assert len(_log_events(s, "journal.repaired")) == 1, "repaired once, clean since"
