"""Legacy releases under swapctld: an isolated slot, the public link, takeover to a
handoff-capable release with no client disconnected, a bridge back, a restart to another
legacy build, and a daemon restart that attaches to a legacy relay. Every swap runs on
the one engine and answers with the one report (top-level figures, exit code). The
legacy build is the reference relay with its socket path compiled in
(tests/data/legacy_relay.py), run through the real isolation."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from swapctl.demo import configs
from tests.migration.legacy_support import build_legacy
from tests.migration.test_daemon import Stack, _load, stack_root  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def legacy_stack(stack_root: Stack) -> Stack:  # noqa: F811 (the fixture, used)
    root = stack_root.root
    compiled = root / "compiled" / "market_data.sock"  # never the real /tmp/torq
    command = build_legacy(root / "builds", compiled, name="generic")
    releases = {
        "generic": {"command": command, "handoff": False, "legacy": True,
                    "compiled_socket": str(compiled)},
        "generic2": {"command": command, "handoff": False, "legacy": True,
                     "compiled_socket": str(compiled)},
        "v2": {"command": configs.relay_command("market_data"), "handoff": True},
    }
    configs.write(root, services=("market_data",), soak="1s",
                  service_overrides={"releases": releases, "active": "generic"})
    return stack_root


def test_legacy_release_takeover_and_restart_through_the_daemon(legacy_stack: Stack) -> None:
    s = legacy_stack
    public = s.root / "sockets" / "market_data.sock"
    s.up()
    status = s.status()
    assert status["active"]["release"] == "generic" and status["active"]["legacy"]
    assert status["health"]["healthy"], status["health"]
    assert public.is_symlink(), "a legacy release serves through swapctl's public link"
    assert not (s.root / "compiled" / "market_data.sock").exists(), \
        "the compiled-in path on the host is never touched (the slot's own folder is)"

    code, plan = s.json("swap", "market_data", "--to", "v2", "--dry-run")
    assert code == 0 and plan["strategy"] == "takeover", plan
    load = _load(s, rate=3000)
    try:
        code, report = s.json("swap", "market_data", "--to", "v2", "--yes")
        assert code in (0, 1), report  # 1 only if the canary counted a loss (reported)
        assert report["strategy"] == "takeover" and report["decision"] == "committed", report
        assert report["connections"]["moved"] >= 4  # 2 publishers, 2 consumers (+ canary)
        assert report["server_pause_ms"] is not None
        assert report["could_not_guarantee"]
        # nobody was cut: no client, and no socket swapctl's own probes had closed
        assert report["disconnects"] == 0 and report["dead_consumers"] == 0, report["figures"]
        assert report["evidence"]["cut"] == 0
        status = s.status()
        assert status["active"]["release"] == "v2" and not status["active"]["legacy"]
        assert status["health"]["healthy"]
        time.sleep(0.3)
    finally:
        result = load.stop()
    assert result.disconnects == 0, result.problems()
    assert not any("stopped for good" in p for p in result.problems())
    legacy_pid = [p for p in psutil.process_iter() if _is_generic(p, s.root)]
    assert not legacy_pid, "the legacy relay was ended"

    # back to legacy: a bridge (the best way: nobody is cut while they stay); the drain
    # deadline is the soak window; only swapctl's own clients are connected here
    code, plan = s.json("swap", "market_data", "--to", "generic", "--dry-run")
    assert code == 0 and plan["strategy"] == "bridge", plan
    code, back = s.json("swap", "market_data", "--to", "generic", "--soak", "5s", "--yes")
    assert back["strategy"] == "bridge" and back["decision"] == "committed", back["reason"]
    assert back["disconnects"] == 0 and back["dead_consumers"] == 0, back["figures"]
    assert back["evidence"]["drains"][0]["deadline_hit"] is False, back["evidence"]
    assert code == 0 and back["proven"], back["figures"]
    status = s.status()
    assert status["active"]["release"] == "generic" and status["health"]["healthy"]

    # legacy -> legacy the old way, only when asked: every client is cut (counted)
    code, back = s.json("swap", "market_data", "--to", "generic2", "--strategy", "restart",
                        "--yes")
    assert back["strategy"] == "restart" and back["decision"] == "committed", back["reason"]
    assert back["disconnects"] >= 1  # the canary's clients, cut and counted
    assert back["canary"]["disconnects"] >= 1, back["canary"]
    assert "canary" in back["figures"]["disconnects"]["source"]
    assert code == 1, "committed, but clients were cut: the exit code says so"
    status = s.status()
    assert status["active"]["release"] == "generic2" and status["health"]["healthy"]
    target = os.readlink(public)
    assert "/root-generic2-legacy-" in target and target.endswith("/market_data.sock")
    assert os.path.exists(target)

    # swapctld killed: the next one attaches to the legacy relay (it cannot reconnect)
    pid = s.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(10)
    relay_pid = status["active"]["pid"]
    s.up()
    after = s.status()
    assert after["active"]["pid"] == relay_pid and after["health"]["healthy"]
    code, rows = s.json("history", "market_data")
    assert [r["strategy"] for r in rows] == ["restart", "bridge", "takeover"]
    assert json.dumps(rows)


def _is_generic(proc: psutil.Process, root: Path) -> bool:
    """A legacy `generic` relay of this test's stack (not another test's, running beside)."""
    with contextlib.suppress(psutil.Error):
        return any(part.endswith("builds/generic.py") and part.startswith(str(root))
                   for part in proc.cmdline())
    return False
