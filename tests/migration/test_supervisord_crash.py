"""supervisord SIGKILLed under a live stack: swapctld notices, says so, brings it back, and
re-adopts the relays that outlived it, with nobody disconnected (docs/daemon.md,
"supervisord's death").

Real supervisord, swapctld and reference relays (tests/stack.py) under an independent
`swapctl load` run with a strategy consumer. SWAPCTL_SUPERVISORD_HOLD=FILE keeps
supervisord down until FILE exists, so what `status` and `up` say meanwhile is seen,
and a swap is driven through its phases while supervisord is dead;
SWAPCTL_DAEMON_PAUSE_AT=probing:60:FILE holds a swap before its handoff. One shared
stack then kills it in each later phase (PAUSE_AT=@FILE: each case says where to hold),
and a stack with `supervisord.start: systemd` checks what swapctld does when a
supervisord it does not own dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from swapctl.daemon import stack
from swapctl.daemon.paths import Paths, layout_of
from swapctl.daemon.runtime import PAUSE_AT
from swapctl.supervise import slotfile
from swapctl.supervise.keeper import HOLD
from swapctl.supervise.supervisord import Supervisord
from tests.migration.test_daemon import _clean, _load
from tests.stack import Stack, leftovers, make_stack, teardown

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180),
              pytest.mark.xdist_group("supervisord_crash")]


@pytest.fixture
def stack_root() -> Iterator[Stack]:
    # a swap held before its handoff (PAUSE_AT) must not hit the probe's 2 s deadline
    s = make_stack(prefix="svk-", service_overrides={"probe": {"timeout": "30s"}})
    try:
        yield s
    finally:
        (s.root / "hold").touch()  # a test that failed while supervisord was held down
        left = teardown(s)
        assert not left, f"processes left running: {left}"


def _supervisord(s: Stack) -> dict[str, Any]:
    return dict(stack.client_for(s.config).call("status")["daemon"]["supervisord_state"])


def _kill_supervisord(s: Stack) -> int:
    pid = int(_supervisord(s)["pid"])
    os.kill(pid, signal.SIGKILL)
    return pid


def _kill_supervisord_of_dead_daemon(s: Stack) -> None:
    pid = int((s.root / "state" / "supervisord" / "supervisord.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(10)


def _wait(what: str, check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def _until(what: str, get: Any, ok: Any, timeout: float = 15.0) -> Any:
    """The first get() that ok() accepts."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s: {value}"
        time.sleep(0.05)


def _status_while_down(s: Stack, dead: int) -> None:
    """The truth while supervisord is dead: every service unhealthy with why, exit 3."""
    def down() -> dict[str, Any] | None:
        state = _supervisord(s)
        return None if state["up"] else state

    state = _wait("supervisord reported down", down, 3.0)
    assert f"supervisord (pid {dead}) died (killed by SIGKILL)" in state["problem"]
    done = s.cli("status")
    assert done.returncode == 3, done.stdout
    assert done.stdout.count("UNHEALTHY: supervisord") == 3, done.stdout
    code, out = s.json("status")
    assert code == 3 and all(not svc["health"]["healthy"] for svc in out["services"])


