"""`swapctl bench soak`: the operators' production simulation on a private local stack.

How it works: the stack of `bench daemon` (daemon_stack.py: supervisord, swapctld, three
services on the reference relay under a fresh /tmp root) is brought up, then market_data
gets the real clients for the whole run: a publisher that never reads its echo (its
backlog sits at the relay's bound), and an independent `swapctl load` session (2
publishers, a dashboard consumer that reconnects, a strategy consumer that stops for good
on EOF). Every `every` seconds a step runs through the control API:

- a swap v1 <-> v2 with a short soak (the report's server and client pauses are kept);
- every `rollback_every`-th step, a swap rolled back by an operator request while it soaks;
- with faults, every `fault_every`-th step is a fault instead, in turn:
  swapctld SIGKILLed at a random moment of a swap (the phase status showed last is noted;
  the restarted daemon finishes the swap), the old (warm) relay SIGKILLed while a swap
  soaks (no client is on it), and the active relay of `signal` SIGKILLed outside a swap
  (its clients are cut by design: no load runs there; swapctld must restart it), and
  supervisord SIGKILLed at a random moment of a swap (swapctld restarts it and re-attaches
  the relays without stopping them; the swap ends as it would have).

A sampler thread records, every `sample_every` seconds (at least 6 samples a run), the
RSS and open descriptors of swapctld, supervisord and every relay (found by the root's
path, never by name). At the end: the load checker's verdict (lost, duplicated,
reordered, corrupted, disconnects, dead consumers; per run: the checker reports once),
the pause distribution, every step's decision, and per process role the RSS and fd slope
(least squares, per hour) over the samples of its longest-lived pid (a killed swapctld
starts again from zero). `soak_plot.py` draws memory, fds and pauses over time.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from swapctl.bench.daemon import SERVICE, DaemonBenchSettings, Record, Steps, _verdict
from swapctl.bench.daemon_stack import BenchStack, private_stack
from swapctl.bench.handoff import NeverReader
from swapctl.bench.procs import Interrupted
from swapctl.bench.report import conditions, sample_stats, slope, source_revision
from swapctl.daemon import stack
from swapctl.errors import SwapctlError
from swapctl.probes.config import ConsumerMode, LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.process import processes_under
from swapctl.supervise.layout import LAUNCHER_MODULE

OTHER = "signal"  # the service whose active relay is killed (no load clients there)
FAULTS = ("swapctld", "old_relay", "active_relay", "supervisord")
NOT_YET: dict[str, str] = {}
POLL = 0.02


@dataclass(frozen=True, slots=True)
class SoakSettings:
    minutes: float = 10.0
    faults: bool = False
    rate: int = 2000  # msg/s of the independent load
    every: float = 3.0  # seconds from the start of one step to the next
    rollback_every: int = 5
    fault_every: int = 4
    soak: float = 0.3  # seconds of soak of each plain swap
    fault_soak: float = 2.0  # the window faults strike in
    rollback_soak: float = 10.0  # the window each rollback interrupts
    sample_every: float = 60.0
    seed: int | None = None
    keep_state: Path | None = None  # copy the stack's state here at the end (None: on failure)
    give_up_after: int = 5  # failed steps in a row that end the run
    rust_relay: Path | None = None  # the services' relays: this Rust binary (None: Python)

    @property
    def relay(self) -> str:
        return "python" if self.rust_relay is None else "rust"

    @property
    def sample_interval(self) -> float:
        return min(self.sample_every, max(2.0, self.minutes * 60 / 6))


@dataclass
class SoakRecord:
    steps: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    windows: list[tuple[str, float, float]] = field(default_factory=list)
    load: Any = None
    root: str = ""
    started: float = 0.0  # wall clock
    wall_s: float = 0.0
    killed_after_down: list[int] = field(default_factory=list)
    kept: str | None = None  # where the stack's state was copied


# ----- per-process samples ---------------------------------------------------------


def role_of(proc: psutil.Process) -> str | None:
    """swapctld, supervisord or relay:PROGRAM; None for the clients, and for a slot's
    launcher caught before its exec (Python, not yet the relay: its RSS is not the relay's)."""
    with contextlib.suppress(psutil.Error):
        cmd = proc.cmdline()
        if any(part.endswith("supervisord") for part in cmd[:5]):  # python -P -m ...
            return "supervisord"
        if "swapctl" in cmd and "daemon" in cmd:
            return "swapctld"
        if LAUNCHER_MODULE in cmd[:5]:
            return None
        program = proc.environ().get("SUPERVISOR_PROCESS_NAME")
        if program:
            return f"relay:{program}"
    return None


def sample(root: Path, started: float) -> dict[str, Any]:
    rows = []
    for proc in processes_under(root):
        role = role_of(proc)
        if role is None:
            continue
        with contextlib.suppress(psutil.Error):
            rows.append({"role": role, "pid": proc.pid, "name": proc.name(),
                         "rss_mb": round(proc.memory_info().rss / 2**20, 2),
                         "fds": proc.num_fds()})
    rows.sort(key=lambda r: (r["role"], r["pid"]))
    return {"t_s": round(time.time() - started, 1), "processes": rows}


class Sampler:
    """A thread that samples every `interval` seconds until stopped (and once more then)."""

    def __init__(self, root: Path, started: float, interval: float,
                 into: list[dict[str, Any]]) -> None:
        self.root, self.started, self.interval, self.into = root, started, interval, into
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error, OSError):
                self.into.append(sample(self.root, self.started))
            if self.stopped.wait(self.interval):
                return

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(30)
        with contextlib.suppress(psutil.Error, OSError):
            self.into.append(sample(self.root, self.started))


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour; None under 3 points."""
    per_second = slope(points)
    return None if per_second is None else round(per_second * 3600, 3)


def trends(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per role: first/last/max RSS and fds, and their slopes over its longest-lived pid;
    and `all_pids`: the role's total at each sample (whichever pids it had then) and its
    slopes, the one trend a run whose faults restart swapctld every minute can have."""
    by_role: dict[str, dict[int, list[tuple[float, float, int]]]] = {}
    totals: dict[str, dict[float, list[float]]] = {}
    for s in samples:
        for p in s["processes"]:
            role = "relay" if p["role"].startswith("relay:") else p["role"]
            by_role.setdefault(role, {}).setdefault(p["pid"], []).append(
                (s["t_s"], p["rss_mb"], p["fds"]))
            total = totals.setdefault(role, {}).setdefault(s["t_s"], [0.0, 0.0])
            total[0] += p["rss_mb"]
            total[1] += p["fds"]
    out = {}
    for role, pids in sorted(by_role.items()):
        pid, points = max(pids.items(), key=lambda item: len(item[1]))
        series = sorted(totals[role].items())
        out[role] = {
            "pids_seen": len(pids), "longest_pid": pid, "samples": len(points),
            "rss_mb_first": points[0][1], "rss_mb_last": points[-1][1],
            "rss_mb_max": max(p[1] for p in points),
            "rss_slope_mb_per_h": slope_per_hour([(t, r) for t, r, _ in points]),
            "fds_first": points[0][2], "fds_last": points[-1][2],
            "fds_slope_per_h": slope_per_hour([(t, float(f)) for t, _, f in points]),
            "all_pids": {
                "samples": len(series),
                "rss_mb_first": round(series[0][1][0], 2),
                "rss_mb_last": round(series[-1][1][0], 2),
                "rss_mb_max": round(max(v[0] for _, v in series), 2),
                "rss_slope_mb_per_h": slope_per_hour([(t, v[0]) for t, v in series]),
                "fds_slope_per_h": slope_per_hour([(t, v[1]) for t, v in series])},
        }
    return out


