"""The first swap of a box through swapctld: a service whose file says `adopt: true` and
whose active (legacy) release already runs, bound at the public socket itself, started
outside swapctl (a box running today's relays). `swapctl up` adopts that process as the
active slot (nothing started, nothing bound), and the first `swapctl swap` takes it over
into a handoff-capable release: every client moves, none is cut, judged by an
independent load run with a strategy consumer that would die on EOF. Today's relay is
the Python reference relay with its path compiled in, and the Rust example relay
(tokio, every thread frozen by the takeover) in legacy mode."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from swapctl.demo import configs
from tests.migration.legacy_support import build_legacy
from tests.migration.test_daemon import Stack, _clean, _load, stack_root  # noqa: F401
from tests.rust import example_relay

pytestmark = pytest.mark.timeout(180)


def todays_relay(kind: str, s: Stack, public: Path) -> list[str]:
    """A relay bound at the public path itself: the Python reference relay with the path
    compiled in, or the Rust example relay (tokio, multi-threaded) in legacy mode."""
    if kind == "rust":
        return [str(example_relay()), "--legacy", "--socket", str(public)]
    return build_legacy(s.root / "builds", public, name="today")


@pytest.mark.parametrize("kind", ["python", "rust"])
def test_swapctld_adopts_todays_relay_and_its_first_swap_cuts_no_one(
        stack_root: Stack, kind: str) -> None:  # noqa: F811 (the fixture, used)
    s = stack_root
    public = s.root / "sockets" / "market_data.sock"
    command = todays_relay(kind, s, public)
    releases = {
        "today": {"command": command, "handoff": False, "legacy": True,
                  "compiled_socket": str(public)},
        "v2": {"command": configs.relay_command("market_data"), "handoff": True},
    }
    configs.write(s.root, services=("market_data",), soak="1s",
                  service_overrides={"releases": releases, "active": "today", "adopt": True})
    public.parent.mkdir(parents=True, exist_ok=True)
    today = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not public.exists():
            assert today.poll() is None and time.monotonic() < deadline, "today's relay"
            time.sleep(0.02)
        load = _load(s, rate=3000)  # its clients are on today's relay before swapctl runs
        try:
            s.up()
            status = s.status()
            assert status["active"]["release"] == "today", status
            assert status["active"]["pid"] == today.pid, "adopted, not started"
            assert status["health"]["healthy"], status["health"]
            code, report = s.json("swap", "market_data", "--to", "v2", "--yes")
            assert report["strategy"] == "takeover" and report["decision"] == "committed", \
                report
            assert code in (0, 1), report  # 1 only if the canary counted a loss (reported)
            assert report["disconnects"] == 0 and report["dead_consumers"] == 0, \
                report["figures"]
            assert report["connections"]["moved"] >= 4  # the load's 2 publishers, 2 consumers
            status = s.status()
            assert status["active"]["release"] == "v2" and status["health"]["healthy"]
            time.sleep(0.3)  # traffic through the new relay
        finally:
            result = load.stop()
        _clean(result)
        assert not any("stopped for good" in p for p in result.problems())
        today.wait(10)  # the taken-over relay was ended
        # the next swap is an ordinary handoff from the slot swapctld now runs
        code, plan = s.json("swap", "market_data", "--to", "today", "--dry-run")
        assert code == 0 and plan["strategy"] == "bridge", plan
    finally:
        if today.poll() is None:
            today.send_signal(signal.SIGKILL)
            today.wait(10)