def _journal(s: Stack) -> list[dict[str, Any]]:
    path = s.root / "state" / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _swap(s: Stack, to: str, soak: str) -> str:
    done = s.cli("swap", "market_data", "--to", to, "--soak", soak, "--no-wait", "-o", "json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["swap_id"])


def _relay_restarts_after_death(s: Stack, service: str) -> None:
    """A relay that dies after the repair (and was adopted: started by the dead
    supervisord) is started again by swapctld."""
    before = s.status(service)["active"]["pid"]
    os.kill(before, signal.SIGKILL)
    _wait(f"{service}'s relay started again",
          lambda: (s.status(service)["active"] or {}).get("pid") not in (None, before)
          and s.status(service)["health"].get("healthy"), 20.0)
    restarted = [r for r in _journal(s) if r.get("service") == service
                 and r.get("event") in ("restarted", "restart_failed")]
    assert restarted and restarted[-1]["event"] == "restarted", restarted


def test_outside_a_swap_status_tells_up_repairs_relays_are_adopted(stack_root: Stack) -> None:
    s = stack_root
    hold = s.root / "hold"
    s.up(env={HOLD: str(hold)})
    relays = {name: s.status(name)["active"]["pid"] for name in ("market_data", "signal")}
    load = _load(s)
    try:
        dead = _kill_supervisord(s)
        _status_while_down(s, dead)
        done = s.cli("up", "--timeout", "1s")
        assert done.returncode == 3 and "supervisord is still down" in done.stderr, done
        up = subprocess.Popen(s.argv("up", "-o", "json"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            # up's only sleep is its wait for the repair: once it sleeps, it has seen
            # supervisord down (on a busy machine its start alone takes seconds)
            _wait("up waiting for the repair", lambda: up.poll() is not None
                  or Path(f"/proc/{up.pid}/wchan").read_text() == "hrtimer_nanosleep", 30.0)
            assert up.poll() is None, "up said 'already running' with supervisord dead"
            hold.touch()  # swapctld may start it again now
            out, err = up.communicate(timeout=30)
        finally:
            if up.poll() is None:
                up.kill()
                up.communicate()
        assert up.returncode == 0, err
        result = json.loads(out)
        assert result["started"] is False and result["supervisord"]["up"]
        assert "died" in result["repaired"]["supervisord_was"]
        assert result["supervisord"]["pid"] != dead
        assert s.cli("status").returncode == 0
        # the relays were never stopped: the same processes serve, re-adopted, and their
        # output still lands in their slot's log (it never went through supervisord)
        assert {n: s.status(n)["active"]["pid"] for n in relays} == relays
        log = s.root / "state" / "supervisord" / "logs" / "market_data-blue.log"
        assert os.readlink(f"/proc/{relays['market_data']}/fd/2") == str(log)
        restarted = [r for r in _journal(s) if r.get("event") == "supervisord_restarted"
                     and r["service"] == "market_data"]
        assert [r["pid"] for r in restarted[-1]["relays"]] == [relays["market_data"]]

        # a later swap works, and stops the adopted old release on commit
        report = s.wait_report(_swap(s, "v2", "1s"))
        assert report["decision"] == "committed", report.get("reason")
        _wait("the adopted v1 stopped", lambda: not psutil.pid_exists(relays["market_data"])
              or psutil.Process(relays["market_data"]).status() == psutil.STATUS_ZOMBIE)

        # swapctld and supervisord both killed: the next `up` adopts the relays that
        # outlived them (it used to refuse: "socket served by another process")
        serving = {n: s.status(n)["active"]["pid"] for n in relays}
        daemon = s.daemon_pid()
        os.kill(daemon, signal.SIGKILL)
        _kill_supervisord_of_dead_daemon(s)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(daemon).wait(10)
        s.up()
        assert {n: s.status(n)["active"]["pid"] for n in relays} == serving
        assert s.cli("status").returncode == 0
        time.sleep(0.3)  # traffic through v2
    finally:
        result = load.stop()
    _clean(result)
    _relay_restarts_after_death(s, "signal")  # (not market_data's: its clients would go)


def test_during_a_swap_it_goes_on_and_ends_as_planned(stack_root: Stack) -> None:
    """supervisord dies (and stays down) while a swap is held before its handoff, while
    one soaks, and just before one starts its candidate: each commits, as
    docs/daemon.md's table says, with nobody disconnected."""
    s = stack_root
    hold, go = s.root / "hold", s.root / "go"
    s.up(env={HOLD: str(hold), PAUSE_AT: f"probing:60:{go}"})
    load = _load(s)
    try:
        # 1. held in probing (the candidate runs, nothing moved yet)
        swap_id = _swap(s, "v2", "1s")
        s.wait_state("probing")
        _status_while_down(s, _kill_supervisord(s))
        assert s.status()["swap"]["state"] == "probing"
        go.touch()  # the swap goes on with supervisord still dead
        report = s.wait_report(swap_id)
        assert report["decision"] == "committed", report.get("reason")
        events = [r.get("event") for r in report["journal"]]
        assert "supervisord_died" in events, events
        hold.touch()
        _wait("supervisord back", lambda: _supervisord(s)["up"])

        # 2. soaking: the old release is warm; the commit stops it with supervisord dead
        hold.unlink()
        swap_id = _swap(s, "v1", "4s")
        s.wait_state("soaking")
        _status_while_down(s, _kill_supervisord(s))
        report = s.wait_report(swap_id)
        assert report["decision"] == "committed", report.get("reason")
        assert "supervisord_died" in {r.get("event") for r in report["journal"]}
        assert not _supervisord(s)["up"], "held down for the whole soak and commit"
        hold.touch()

        # 3. starting: the candidate's start waits for supervisord to be back
        _wait("supervisord back", lambda: _supervisord(s)["up"])
        hold.unlink()
        _status_while_down(s, _kill_supervisord(s))
        swap_id = _swap(s, "v2", "1s")
        time.sleep(1.0)
        assert s.status()["swap"]["state"] == "starting"
        hold.touch()
        report = s.wait_report(swap_id)
        assert report["decision"] == "committed", report.get("reason")

        # a later swap, with supervisord healthy again
        _wait("supervisord back", lambda: _supervisord(s)["up"])
        report = s.wait_report(_swap(s, "v1", "1s"))
        assert report["decision"] == "committed", report.get("reason")
        time.sleep(0.3)
    finally:
        result = load.stop()
    _clean(result)
    assert s.cli("status").returncode == 0
    with contextlib.suppress(FileNotFoundError):
        Path(go).unlink()
    _relay_restarts_after_death(s, "signal")


# ----- kill -9 of supervisord in each phase after the candidate runs ------------------
#
# One stack (one service) for every phase: swapctld runs with PAUSE_AT=@FILE, and each
# case writes PHASE:30:GO into FILE, which holds its swap as it enters PHASE until GO
# exists. supervisord is SIGKILLed there and swapctld starts it again at once (no hold).
# In a phase with a short deadline (releasing, adopting: 2 s, and the hold counts) the
# swap goes on as soon as swapctld has seen the death, so the restart races the rest of
# the swap; in the others it goes on once supervisord is back, so the restart and the
# re-adoption happen in the middle of the swap.

PHASES = {  # phase -> (how the swap ends, supervisord back before the swap goes on)
    "releasing": ("committed", False),
    "adopting": ("committed", False),
    "verifying": ("committed", True),
    "committing": ("committed", True),
    "rolling_back": ("rolled_back", True),
}


@pytest.fixture(scope="module")
def one_service() -> Iterator[Stack]:
    s = make_stack(prefix="svp-", services=("market_data",))
    try:
        s.up(env={PAUSE_AT: f"@{s.root / 'pause'}"})
        yield s
    finally:
        left = teardown(s)
        assert not left, f"processes left running: {left}"


def _api_swap(s: Stack, soak: float) -> tuple[str, str]:
    """A swap to the release that does not serve, not waited for: (its id, release)."""
    to = "v2" if s.status()["active"]["release"] == "v1" else "v1"
    answer = stack.client_for(s.config).call("swap", service="market_data", to=to, soak=soak,
                                             wait=False)
    assert answer.get("running"), answer
    return str(answer["swap_id"]), to


def _relay_pids(s: Stack) -> set[int]:
    """The service's relays alive now, found by their slots' pid records."""
    layout = layout_of(s.config, Paths.of(s.config))
    records = (slotfile.live_pid(layout.slot_dir(p)) for p in layout.programs())
    return {r.pid for r in records if r is not None}


def _in_swap(s: Stack, swap_id: str, event: str) -> bool:
    """`event` is journaled in the record of the swap `swap_id`, running or ended."""
    report = stack.client_for(s.config).call("report", swap_id=swap_id)["report"]
    return any(r.get("event") == event for r in report["journal"])


@pytest.mark.parametrize("phase", list(PHASES))
def test_killed_in_each_phase_the_swap_ends_as_planned(one_service: Stack, phase: str) -> None:
    s = one_service
    decision, back_first = PHASES[phase]
    go = s.root / f"go-{phase}"
    (s.root / "pause").write_text(f"{phase}:30:{go}")
    restarts = _supervisord(s)["restarts"]
    load = _load(s)
    try:
        swap_id, to = _api_swap(s, 30.0 if phase == "rolling_back" else 0.1)
        if phase == "rolling_back":
            s.wait_state("soaking")
            answer = stack.client_for(s.config).call("request", service="market_data",
                                                     request="rollback")
            assert answer.get("type") == "result", answer
        s.wait_state(phase)
        dead = _kill_supervisord(s)
        _wait("the death in the swap's journal", lambda: _in_swap(s, swap_id,
                                                                  "supervisord_died"), 3.0)
        if back_first:
            _wait("supervisord back", lambda: _supervisord(s)["up"])
        assert s.status()["swap"]["state"] == phase, "held there meanwhile"
        go.touch()
        report = s.wait_report(swap_id)
        events = [r.get("event") or r.get("to") for r in report["journal"]]
        assert report["decision"] == decision, (report.get("reason"), events)
        if back_first:  # re-adopted mid-swap: the old release and the candidate, both
            restarted = [r for r in report["journal"]
                         if r.get("event") == "supervisord_restarted"]
            assert len(restarted) == 1 and len(restarted[0]["relays"]) == 2, restarted

        state = _until("supervisord back", lambda: _supervisord(s), lambda st: st["up"])
        assert state["pid"] != dead and state["restarts"] == restarts + 1
        serving = _until("healthy", s.status, lambda st: st["health"].get("healthy"))
        assert serving["active"]["release"] == (to if decision == "committed"
                                                 else report["from"])
        assert _relay_pids(s) == {serving["active"]["pid"]}, "only the serving relay left"

        later, _ = _api_swap(s, 0.1)  # a later swap works
        assert s.wait_report(later)["decision"] == "committed"
        time.sleep(0.3)  # traffic through the release it swapped to
    finally:
        go.touch()  # (a failed case leaves no swap held)
        result = load.stop()
    _clean(result)


# ----- supervisord.start: systemd ------------------------------------------------------
#
# The test stands in for systemd: it starts supervisord (as swapctl-supervisord.service
# would), SIGKILLs it, and later starts it again (as the unit's Restart=on-failure
# would). swapctld must not start one itself (it would live in swapctld's cgroup) and
# must not exit (docs/daemon.md, "Under systemd"): it reports the death and waits.


@pytest.fixture
def systemd_stack() -> Iterator[tuple[Stack, list[Supervisord]]]:
    s = make_stack(prefix="svs-", services=("market_data",))
    conf = s.config_dir / "swapctld.yaml"
    conf.write_text(conf.read_text().replace("start: swapctl", "start: systemd"))
    assert s.config.daemon.supervisord.start == "systemd"
    started: list[Supervisord] = []
    try:
        yield s, started
    finally:
        with contextlib.suppress(Exception):
            stack.down(s.config, timeout=30)  # (it leaves systemd's supervisord running)
        for sup in started:
            sup.stop()
        left = leftovers(s.root)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(s.root, ignore_errors=True)
        assert not left, f"processes left running: {left}"


def _systemd_starts_supervisord(s: Stack, started: list[Supervisord]) -> int:
    sup = Supervisord(layout_of(s.config, Paths.of(s.config)))
    sup.start()
    started.append(sup)
    assert sup.proc is not None
    return sup.proc.pid


def test_under_systemd_swapctld_reports_waits_and_readopts(
        systemd_stack: tuple[Stack, list[Supervisord]]) -> None:
    s, started = systemd_stack
    Paths.of(s.config).make()
    first = _systemd_starts_supervisord(s, started)
    s.up()
    daemon = s.daemon_pid()
    relay = s.status()["active"]["pid"]
    load = _load(s)
    try:
        os.kill(first, signal.SIGKILL)
        assert started[0].proc is not None
        started[0].proc.wait(10)  # (reaped, as systemd would)
        state = _until("supervisord reported down", lambda: _supervisord(s),
                       lambda st: not st["up"], 3.0)
        assert state["start"] == "systemd", state
        assert f"supervisord (pid {first}) died" in state["problem"], state
        assert "waiting for systemd to start it again" in state["problem"], state
        done = s.cli("status")
        assert done.returncode == 3 and "UNHEALTHY: supervisord" in done.stdout, done
        done = s.cli("up", "--timeout", "1s")  # up does not start systemd's supervisord
        assert done.returncode == 3 and "supervisord is still down" in done.stderr, done
        # swapctld neither started one (nothing answers on its socket) nor exited
        assert not _supervisord(s)["up"]
        assert psutil.Process(daemon).status() != psutil.STATUS_ZOMBIE
        assert s.daemon_pid() == daemon

        second = _systemd_starts_supervisord(s, started)  # Restart=on-failure
        state = _until("supervisord back", lambda: _supervisord(s), lambda st: st["up"], 5.0)
        assert state["pid"] == second and state["restarts"] == 1, state
        assert s.cli("status").returncode == 0
        assert s.status()["active"]["pid"] == relay, "the relay was never stopped"
        back = [r for r in _journal(s) if r.get("event") == "supervisord_back"]
        assert [r["pid"] for r in back[-1]["relays"]] == [relay], back
        swap_id, _ = _api_swap(s, 0.1)  # a later swap works, through the new supervisord
        assert s.wait_report(swap_id)["decision"] == "committed"
        time.sleep(0.3)
    finally:
        result = load.stop()
    _clean(result)
    assert s.daemon_pid() == daemon, "the same swapctld throughout"
