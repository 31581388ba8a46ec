"""`swapctl demo`: the operator's story through swapctld, in a private temp dir.

  1. write the embedded configuration (three services on the reference relay, a short
     soak) and start the stack as `swapctl up` does: supervisord, swapctld, three relays;
  2. drive market_data with an independent `swapctl load` run: publishers, a dashboard
     consumer and a strategy consumer that would stop for good on EOF;
  3. under that load, through the control API: swap market_data v1 -> v2 (committed after
     its soak), then `rollback` (a swap back to the release the last swap replaced);
  4. stop the load and print the checker's exact verdict.

Teardown runs in a `finally`, also on an error, Ctrl-C or SIGTERM: `swapctl down`; if that
fails, or anything it should have stopped still runs, the processes are ended by the pids
swapctld and supervisord reported (never by name); then the temp dir is removed.
With `keep` (`swapctl demo --keep`), a demo that ran to its end leaves the stack and the
temp dir in place and prints the commands that drive it (`--config-dir ROOT/configs`);
one stopped by an error or a signal is torn down as above.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from swapctl.config.load import Config, load_config
from swapctl.daemon import stack
from swapctl.daemon.api import ApiClient
from swapctl.demo.configs import next_commands, write
from swapctl.errors import SwapctlError
from swapctl.probes.config import ConsumerMode, LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.probes.report import LoadReport
from swapctl.process import end_processes, signals_ignored, sigterm_raises
from swapctl.supervise.client import SupervisorClient, SupervisorError
from swapctl.swap import report as swap_report

SERVICE = "market_data"
# (kind, from, to) of the two swaps, each expected to commit with a clean canary
EXPECTED = (("swap", "v1", "v2"), ("rollback", "v2", "v1"))
CANARY_BAD = ("lost", "duplicated", "reordered", "corrupted", "disconnects", "dead")
SWAP_LINE_TIMEOUT = 60.0  # longest wait for the next progress line of a swap
Say = Callable[[str], None]


@dataclass
class DemoResult:
    root: str = ""
    swaps: list[dict[str, Any]] = field(default_factory=list)
    load: LoadReport | None = None
    error: str = ""  # what stopped the demo early
    left_behind: list[str] = field(default_factory=list)  # teardown problems
    wall_s: float = 0.0
    kept: bool = False  # --keep: the stack was left up in root

    @property
    def strategy_alive(self) -> bool:
        strategies = [c for c in self.load.consumers if c.mode == "strategy"] \
            if self.load else []
        return bool(strategies) and not any(c.dead for c in strategies)

    def problems(self) -> list[str]:
        out = [self.error] if self.error else []
        if len(self.swaps) != len(EXPECTED):
            out.append(f"{len(self.swaps)} of {len(EXPECTED)} swaps ran")
        for report, (kind, old, new) in zip(self.swaps, EXPECTED, strict=False):
            got = (report.get("kind"), report.get("from"), report.get("to"))
            if got != (kind, old, new) or report.get("decision") != "committed":
                out.append(f"{kind} {old} -> {new}: {got[0]} {got[1]} -> {got[2]} "
                           f"{report.get('decision')} ({report.get('reason')})")
            canary = report.get("canary") or {}
            bad = [f"{k} {canary.get(k)}" for k in CANARY_BAD if canary.get(k)]
            if bad:
                out.append(f"{kind} {old} -> {new}: canary {', '.join(bad)}")
        if self.load is None:
            out.append("no verdict from the load checker")
        else:
            out += self.load.problems()
            if not self.strategy_alive:
                out.append("the strategy consumer did not survive")
        return out + self.left_behind

    @property
    def ok(self) -> bool:
        return not self.problems()

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems(), "wall_s": round(self.wall_s, 1),
                "root": self.root, "kept": self.kept, "swaps": self.swaps,
                "load": self.load.to_dict() if self.load else None,
                "strategy_alive": self.strategy_alive}


def run_demo(rate: float = 10_000.0, soak: float = 2.0, say: Say = print,
             keep: bool = False) -> DemoResult:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="swapctl-demo-", dir=_short_tmp()))
    result = DemoResult(root=str(root))
    demo = _Demo(root, say, keep)
    with sigterm_raises(lambda: _Interrupted("SIGTERM")):
        try:
            demo.run(rate, soak, result)
            if keep:
                result.kept = True
                say(_kept_lines(root / "configs"))
        except (SwapctlError, TimeoutError, OSError) as exc:
            result.error = f"stopped early: {exc}"
            say(f"\n{result.error}")
        except KeyboardInterrupt as exc:
            result.error = f"interrupted ({str(exc) or 'Ctrl-C'})"
            say(f"\n{result.error}: stopping everything the demo started")
        finally:
            if not result.kept:
                with signals_ignored():
                    result.left_behind = demo.teardown()
                    shutil.rmtree(root, ignore_errors=True)
                    if root.exists():
                        result.left_behind.append(f"could not remove {root}")
    result.wall_s = time.monotonic() - started
    return result


def _kept_lines(config_dir: Path) -> str:
    commands = next_commands(config_dir, up=False)
    width = max(len(c) for c, _ in commands)
    return "\n".join(["\n== the stack is still up (--keep); drive it with:",
                      *(f"  {c:<{width}}  # {what}" for c, what in commands),
                      f"  rm -rf {config_dir.parent}  # after down: the demo's files"])


class _Demo:
    def __init__(self, root: Path, say: Say, keep: bool = False) -> None:
        self.root = root
        self.say = say
        self.keep = keep
        self.config: Config | None = None
        self.load: LoadSession | None = None
        self.procs: dict[int, psutil.Process] = {}  # what teardown may have to end

    def run(self, rate: float, soak: float, result: DemoResult) -> None:
        say = self.say
        say(f"working in {self.root} " +
            ("(kept with the stack up at the end)" if self.keep else "(removed at the end)"))
        self.config = config = load_config(write(self.root, soak=f"{soak:g}s"))
        say("== swapctl up: supervisord, swapctld, the last good release of each service")
        self._watch(stack.up(config, timeout=60.0).get("pid"))
        status = self._status()
        self._note(status)
        say(_status_lines(status))
        public = Path(config.services[SERVICE].socket)
        self.load = LoadSession(LoadConfig(
            public, publishers=2, consumers=2, rate=rate, duration=None,
            consumer_mode=ConsumerMode.DASHBOARD, strategy_consumers=1))
        self.load.start()
        say(f"\ntraffic on {public}: swapctl load at {rate:,.0f} msg/s (2 publishers, a "
            "dashboard and a strategy consumer that stops for good on EOF)")
        time.sleep(1.0)
        client = stack.client_for(config, SWAP_LINE_TIMEOUT)
        say(f"\n== swapctl swap {SERVICE} --to v2 (under load)")
        report = self._swap(client, {"to": "v2"})
        result.swaps.append(report)
        say(swap_report.render_any(report, SERVICE))
        say(f"\n== swapctl rollback {SERVICE}: back to the release the last swap replaced")
        report = self._swap(client, {"rollback": True})
        result.swaps.append(report)
        say(swap_report.render_any(report, SERVICE))
        say(_timing(report))
        time.sleep(0.5)
        say("\n== the load checker's verdict over the whole run")
        result.load, self.load = self.load.stop(), None
        say(_load_lines(result.load, result.strategy_alive))

    def _swap(self, client: ApiClient, args: dict[str, Any]) -> dict[str, Any]:
        first: list[float] = []
        report: dict[str, Any] = {}
        for answer in client.stream("swap", service=SERVICE, wait=True, **args):
            if answer["type"] == "accepted":
                plan = answer.get("plan") or {}
                self.say(f"{answer['kind']} {answer['swap_id']}: {plan.get('from')} -> "
                         f"{plan.get('to')}")
            elif answer["type"] == "progress" and "to" in answer["record"]:
                record = answer["record"]
                first = first or [float(record["at"])]
                self.say(swap_report.progress_line(record, first[0]))
            elif answer["type"] == "result":
                report = answer["report"]
        self._note(self._status())
        return report

    # ----- what runs, by pid ---------------------------------------------------------

    def _status(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.config is not None
        return stack.client_for(self.config, timeout).call("status")

    def _watch(self, pid: Any) -> None:
        with contextlib.suppress(psutil.Error, TypeError, ValueError):
            self.procs.setdefault(int(pid), psutil.Process(int(pid)))

    def _note(self, status: dict[str, Any]) -> None:
        """Remember swapctld and the relays it reports."""
        self._watch(status["daemon"]["pid"])
        for service in status["services"]:
            for slot in (service.get("active"), service.get("warm")):
                if slot:
                    self._watch(slot.get("pid"))
        self._note_supervisord()

    def _note_supervisord(self) -> None:
        """Remember supervisord and whatever it runs (a swap cut short leaves a candidate
        swapctld may not have reported)."""
        assert self.config is not None
        client = SupervisorClient(Path(self.config.daemon.supervisord.socket), 2.0)
        try:
            pid = client.pid()
        except (SupervisorError, OSError):
            return
        finally:
            client.close()
        self._watch(pid)
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children(recursive=True):
                self._watch(child.pid)

    def _note_our_daemon(self) -> None:
        """swapctld is our child (`stack.up` started it): found by parentage and by the
        demo's own config dir, should it never have answered."""
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if any(str(self.root) in arg for arg in child.cmdline()):
                    self._watch(child.pid)

    def teardown(self) -> list[str]:
        problems: list[str] = []
        if self.load is not None:
            self.load.close()
        if self.config is None:
            return problems
        self._note_our_daemon()
        self._note_supervisord()
        with contextlib.suppress(SwapctlError, OSError, TimeoutError, KeyError):
            self._note(self._status(2.0))
        self.say("\n== swapctl down")
        try:
            stopped = stack.down(self.config, timeout=30.0)
            if stopped.get("stopped"):
                self.say(f"swapctld (pid {stopped['pid']}) stopped every relay and exited")
        except (SwapctlError, OSError, TimeoutError) as exc:
            problems.append(f"swapctl down failed: {exc}")
        left = _wait_gone(self.procs.values(), 5.0)
        if left:
            problems.append("still running after down: " + ", ".join(_describe(p) for p in left))
            end_processes(left)
        return problems


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(procs: Any, timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in procs if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} ({' '.join(proc.cmdline()[:4])})"
    except psutil.Error:
        return f"pid {proc.pid}"