# ----- the steps -------------------------------------------------------------------


class SoakSteps:
    def __init__(self, bench: BenchStack, settings: SoakSettings) -> None:
        self.bench = bench
        self.settings = settings
        self.steps = Steps(bench, Record(), DaemonBenchSettings(soak=settings.soak))
        self.rng = random.Random(settings.seed)

    def swap(self) -> dict[str, Any]:
        return self.steps.swap()

    def rollback(self) -> dict[str, Any]:
        return self.steps.rollback(self.settings.rollback_soak)

    def fault(self, kind: str) -> dict[str, Any]:
        if kind == "swapctld":
            return self._kill_swapctld()
        if kind == "old_relay":
            return self._kill_old_relay()
        if kind == "supervisord":
            return self._kill_supervisord()
        return self._kill_active_relay()

    def _kill_supervisord(self) -> dict[str, Any]:
        """SIGKILL supervisord at a random moment of a swap: swapctld restarts it and
        re-attaches the relays (none is stopped), and the swap ends as it would have."""
        swap_id = self.steps._start(self.settings.fault_soak)
        time.sleep(self.rng.uniform(0.0, 1.0 + self.settings.fault_soak))
        swap = self.bench.status(SERVICE)["services"][0]["swap"] or {}
        phase = swap.get("state") if swap.get("running") else "ended"
        state = self.bench.status(SERVICE)["daemon"].get("supervisord_state") or {}
        pid = self._own(int(state["pid"]))
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()

        def back() -> dict[str, Any] | None:
            now = self.bench.status(SERVICE)["daemon"].get("supervisord_state") or {}
            return now if now.get("up") and now.get("pid") not in (None, pid) else None

        Steps._wait(back, "supervisord restarted by swapctld")
        restarted_ms = round((time.monotonic() - killed) * 1000, 1)
        report = Steps._wait(lambda: self.steps._report(swap_id), f"the report of {swap_id}")
        return {"fault": "supervisord", "swap_id": swap_id, "phase": phase, "killed_pid": pid,
                "decision": report["decision"], "reason": report.get("reason"),
                "restart_to_up_ms": restarted_ms}

    def _kill_swapctld(self) -> dict[str, Any]:
        """SIGKILL swapctld at a random moment of a swap; the restarted one finishes it."""
        swap_id = self.steps._start(self.settings.fault_soak)
        time.sleep(self.rng.uniform(0.0, 1.0 + self.settings.fault_soak))
        swap = self.bench.status(SERVICE)["services"][0]["swap"] or {}
        phase = swap.get("state") if swap.get("running") else "ended"
        pid = self._own(self.bench.daemon_pid())
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(30)
        killed = time.monotonic()
        stack.up(self.bench.config, timeout=60)
        report = Steps._wait(lambda: self.steps._report(swap_id), f"the report of {swap_id}")
        return {"fault": "swapctld", "swap_id": swap_id, "phase": phase,
                "decision": report["decision"], "reason": report.get("reason"),
                "restart_to_finished_ms": round((time.monotonic() - killed) * 1000, 1)}

    def _kill_old_relay(self) -> dict[str, Any]:
        """SIGKILL the warm old relay while the swap soaks: no client is on it."""
        swap_id = self.steps._start(self.settings.fault_soak)
        Steps._wait(lambda: self.steps._soaking(swap_id), f"swap {swap_id} soaking")
        warm = self.bench.status(SERVICE)["services"][0]["warm"] or {}
        if warm.get("pid"):
            os.kill(self._own(int(warm["pid"])), signal.SIGKILL)
        report = Steps._wait(lambda: self.steps._report(swap_id), f"the report of {swap_id}")
        return {"fault": "old_relay", "swap_id": swap_id, "phase": "soaking",
                "killed_pid": warm.get("pid"), "decision": report["decision"],
                "reason": report.get("reason")}

    def _kill_active_relay(self) -> dict[str, Any]:
        """SIGKILL signal's serving relay outside a swap; swapctld must restart it."""
        active = self.bench.status(OTHER)["services"][0]["active"] or {}
        pid = self._own(int(active["pid"]))
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()

        def back() -> dict[str, Any] | None:
            svc = self.bench.status(OTHER)["services"][0]
            now = svc["active"] or {}
            healthy = svc["health"].get("healthy") and now.get("pid") not in (None, pid)
            return svc if healthy else None

        Steps._wait(back, f"{OTHER}'s relay restarted")
        return {"fault": "active_relay", "service": OTHER, "killed_pid": pid,
                "decision": "restarted",
                "restart_to_healthy_ms": round((time.monotonic() - killed) * 1000, 1)}

    def _own(self, pid: int) -> int:
        """`pid`, if the process is this bench's (the root in its command line or, for a
        relay, its environment); never a stranger's."""
        root = str(self.bench.root)
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if any(root in part for part in proc.cmdline()) or any(
                    root in value for value in proc.environ().values()):
                return pid
        raise SwapctlError(f"pid {pid} is not this bench's: not killed")

    def settle(self) -> None:
        stack.up(self.bench.config, timeout=60)
        self.steps.idle()


