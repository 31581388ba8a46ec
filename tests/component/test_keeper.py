"""supervise/keeper.py against a real supervisord: its SIGKILL is seen at once and
reported; restart=True starts it again, restart=False (systemd's) waits for someone
else to, and either way the new one is watched."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapctl.supervise.keeper import Keeper
from swapctl.supervise.layout import Layout
from swapctl.supervise.supervisord import Supervisord

pytestmark = pytest.mark.timeout(60)


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()

    def __call__(self, kind: str, details: dict[str, Any]) -> None:
        with self.cond:
            self.seen.append((kind, details))
            self.cond.notify_all()

    def wait(self, kind: str, timeout: float = 15.0) -> dict[str, Any]:
        with self.cond:
            assert self.cond.wait_for(lambda: any(k == kind for k, _ in self.seen), timeout), \
                f"no {kind} within {timeout}s: {self.seen}"
            return next(d for k, d in self.seen if k == kind)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kp-") as root:  # short AF_UNIX paths
        yield Path(root)


def _kill(sup: Supervisord) -> float:
    assert sup.proc is not None
    os.kill(sup.proc.pid, signal.SIGKILL)
    return time.monotonic()


@pytest.mark.parametrize("restart", [True, False], ids=["swapctl", "systemd"])
def test_death_is_seen_reported_and_repaired(sockdir: Path, restart: bool) -> None:
    layout = Layout(sockdir / "sv", ("md",))
    first = Supervisord(layout)
    first.start()
    events = Events()
    keeper = Keeper(layout, restart=restart, on_event=events, started=first)
    others: list[Supervisord] = []
    try:
        keeper.start()
        assert keeper.up and keeper.status()["pid"] == first.proc.pid  # type: ignore[union-attr]
        killed = _kill(first)
        died = events.wait("supervisord_died")
        assert time.monotonic() - killed < 1.0, "seen within a second"
        assert died["how"] == "killed by SIGKILL"
        if restart:
            back = events.wait("supervisord_restarted")
        else:
            state = keeper.status()
            assert not state["up"] and "waiting for systemd" in state["problem"]
            time.sleep(0.6)
            assert not keeper.up, "restart=False never starts supervisord itself"
            others.append(Supervisord(layout))  # what systemd's Restart= does
            others[-1].start()
            back = events.wait("supervisord_back")
        assert back["pid"] != died["pid"] and keeper.up and keeper.status()["problem"] is None
        assert keeper.restarts == 1
    finally:
        keeper.close()
        for sup in [first, *others, keeper._started]:  # (and the one it started)
            if sup is not None:
                sup.stop()