def _short_tmp() -> str | None:
    """The temp dir, unless its path is so long the sockets under it would not fit."""
    return None if len(tempfile.gettempdir()) <= 40 else "/tmp"


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that teardown runs."""


def _status_lines(status: dict[str, Any]) -> str:
    lines = [f"swapctld pid {status['daemon']['pid']}, control {status['daemon']['control']}"]
    for s in status["services"]:
        active, health = s.get("active") or {}, s.get("health") or {}
        lines.append(f"  {s['service']:<12} {active.get('release', '-'):<3} "
                     f"{str(active.get('program', '-')).rsplit('-', 1)[-1]:<5} "
                     f"pid {active.get('pid', '-'):<7} "
                     + ("healthy" if health.get("healthy") else
                        f"UNHEALTHY: {health.get('problem')}"))
    return "\n".join(lines)


def _timing(report: dict[str, Any]) -> str:
    total = float(report.get("ended", 0)) - float(report.get("started", 0))
    pause = report.get("server_pause_ms")
    client = report.get("client_pause_ms")
    return (f"rollback timing: {total:.2f} s in total (the soak window included), server "
            f"pause {_ms(pause)}, largest gap a client saw {_ms(client)}")


def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.2f} ms"


def _load_lines(report: LoadReport, strategy_alive: bool) -> str:
    t = report.total
    verdict = "CLEAN" if report.ok and strategy_alive else \
        "PROBLEMS: " + "; ".join(report.problems() or ["the strategy consumer died"])
    return (f"  sent {report.sent:,}, received {t.received:,} of {t.expected:,} expected\n"
            f"  lost {t.lost}, duplicated {t.duplicated}, reordered {t.reordered}, corrupted "
            f"{t.corrupted}, unexpected {t.unexpected}; disconnects {report.disconnects}\n"
            f"  strategy consumer alive at the end: {'yes' if strategy_alive else 'no'}\n"
            f"  verdict: {verdict}")