def plan(number: int, settings: SoakSettings, faults_done: int) -> str:
    """What step `number` (from 1) does: a fault kind, "rollback" or "swap"."""
    if settings.faults and number % settings.fault_every == 0:
        return FAULTS[faults_done % len(FAULTS)]
    if number % settings.rollback_every == 0:
        return "rollback"
    return "swap"


# ----- the run ---------------------------------------------------------------------


def run_soak(settings: SoakSettings,
             progress: Callable[[str], None] = print) -> dict[str, Any]:
    record = SoakRecord(started=time.time())
    began = time.monotonic()
    # the service file's soak: the window a recovered swap is finished with if its own
    # was not journaled
    with private_stack(f"{settings.fault_soak:g}s", settings.rust_relay) as bench:
        record.root = str(bench.root)
        steps = SoakSteps(bench, settings)
        progress(f"soak: cold start of supervisord, swapctld and 3 {settings.relay} relays "
                 f"under {bench.root}")
        steps.steps.up()
        public = bench.root / "sockets" / f"{SERVICE}.sock"
        reader = NeverReader(public)
        load = LoadSession(LoadConfig(
            public, publishers=2, consumers=2, rate=settings.rate, duration=None,
            consumer_mode=ConsumerMode.DASHBOARD, strategy_consumers=1))
        sampler = Sampler(bench.root, record.started, settings.sample_interval, record.samples)
        try:
            load.start()
            sampler.start()
            _run_steps(steps, settings, record, progress)
            time.sleep(0.5)  # traffic through whichever relay serves now
            progress("soak: stopping the load and reading its verdict")
            record.load = load.stop()
        finally:
            sampler.stop()
            load.close()
            reader.close()
            bench.keep_to = settings.keep_state or (
                None if clean(record) else Path(f"/tmp/swapctl-soak-{bench.root.name}"))
            if bench.keep_to is not None:
                record.kept = str(bench.keep_to)
                progress(f"soak: the stack's journal and logs are kept in {bench.keep_to}")
    record.killed_after_down = bench.killed_at_teardown
    record.wall_s = time.monotonic() - began
    return build_report(settings, record)


