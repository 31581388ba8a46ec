"""swapctld end to end: real supervisord, real reference relays, the CLI as operators run
it, and an independent `swapctl load` session as the judge of loss and disconnects.

Every test gets its own root under /tmp (short AF_UNIX paths) with the embedded config
(swapctl.demo.configs). Teardown brings the stack up again (recovering whatever a test
left) and down, then kills anything still running from that root (found by the root's
unique path in the command line, never by name) and removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import psutil
import pytest

from swapctl.daemon import stack
from swapctl.daemon.api import ApiError
from swapctl.daemon.runtime import CRASH_AT
from swapctl.demo import configs
from swapctl.probes.config import ConsumerMode, LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.probes.report import LoadReport
from swapctl.swap import journal
from tests.stack import Stack, leftovers, make_stack, teardown

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def stack_root() -> Iterator[Stack]:
    s = make_stack()
    try:
        yield s
    finally:
        left = teardown(s)
        assert not left, f"processes left running: {left}"


def _load(s: Stack, rate: float = 4000) -> LoadSession:
    session = LoadSession(LoadConfig(
        s.root / "sockets" / "market_data.sock", publishers=2, consumers=1, rate=rate,
        duration=None, consumer_mode=ConsumerMode.DASHBOARD, strategy_consumers=1))
    session.start()
    time.sleep(0.5)  # steady state before anything happens
    return session


def _clean(report: LoadReport) -> None:
    data = report.to_dict()
    total = data["total"]
    assert isinstance(total, dict)
    assert report.ok, report.problems()
    assert total["lost"] == 0 and total["duplicated"] == 0 and total["reordered"] == 0
    assert report.disconnects == 0
    assert int(total["received"]) > 0


def test_swap_rollback_history_metrics_through_the_cli(stack_root: Stack) -> None:
    s = stack_root
    done = s.cli("status")
    assert done.returncode == 7 and "swapctl up" in done.stderr, "no daemon: unreachable"
    s.up()
    load = _load(s)
    try:
        code, plan = s.json("swap", "market_data", "--to", "v2", "--dry-run")
        assert code == 0 and plan["strategy"] == "handoff" and plan["to"]["release"] == "v2"
        assert s.status()["active"]["release"] == "v1", "a dry run changes nothing"

        code, report = s.json("swap", "market_data", "--to", "v2", "--yes")
        assert code == 0, report
        assert report["decision"] == "committed" and report["from"] == "v1"
        assert report["canary"]["lost"] == 0 and report["canary"]["disconnects"] == 0
        assert report["connections"]["moved"] >= 3  # 2 publishers + 2 consumers + canary

        code, back = s.json("rollback", "market_data", "--yes")
        assert code == 0, back
        assert back["kind"] == "rollback" and (back["from"], back["to"]) == ("v2", "v1")
        assert back["decision"] == "committed"
        assert s.status()["active"]["release"] == "v1"
    finally:
        result = load.stop()
    _clean(result)

    code, rows = s.json("history", "market_data")
    assert code == 0 and [r["kind"] for r in rows] == ["rollback", "swap"]
    code, full = s.json("report", rows[1]["swap_id"])
    assert code == 0 and full["decision"] == "committed" and full["journal"]
    drawn = s.cli("report", rows[1]["swap_id"], "--html", str(s.root / "t.html"))  # timeline
    page = (s.root / "t.html").read_text()
    assert drawn.returncode == 0 and page.count('class="phase"') >= len(full["phases"])

    metrics = s.status()  # the daemon's endpoint, bound to a free port
    address = stack.client_for(s.config).call("status")["daemon"]["metrics"]
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    assert 'swapctl_swaps_total{decision="committed",service="market_data"} 2.0' in text
    assert 'swapctl_relay_up{release="v1",service="market_data",slot=' in text
    assert metrics["health"]["healthy"]

    # operator mistakes: named, with what to do, and their exit codes
    done = s.cli("swap", "market_data", "--to", "v3")
    assert done.returncode == 2 and "no release 'v3'" in done.stderr and "v2" in done.stderr
    done = s.cli("swap", "market_dta", "--to", "v2")
    assert done.returncode == 4 and "did you mean market_data" in done.stderr
    done = s.cli("swap", "market_data", "--to", "v1")
    assert done.returncode == 2 and "already serves" in done.stderr
    done = s.cli("commit", "market_data")
    assert done.returncode == 2 and "no swap is running" in done.stderr

    done = s.cli("logs", "market_data", "-n", "50")
    assert done.returncode == 0 and "==> market_data-blue" in done.stdout
    assert "swapctl launcher: slot market_data-blue: release v1" in done.stdout
    completion = subprocess.run([sys.executable, "-m", "swapctl", "completion", "bash"],
                                capture_output=True, text=True, timeout=30, check=True)
    assert "_SWAPCTL_COMPLETE" in completion.stdout
    watch = subprocess.Popen(
        [sys.executable, "-m", "swapctl", "status", "--watch", "--interval", "200ms", "-o",
         "json", "--config-dir", str(s.config_dir)], stdout=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    assert watch.stdout is not None
    first, second = watch.stdout.readline(), watch.stdout.readline()
    watch.send_signal(signal.SIGINT)
    assert watch.wait(10) == 0
    watch.stdout.close()
    assert json.loads(first)["services"] and json.loads(second)["services"]


def test_bad_config_is_refused_before_anything_starts(stack_root: Stack) -> None:
    s = stack_root
    daemon_file = s.config_dir / "swapctld.yaml"
    daemon_file.write_text(daemon_file.read_text().replace("mode: '0600'", "mode: '0400'"))
    service_file = s.config_dir / "signal.yaml"
    service_file.write_text(service_file.read_text().replace("active: v1", "active: v7"))
    done = s.cli("up")
    assert done.returncode == 2
    assert "swapctld.yaml" in done.stderr and "control.mode" in done.stderr
    assert "signal.yaml" in done.stderr and "active" in done.stderr and "v7" in done.stderr
    assert not (s.root / "run" / "control.sock").exists()
    assert not leftovers(s.root)
    daemon_file.write_text(daemon_file.read_text().replace("mode: '0400'", "mode: '0600'"))
    service_file.write_text(service_file.read_text().replace("active: v7", "active: v1"))


# The phase each SIGKILL hits, and how the restarted daemon must end the swap.
PHASES = [
    ("starting", "rolled_back", "v1"),
    # the candidate runs but has not said ready: recovery stops it (it held a slot: the
    # next swap found "both slots are busy")
    ("spawned", "rolled_back", "v1"),
    ("probing", "rolled_back", "v1"),
    ("releasing", "rolled_back", "v1"),
    # adopting is journaled once the candidate reads (nothing is written inside the
    # pause): the clients are on the candidate, so the swap goes on
    ("adopting", "committed", "v2"),
    ("verifying", "committed", "v2"),
    ("soaking", "committed", "v2"),
    ("committing", "committed", "v2"),
    ("rolling_back", "rolled_back", "v1"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "decision", "serving"), PHASES, ids=[p[0] for p in PHASES])
def test_sigkill_of_swapctld_at_every_phase(stack_root: Stack, phase: str, decision: str,
                                            serving: str) -> None:
    s = stack_root
    s.up(env={CRASH_AT: phase})
    pid = s.daemon_pid()
    load = _load(s)
    try:
        soak = "30s" if phase == "rolling_back" else "1s"  # the abort must land in it
        done = s.cli("swap", "market_data", "--to", "v2", "--soak", soak, "--no-wait",
                     "-o", "json")
        swap_id = None
        if phase == "starting":  # its record is journaled before the answer: the crash
            assert done.returncode in (0, 7), done.stderr  # may come first (7: no answer)
        else:
            assert done.returncode == 0, done.stderr
        if done.returncode == 0:
            swap_id = json.loads(done.stdout)["swap_id"]
        if phase == "rolling_back":
            s.wait_state("soaking")
            # the abort starts the rollback, whose first record kills swapctld (as told):
            # its answer may or may not leave before that (7: closed before answering)
            aborted = s.cli("abort", "market_data")
            assert aborted.returncode in (0, 7), aborted.stderr
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(30)
        assert not psutil.pid_exists(pid), "swapctld did not crash where it was told to"
        s.up()  # no crash point this time
        if swap_id is None:  # the one swap the journal holds, as recovery reports it
            swap_id = next(r.get("swap") for r in
                           journal.read(s.root / "state" / "journal.jsonl")
                           if r.get("event") == "begin")
        report = s.wait_report(swap_id)
        time.sleep(0.3)  # traffic through whichever relay serves now
    finally:
        result = load.stop()
    assert report["decision"] == decision, report.get("reason")
    assert report["kind"] == "recovery"
    events = [r.get("event") for r in report["journal"]]
    assert events[0] == "begin" and "recovered" in events, events
    if phase in ("verifying", "soaking", "committing"):
        assert report["server_pause_ms"] is not None, "the pause measured before the crash"
    status = s.status()
    assert status["active"]["release"] == serving and status["health"]["healthy"]
    assert status["warm"] is None, "the other release was stopped"
    _clean(result)
    if phase == "spawned":  # its slot is free again: the next swap can start a candidate
        again = s.cli("swap", "market_data", "--to", "v2", "--soak", "1s")
        assert again.returncode == 0, again.stdout + again.stderr


@pytest.mark.slow
def test_candidate_killed_during_soak_rolls_back_warm(stack_root: Stack) -> None:
    s = stack_root
    s.up()
    load = _load(s)
    try:
        done = s.cli("swap", "market_data", "--to", "v2", "--soak", "10s", "--no-wait",
                     "-o", "json")
        swap_id = json.loads(done.stdout)["swap_id"]
        s.wait_state("soaking")
        candidate = s.status()["active"]
        assert candidate["release"] == "v2"
        os.kill(candidate["pid"], signal.SIGKILL)
        report = s.wait_report(swap_id)
        time.sleep(0.3)
    finally:
        result = load.stop()
    assert report["decision"] == "rolled_back"
    assert "crashed during soak" in report["reason"]
    assert report["rollback"]["kind"].startswith("warm handoff from held sockets")
    status = s.status()
    assert status["active"]["release"] == "v1" and status["health"]["healthy"]
    # swapctld held copies of every socket: nobody was disconnected, and the strategy
    # consumer lives; what the dead relay had read but not yet written is lost (counted)
    assert result.disconnects == 0
    assert not any("stopped for good" in p for p in result.problems())


def test_sd_notify_ready_watchdog_and_listener_fd_store(stack_root: Stack) -> None:
    s = stack_root
    notify_path = s.root / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "swapctl", "daemon", "--config-dir", str(s.config_dir)],
        env={**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        messages: list[str] = []
        stored: dict[str, str] = {}
        while not any("READY=1" in m for m in messages):
            data, fds, _flags, _addr = socket.recv_fds(notify, 4096, 8)
            text = data.decode()
            messages.append(text)
            for fd in fds:
                with socket.socket(fileno=fd) as sock:
                    name = dict(line.split("=", 1) for line in text.splitlines())["FDNAME"]
                    stored[name] = sock.getsockname()
        assert stored == {f"listener-{n}": str(s.root / "sockets" / f"{n}.sock")
                          for n in configs.SERVICES}
        data = notify.recv(4096)  # the watchdog, at half of WATCHDOG_USEC
        assert data == b"WATCHDOG=1"
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        assert b"STOPPING=1" in notify.recv(4096)
        # the relays outlived the daemon: the next one attaches to them
        status_before = [p.pid for p in leftovers(s.root) if "swapctl.relay" in " ".join(
            p.cmdline())]
        assert len(status_before) == 3
        s.up()
        assert s.status()["active"]["pid"] in status_before
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(10)
        if daemon.stderr is not None:
            daemon.stderr.close()
        notify.close()


@pytest.mark.slow
def test_sigterm_mid_swap_leaves_it_for_the_next_start(stack_root: Stack) -> None:
    s = stack_root
    s.up()
    pid = s.daemon_pid()
    load = _load(s)
    try:
        done = s.cli("swap", "market_data", "--to", "v2", "--soak", "12s", "--no-wait",
                     "-o", "json")
        swap_id = json.loads(done.stdout)["swap_id"]
        s.wait_state("soaking")
        os.kill(pid, signal.SIGTERM)
        psutil.Process(pid).wait(30)  # (it waits 10 s for the swap, then leaves it)
        s.up()
        report = s.wait_report(swap_id)
    finally:
        result = load.stop()
    assert report["decision"] == "committed" and report["kind"] == "recovery"
    begin = report["journal"][0]
    soaked = report["journal"][-1]["at"] - next(r["at"] for r in report["journal"]
                                                if r.get("to") == "soaking")
    assert begin["soak"] == 12.0 and soaked >= 11.9, \
        "the recovered swap kept its own --soak window, not the service file's 1 s"
    assert s.status()["active"]["release"] == "v2"
    _clean(result)


def test_relay_crash_outside_a_swap_connects_queue_and_are_served(stack_root: Stack) -> None:
    """swapctld holds the listener: with the only relay dead, a connect still succeeds
    (it waits in the backlog), and the relay swapctld starts again serves it."""
    from tests.clients import Client, trade  # noqa: PLC0415

    s = stack_root
    s.up()
    relay = s.status()["active"]
    os.kill(relay["pid"], signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(relay["pid"]).wait(10)
    public = s.root / "sockets" / "market_data.sock"
    client = Client(public, plain_only=True)  # accepted by the kernel, not refused
    try:
        deadline = time.monotonic() + 30
        while (s.status()["active"] or relay)["pid"] == relay["pid"]:
            assert time.monotonic() < deadline, "swapctld did not start the relay again"
            time.sleep(0.1)
        client.send(trade(1))
        assert client.recv_frames(1, timeout=10) == [trade(1)]  # the echo, from the new relay
    finally:
        client.close()
    status = s.status()
    assert status["active"]["release"] == "v1" and status["health"]["healthy"]
    journal = (s.root / "state" / "journal.jsonl").read_text()
    assert '"event": "restarted"' in journal


@pytest.mark.slow
def test_an_expired_lease_aborts_its_swap_and_puts_its_release_back(stack_root: Stack) -> None:
    """A drill that stops renewing its lease (killed, hung) leaves nothing behind: swapctld
    aborts the swap it was running, or swaps back to the release the lease named."""
    s = stack_root
    s.up()
    client = stack.client_for(s.config)
    load = _load(s)
    try:
        # long leases while the swaps start (a busy machine takes seconds), then the
        # holder takes its lease again with a short ttl and never renews it
        client.call("lease", service="market_data", holder="drill-1", ttl_s=60,
                    restore_to="v1")
        with pytest.raises(ApiError, match="held by drill-1"):
            client.call("lease", service="market_data", holder="drill-2", ttl_s=5,
                        restore_to="v1")
        assert s.status()["lease"]["holder"] == "drill-1"
        swapped = s.cli("swap", "market_data", "--to", "v2", "--yes")
        assert swapped.returncode == 0, "a lease does not lock the operator out"
        assert s.status()["active"]["release"] == "v2"
        client.call("lease", service="market_data", holder="drill-1", ttl_s=0.5,
                    restore_to="v1")
        # drill-1 never renews: within its ttl + a tick, v1 is swapped back in
        deadline = time.monotonic() + 30
        while s.status()["active"]["release"] != "v1" or s.status()["swap"]["running"]:
            assert time.monotonic() < deadline, "the expired lease's release was not restored"
            time.sleep(0.1)
        code, rows = s.json("history", "market_data")
        assert code == 0 and rows[0]["kind"] == "restore" and rows[0]["decision"] == "committed"

        # a swap still running when the lease expires is aborted (rolled back)
        client.call("lease", service="market_data", holder="drill-3", ttl_s=60,
                    restore_to="v1")
        done = s.cli("swap", "market_data", "--to", "v2", "--soak", "20s", "--no-wait",
                     "-o", "json")
        swap_id = json.loads(done.stdout)["swap_id"]
        deadline = time.monotonic() + 30
        while (s.status()["swap"] or {}).get("state") != "soaking":
            assert time.monotonic() < deadline, f"the swap never soaked: {s.status()['swap']}"
            time.sleep(0.05)
        client.call("lease", service="market_data", holder="drill-3", ttl_s=0.5,
                    restore_to="v1")
        report = s.wait_report(swap_id)
        assert report["decision"] == "rolled_back", report["reason"]
        assert "rollback" in report["reason"] or "aborted" in report["reason"]
        assert s.status()["active"]["release"] == "v1"
    finally:
        result = load.stop()
    _clean(result)


def test_down_after_swapctld_was_killed_stops_everything(stack_root: Stack) -> None:
    s = stack_root
    s.up()
    pid = s.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(10)
    assert leftovers(s.root), "the relays and supervisord outlive swapctld"
    done = s.cli("down")
    assert done.returncode == 0 and "swapctld was not running" in done.stdout, done.stderr
    deadline = time.monotonic() + 10
    while leftovers(s.root):
        assert time.monotonic() < deadline, [p.pid for p in leftovers(s.root)]
        time.sleep(0.1)
    assert not (s.root / "sockets" / "market_data.sock").exists()


def test_status_exits_3_while_a_relay_does_not_answer(stack_root: Stack) -> None:
    s = stack_root
    s.up()
    relay = s.status()["active"]["pid"]
    os.kill(relay, signal.SIGSTOP)  # alive, but it answers nobody
    try:
        deadline = time.monotonic() + 15
        while s.status()["health"].get("healthy"):
            assert time.monotonic() < deadline, "a frozen relay still reported healthy"
            time.sleep(0.2)
        done = s.cli("status")
        assert done.returncode == 3 and "UNHEALTHY" in done.stdout, done.stdout
    finally:
        os.kill(relay, signal.SIGCONT)
    deadline = time.monotonic() + 15
    while not s.status()["health"].get("healthy"):
        assert time.monotonic() < deadline, "the relay did not come back healthy"
        time.sleep(0.2)
    assert s.cli("status").returncode == 0
