"""A process is known by its pid and its start time, and the start time does not move.

psutil's create_time() is the process's start in ticks since boot plus the boot time as
/proc/stat says it *at the call*; that boot time moves by a second when the clock is
slewed across one. In the 60-minute soak it did: every relay's identity check failed at
once, swapctld took each for dead and started it again beside itself (two relays per
service, "both slots are busy", no active relay). These tests move the boot time psutil
reads and check that every identity check swapctl makes still knows its process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from psutil import _pslinux

from swapctl import process
from swapctl.legacy import adopt
from swapctl.legacy import layout as lay
from swapctl.legacy.run import PidHandle
from swapctl.supervise.keeper import Keeper
from swapctl.supervise.layout import Layout
from swapctl.swap.spawner import SubprocessHandle


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)  # (conftest restored SIGINT)
    try:
        yield proc
    finally:
        process.stop_group(proc, 2.0)


def test_started_is_the_ticks_since_boot_and_tells_processes_apart(
        child: subprocess.Popen[bytes]) -> None:
    mine = process.started(os.getpid())
    theirs = process.started(child.pid)
    assert 0 < mine <= theirs
    assert abs(psutil.Process(child.pid).create_time() - psutil.boot_time() - theirs) < 0.02
    assert process.is_same(child.pid, theirs)
    assert not process.is_same(child.pid, theirs + 0.01)
    with pytest.raises(psutil.NoSuchProcess):
        process.started(2**22 + 1)  # above any pid_max
    assert not process.is_same(2**22 + 1, theirs)


def test_handles_made_before_a_slew_still_know_their_process(
        child: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = psutil.Process(child.pid).create_time()
    sub = SubprocessHandle(child, None)
    pid_handle = PidHandle(child.pid, process.started(child.pid))
    adopted = adopt.Adopted(child.pid, process.started(child.pid), (), "@x", "--old-pid")
    legacy = lay.Layout(tmp_path / "public.sock", tmp_path / "compiled.sock", tmp_path)
    lay.write_state(legacy, "a", {"pid": child.pid, "started_s": process.started(child.pid)})

    real = _pslinux.boot_time()
    monkeypatch.setattr(_pslinux, "boot_time", lambda: real + 1.0)
    assert psutil.Process(child.pid).create_time() != before  # the hazard is real

    assert sub.alive() and pid_handle.alive() and adopt.alive(adopted)
    assert lay.read_state(legacy, "a") is not None

    process.stop_group(child, 2.0)
    assert not sub.alive() and not pid_handle.alive() and not adopt.alive(adopted)
    assert lay.read_state(legacy, "a") is None


def test_a_state_file_of_an_earlier_swapctl_is_read_by_its_create_time(
        child: subprocess.Popen[bytes], tmp_path: Path) -> None:
    legacy = lay.Layout(tmp_path / "public.sock", tmp_path / "compiled.sock", tmp_path)
    epoch = psutil.Process(child.pid).create_time()
    lay.write_state(legacy, "a", {"pid": child.pid, "create_time": epoch})
    state = lay.read_state(legacy, "a")
    assert state is not None and state["started_s"] == process.started(child.pid)
    lay.write_state(legacy, "b", {"pid": child.pid, "create_time": epoch - 3600})
    assert lay.read_state(legacy, "b") is None  # another process had that pid an hour ago
    lay.state_path(legacy, "c").write_text(json.dumps({"pid": child.pid}))
    assert lay.read_state(legacy, "c") is None


def test_the_keeper_does_not_take_a_slew_for_supervisords_death(
        child: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keeper = Keeper(Layout(tmp_path, ("svc",)), restart=False, on_event=lambda *_: None)
    keeper._watch(child.pid)
    if keeper._pidfd is not None:  # the psutil path is the one the slew could fool
        os.close(keeper._pidfd)
        keeper._pidfd = None
    real = _pslinux.boot_time()
    monkeypatch.setattr(_pslinux, "boot_time", lambda: real + 1.0)
    assert not keeper._exited(0.01)
    process.stop_group(child, 2.0)
    assert keeper._exited(0.01)