def clean(record: SoakRecord) -> bool:
    """No failed step and a clean load verdict (so far: None while the load runs)."""
    load_ok = record.load is None or bool(getattr(record.load, "ok", False))
    return load_ok and not record.failures and all(
        r["decision"] in EXPECTED[r["kind"]] for r in record.steps)


def _run_steps(steps: SoakSteps, settings: SoakSettings, record: SoakRecord,
               progress: Callable[[str], None]) -> None:
    deadline = time.monotonic() + settings.minutes * 60
    number = faults_done = failed_in_a_row = 0
    while time.monotonic() < deadline:
        if failed_in_a_row >= settings.give_up_after:
            record.failures.append(
                f"the stack did not recover: {failed_in_a_row} steps in a row failed; the run "
                f"stopped after step {number} ({round(deadline - time.monotonic())} s early)")
            progress("soak: " + record.failures[-1])
            return
        number += 1
        kind = plan(number, settings, faults_done)
        faults_done += kind in FAULTS
        began, wall = time.monotonic(), time.time()
        try:
            row = steps.fault(kind) if kind in FAULTS else \
                steps.rollback() if kind == "rollback" else steps.swap()
        except Interrupted:
            raise
        except (SwapctlError, TimeoutError, OSError, KeyError) as exc:
            record.failures.append(f"step {number} ({kind}): {exc}")
            progress(f"soak: step {number} ({kind}) FAILED: {exc}")
            failed_in_a_row += 1
            try:
                steps.settle()
            except (SwapctlError, TimeoutError, OSError) as again:
                record.failures.append(f"after step {number} the stack did not settle: "
                                       f"{again}")
                return
            continue
        finally:
            record.windows.append((f"{kind} {number}", wall, time.time()))
        if "kind" in row:  # a rollback's kind (warm handoff, ...)
            row["rollback_kind"] = row.pop("kind")
        row = {"step": number, "kind": kind, "t_s": round(wall - record.started, 1), **row}
        record.steps.append(row)
        failed_in_a_row = 0 if row.get("decision") in EXPECTED[kind] else failed_in_a_row + 1
        progress(f"soak: step {number} {kind}: {row.get('decision')}"
                 + (f" (phase {row['phase']})" if row.get("phase") else ""))
        time.sleep(max(0.0, began + settings.every - time.monotonic()))


# ----- the report ------------------------------------------------------------------

EXPECTED = {"swap": ("committed",), "rollback": ("rolled_back",),
            "swapctld": ("committed", "rolled_back"), "old_relay": ("committed", "rolled_back"),
            "active_relay": ("restarted",), "supervisord": ("committed", "rolled_back")}


def build_report(settings: SoakSettings, record: SoakRecord) -> dict[str, Any]:
    rows = record.steps
    failures = list(record.failures) + [
        f"step {r['step']} ({r['kind']}) {r.get('swap_id', '')}: {r['decision']} "
        f"({r.get('reason')})" for r in rows if r["decision"] not in EXPECTED[r["kind"]]]
    verdict = _verdict(record.load, record.windows)
    pauses = [{"t_s": r["t_s"], "server_ms": r.get("server_pause_ms"),
               "client_ms": r.get("client_pause_ms")} for r in rows if r["kind"] == "swap"]
    by_kind: dict[str, dict[str, int]] = {}
    for r in rows:
        counts = by_kind.setdefault(r["kind"], {})
        counts[str(r["decision"])] = counts.get(str(r["decision"]), 0) + 1
    faults = [r for r in rows if r["kind"] in FAULTS]
    report = {
        "benchmark": "soak",
        "conditions": _conditions(settings, record),
        "steps": {"run": len(rows), "by_kind": by_kind, "failures": len(failures)},
        "faults": {"enabled": settings.faults, "injected": faults, "not_yet": NOT_YET},
        "pauses": {"server_ms": sample_stats([float(p["server_ms"]) for p in pauses
                                               if p["server_ms"] is not None]),
                   "client_ms": sample_stats([float(p["client_ms"]) for p in pauses
                                               if p["client_ms"] is not None]),
                   "series": pauses},
        "load": verdict,
        "processes": trends(record.samples),
        "samples": record.samples,
        "failures": failures,
        "cleanup": {"root": record.root, "killed_after_down": record.killed_after_down,
                    "state_kept_in": record.kept},
        "wall_s": round(record.wall_s, 1),
    }
    report["ok"] = bool(verdict and verdict["ok"]) and not failures
    return report


def _conditions(settings: SoakSettings, record: SoakRecord) -> dict[str, Any]:
    load = record.load
    return conditions(
        **{**asdict(settings), "keep_state": record.kept,
           "rust_relay": None if settings.rust_relay is None else str(settings.rust_relay)},
        sample_interval_s=settings.sample_interval, service=SERVICE,
        clients=("a publisher that never reads its echo (backlog at the relay's bound, then "
                 "200 msg/s); swapctl load: 2 publishers, a dashboard consumer (reconnects) "
                 "and a strategy consumer (stops for good on EOF)"),
        message_sizes_bytes=dict(load.conditions.message_sizes) if load is not None else None,
        relay=settings.relay,
        stack=("supervisord + swapctld + " + (
            "the reference relay" if settings.rust_relay is None
            else f"the Rust example relay ({settings.rust_relay})")
            + " as v1 and v2 of market_data, signal, execution; under " + record.root),
        measured=("RSS and open fds of swapctld, supervisord and each relay every "
                  "sample_interval_s (psutil); slopes: least squares over the samples of "
                  "each role's longest-lived pid, per hour; pauses from each swap's report; "
                  "lost/duplicated/reordered/disconnects from the load checker at the end"),
        source=source_revision("swapctl/daemon", "swapctl/swap", "swapctl/relay",
                               *(() if settings.rust_relay is None else ("sdk/rust",))))
