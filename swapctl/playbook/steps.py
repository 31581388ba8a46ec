"""What each kind of step does. A step returns the details worth keeping (its journal
entry) or raises `StepFailed` with the reason; every wait is cooperative (ctx.sleep).

Steady state, as measured here: swapctld says the expected release is the active one,
alive and healthy, with no swap running; and a short independent load session through
the public socket (its own publisher and consumer, judged by the loss checker, not by
swapctld's canary) loses, duplicates, reorders and corrupts nothing, with no client
disconnected. During a drill a longer load session (`load` steps) spans the swap and
the rollback: it is the judge of `lost` and `disconnects`.
"""

from __future__ import annotations

import json
import operator
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from swapctl.config.load import check_config
from swapctl.config.model import ReleaseConfig
from swapctl.daemon.api import ApiError
from swapctl.playbook.context import POLL, RunContext, StepFailed
from swapctl.playbook.model import (
    ROLLBACK_BUDGET,
    CommitStep,
    ConfigCheckStep,
    DiffStep,
    GateStep,
    LoadStep,
    RestoreStep,
    RollbackStep,
    ShadowStep,
    SwapStep,
    VerifyStep,
    WaitStep,
    _Step,
)
from swapctl.playbook.restore import Restore
from swapctl.probes.config import ConsumerMode, LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.probes.report import LoadReport

Details = dict[str, Any]
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, "==": operator.eq, ">=": operator.ge, ">": operator.gt}
SERVING = ("soaking", "committing")


def run_step(step: _Step, ctx: RunContext) -> Details:
    handler = HANDLERS[type(step)]
    return handler(step, ctx)


# ----- checks without the daemon --------------------------------------------------

def config_check(step: ConfigCheckStep, ctx: RunContext) -> Details:
    result = check_config(ctx.config.directory)
    if not result.ok:
        lines = [str(p) for p in result.problems]
        raise StepFailed(f"{len(lines)} configuration problem(s): " + "; ".join(lines[:5]))
    service = result.services[ctx.service]
    missing = [r for r in (ctx.baseline, ctx.candidate) if r and r not in service.releases]
    if missing:
        raise StepFailed(f"{service.source}: releases: no {', '.join(missing)}: add it, or "
                         f"name one of {', '.join(service.releases)}")
    return {"files": [str(f) for f in result.files]}


def gate(step: GateStep, ctx: RunContext) -> Details:
    value = ctx.values.get(step.value)
    threshold = step.threshold
    if threshold == ROLLBACK_BUDGET:
        threshold = ctx.service_config.rollback.deadline
    assert isinstance(threshold, float)
    check = {"value": step.value, "measured": value, "op": step.op, "threshold": threshold}
    if value is None:
        ctx.decide("gate_failed", **check)
        raise StepFailed(f"{step.value} was not measured (the step that measures it did "
                         "not run or failed first)", check=check)
    ok = OPS[step.op](value, threshold)
    ctx.decide("gate_passed" if ok else "gate_failed", **check)
    if not ok:
        raise StepFailed(f"{step.value} {value:g} is not {step.op} {threshold:g}", check=check)
    return {"check": check}


def wait(step: WaitStep, ctx: RunContext) -> Details:
    ctx.sleep(step.duration)
    return {}


# ----- state as swapctld sees it -----------------------------------------------------

def verify(step: VerifyStep, ctx: RunContext) -> Details:
    expected = ctx.resolve(step.expected)
    status = ctx.status()
    active, swap = status.get("active") or {}, status.get("swap") or {}
    details: Details = {"expected": expected, "active": active.get("release"),
                        "health": status.get("health"), "swap": swap or None}
    if step.kind == "steady_state" and swap.get("running"):
        raise StepFailed(f"swap {swap['swap_id']} is running ({swap['state']}): not steady",
                         **details)
    if step.kind == "verify" and swap.get("swap_id") in ctx.swaps and not swap.get("running") \
            and swap.get("decision") != "committed":
        report = ctx.client.call("report", swap_id=swap["swap_id"])["report"]
        raise StepFailed(f"swapctld ended swap {swap['swap_id']} {swap.get('decision')}: "
                         f"{report.get('reason')}", **details)
    if active.get("release") != expected:
        raise StepFailed(f"{active.get('release')} serves, not {expected}", **details)
    if not active.get("alive"):
        raise StepFailed(f"{expected} (pid {active.get('pid')}) is not alive", **details)
    health = status.get("health") or {}
    if not swap.get("running") and not health.get("healthy"):
        raise StepFailed(f"unhealthy: {health.get('problem')}", **details)
    if step.load_s:
        report = _short_load(ctx, step.rate, step.load_s)
        details["load"] = _load_summary(report)
        t = report.total
        ctx.measure("steady_lost", t.lost + t.duplicated + t.reordered + t.corrupted,
                    seconds=step.load_s, rate=step.rate)
        if not report.ok:
            raise StepFailed(f"load check through {expected}: " + "; ".join(report.problems()),
                             **details)
    return details


# A check's consumers wait this long with nothing new before counting what is missing
# as lost. It costs nothing when every message arrives (the wait ends then). 0.5 s is
# short on a busy box: a consumer starved that long counts messages still on their way
# as lost (a drill's check said "6 lost" beside two others on 2 cores, in stop 21's CI).
SETTLE_S = 2.0


def _load_config(ctx: RunContext, rate: float, publishers: int = 1, consumers: int = 1,
                 strategies: int = 0) -> LoadConfig:
    svc = ctx.service_config
    return LoadConfig(socket=svc.socket, publishers=publishers, consumers=consumers, rate=rate,
                      duration=None, domain=svc.domain, profile=svc.profile,
                      consumer_mode=ConsumerMode.DASHBOARD, strategy_consumers=strategies,
                      settle=SETTLE_S, settle_limit=10.0)


def _short_load(ctx: RunContext, rate: float, seconds: float) -> LoadReport:
    session = LoadSession(_load_config(ctx, rate))
    try:
        session.start()
        ctx.sleep(seconds)
        return session.stop()
    finally:
        session.close()


def _load_summary(report: LoadReport) -> Details:
    data = report.to_dict()
    return {"ok": report.ok, "problems": report.problems(), "warnings": report.warnings(),
            "sent": report.sent, "total": data["total"], "disconnects": report.disconnects,
            "conditions": data["conditions"]}


def load(step: LoadStep, ctx: RunContext) -> Details:
    if step.action == "start":
        if ctx.load is not None:
            raise StepFailed("a load session runs already: stop it first")
        session = LoadSession(_load_config(ctx, step.rate, step.publishers, step.consumers,
                                           strategies=1))
        session.start()
        ctx.load = session
        return {"run_tag": f"0x{session.run_tag:04X}", "pids": session.pids()}
    if ctx.load is None:
        return {"running": False}  # cleanup after a run that stopped it (or never started)
    session, ctx.load = ctx.load, None
    try:
        report = session.stop()
    finally:
        session.close()
    t = report.total
    for name, value in (("lost", t.lost), ("duplicated", t.duplicated),
                        ("reordered", t.reordered), ("corrupted", t.corrupted),
                        ("disconnects", report.disconnects), ("received", t.received)):
        ctx.measure(name, value, judge="independent load session")
    return {"load": _load_summary(report)}


# ----- swaps ---------------------------------------------------------------------

def swap(step: SwapStep, ctx: RunContext) -> Details:
    to = ctx.resolve(step.to)
    started = time.monotonic()
    try:
        answer = ctx.client.call("swap", service=ctx.service, to=to, soak=step.soak,
                                 wait=False)
    except ApiError as exc:
        raise StepFailed(f"swapctld refused the swap to {to}: {exc}") from None
    swap_id = str(answer["swap_id"])
    ctx.swaps.append(swap_id)
    ctx.decide("swap_started", swap_id=swap_id, to=to, soak=step.soak, until=step.until)
    while True:
        current = ctx.status().get("swap") or {}
        if current.get("swap_id") == swap_id:
            if not current.get("running"):
                break
            if step.until == "serving" and current.get("state") in SERVING:
                ctx.measure("swap_seconds", round(time.monotonic() - started, 6))
                return {"swap_id": swap_id, **_swap_figures(ctx, swap_id)}
        ctx.sleep(POLL)
    ctx.measure("swap_seconds", round(time.monotonic() - started, 6))
    report = _report(ctx, swap_id)
    details = {"swap_id": swap_id, **_swap_figures(ctx, swap_id, report)}
    if report.get("decision") != "committed":
        raise StepFailed(f"swapctld ended the swap to {to} {report.get('decision')}: "
                         f"{report.get('reason')}", **details)
    return details


def _report(ctx: RunContext, swap_id: str) -> dict[str, Any]:
    return dict(ctx.client.call("report", swap_id=swap_id)["report"])


def _swap_figures(ctx: RunContext, swap_id: str,
                  report: dict[str, Any] | None = None) -> Details:
    """The pause and canary figures of a swap (from its journal while it runs)."""
    report = report or _report(ctx, swap_id)
    pause = report.get("server_pause_ms")
    if pause is None:
        adopted = [r for r in report.get("journal", []) if r.get("event") == "adopted"]
        pause = adopted[-1].get("server_pause_ms") if adopted else None
    if pause is not None:
        ctx.measure("server_pause_ms", float(pause), swap_id=swap_id)
    if report.get("client_pause_ms") is not None:
        ctx.measure("client_pause_ms", float(report["client_pause_ms"]), swap_id=swap_id)
    canary = report.get("canary")
    if canary:
        bad = sum(int(canary.get(k, 0) or 0) for k in ("lost", "duplicated", "reordered",
                                                        "corrupted"))
        ctx.measure("canary_lost", bad, swap_id=swap_id, judge="swapctld's canary")
    return {"decision": report.get("decision"), "reason": report.get("reason"),
            "phases": report.get("phases"), "rollback": report.get("rollback")}


def rollback(step: RollbackStep, ctx: RunContext) -> Details:
    status = ctx.status()
    current = status.get("swap") or {}
    if step.via == "swap_back":
        return _swap_back(ctx, status)
    swap_id = current.get("swap_id")
    if not current.get("running") or swap_id not in ctx.swaps:
        why = _ended(ctx, swap_id) if swap_id in ctx.swaps else ""
        raise StepFailed(f"no swap of this run is running to roll back{why}")
    started = time.monotonic()
    request = "rollback" if step.via == "request" else "abort"
    try:
        ctx.client.call("request", service=ctx.service, request=request)
    except ApiError as exc:
        if exc.code != "too_late":
            raise
        # swapctld ended the swap (or went past rolling back) between the status and the
        # request: its own verification rolls back a candidate that loses messages
        raise StepFailed(f"no swap of this run is running to roll back{_ended(ctx, swap_id)}"
                         ) from None
    ctx.decide("rollback_requested", swap_id=swap_id, via=step.via, state=current.get("state"))
    serving: float | None = None
    while True:
        now = ctx.status()
        current = now.get("swap") or {}
        if serving is None and (now.get("active") or {}).get("release") == ctx.baseline:
            serving = round(time.monotonic() - started, 6)
        if not current.get("running"):
            break
        ctx.sleep(POLL / 2)
    seconds = round(time.monotonic() - started, 6)
    report = _report(ctx, swap_id)
    active = (now.get("active") or {}).get("release")
    details = {"swap_id": swap_id, "active": active, **_swap_figures(ctx, swap_id, report)}
    if report.get("decision") != "rolled_back" or active != ctx.baseline:
        raise StepFailed(f"the rollback of swap {swap_id} ended {report.get('decision')} with "
                         f"{active} serving: {report.get('reason')}", **details)
    _rollback_figures(ctx, seconds, report)
    if serving is not None:
        ctx.measure("rollback_serving_seconds", serving, measured="request sent -> swapctld "
                    "first said the baseline is active (client side, polled every 10 ms)")
    return details


def _ended(ctx: RunContext, swap_id: str) -> str:
    """": swapctld ended swap ID DECISION (REASON)", once it has ended."""
    while (ctx.status().get("swap") or {}).get("running"):
        ctx.sleep(POLL / 2)
    report = _report(ctx, swap_id)
    return f": swapctld ended swap {swap_id} {report.get('decision')} ({report.get('reason')})"


def _rollback_figures(ctx: RunContext, seconds: float, report: dict[str, Any]) -> None:
    ctx.measure("rollback_seconds", seconds, measured="request sent -> the swap ended with "
                "the baseline serving (client side, status polled every 10 ms)")
    engine = report.get("rollback") or {}
    if engine.get("ms") is not None:
        ctx.measure("rollback_engine_ms", float(engine["ms"]), kind=engine.get("kind"))
    if engine.get("traffic_flowing_ms") is not None:
        ctx.measure("rollback_traffic_ms", float(engine["traffic_flowing_ms"]))


def _swap_back(ctx: RunContext, status: dict[str, Any]) -> Details:
    active = (status.get("active") or {}).get("release")
    if active == ctx.baseline:
        raise StepFailed(f"{ctx.baseline} serves already: nothing to swap back from")
    started = time.monotonic()
    restore = Restore(ctx.client, ctx.service, ctx.baseline, ctx.swaps, ctx.sleep)
    actions = restore.run()
    seconds = round(time.monotonic() - started, 6)
    ctx.measure("rollback_seconds", seconds, measured="swap back sent -> committed")
    return {"actions": actions}


def commit(step: CommitStep, ctx: RunContext) -> Details:
    current = ctx.status().get("swap") or {}
    swap_id = current.get("swap_id")
    if not current.get("running") or swap_id not in ctx.swaps:
        raise StepFailed("no swap of this run is running to commit")
    ctx.client.call("request", service=ctx.service, request="commit")
    while (ctx.status().get("swap") or {}).get("running"):
        ctx.sleep(POLL)
    report = _report(ctx, swap_id)
    details = {"swap_id": swap_id, **_swap_figures(ctx, swap_id, report)}
    if report.get("decision") != "committed":
        raise StepFailed(f"swap {swap_id} ended {report.get('decision')}: "
                         f"{report.get('reason')}", **details)
    return details


def restore(step: RestoreStep, ctx: RunContext) -> Details:
    actions = Restore(ctx.client, ctx.service, ctx.baseline, ctx.swaps, ctx.sleep).run()
    ctx.measure("restored", 1 if actions else 0, actions=actions)
    return {"actions": actions, "baseline": ctx.baseline}


# ----- side by side (child processes of their own) ------------------------------------

def release_command(release: ReleaseConfig) -> tuple[str, list[str]]:
    """A release as `swapctl diff` takes it: a command line, and extra options (a legacy
    release binds its compiled-in path; a handoff release reads SWAPCTL_SOCKET)."""
    if release.legacy and release.compiled_socket is not None:
        return shlex.join(release.command), ["--path", str(release.compiled_socket)]
    env = [f"{k}={v}" for k, v in sorted(release.env.items())]
    return shlex.join(["env", *env, "SWAPCTL_SOCKET={socket}", *release.command]), []


def diff(step: DiffStep, ctx: RunContext) -> Details:
    svc = ctx.service_config
    old, new = ctx.resolve(step.old), ctx.resolve(step.new)
    args = ["diff", "--domain", svc.domain.value, "--profile", svc.profile.value,
            "--mode", step.mode, "-o", "json", "--junit", str(ctx.run_dir / "diff.xml")]
    for side, name in (("old", old), ("new", new)):
        command, extra = release_command(svc.releases[name])
        args += [f"--{side}", command] + [a.replace("--path", f"--{side}-path") for a in extra]
    for scenario in step.scenarios:
        args += ["--scenario", scenario]
    code, out = _swapctl(ctx, args, "diff")
    different = sum(1 for run in out.get("runs", []) if not run.get("equivalent"))
    ctx.measure("diff_different", different, runs=len(out.get("runs", [])), old=old, new=new)
    details = {"exit": code, "runs": [{k: r.get(k) for k in ("scenario", "seed", "equivalent",
                                                             "frames_compared", "totals")}
                                      for r in out.get("runs", [])]}
    if code not in (0, 1):
        raise StepFailed(f"swapctl diff could not run (exit {code}): {out.get('error')}",
                         **details)
    return details


def shadow(step: ShadowStep, ctx: RunContext) -> Details:
    svc = ctx.service_config
    name = ctx.resolve(step.candidate)
    command, extra = release_command(svc.releases[name])
    args = ["shadow", "--socket", str(svc.socket), "--candidate", command,
            "--duration", f"{step.duration:g}", "--domain", svc.domain.value,
            "--profile", svc.profile.value, "-o", "json",
            *[a.replace("--path", "--candidate-path") for a in extra]]
    code, out = _swapctl(ctx, args, "shadow")
    runs = out.get("runs", [])
    differences = sum(sum(r.get("totals", {}).values()) for r in runs)
    ctx.measure("shadow_differences", differences, candidate=name, seconds=step.duration)
    details = {"exit": code, "frames_compared": sum(r.get("frames_compared", 0) for r in runs),
               "totals": [r.get("totals") for r in runs]}
    if code not in (0, 1):
        raise StepFailed(f"swapctl shadow could not run (exit {code}): {out.get('error')}",
                         **details)
    return details


def _swapctl(ctx: RunContext, args: list[str], name: str) -> tuple[int, dict[str, Any]]:
    """`swapctl ARGS` as a child in a session of its own (ended with the step), its JSON."""
    out_path, err_path = ctx.run_dir / f"{name}.json", ctx.run_dir / f"{name}.log"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-P", "-m", "swapctl", *args],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
    ctx.own(proc)
    while proc.poll() is None:
        ctx.sleep(0.05)
    ctx.children.remove(proc)
    try:
        data = json.loads(out_path.read_text() or "{}")
    except json.JSONDecodeError:
        data = {}
    if not data:
        tail = err_path.read_text(errors="replace").strip().splitlines()[-3:]
        data = {"error": " / ".join(tail) or "(no output)"}
    return proc.returncode, data if isinstance(data, dict) else {}


HANDLERS: dict[type, Callable[[Any, RunContext], Details]] = {
    ConfigCheckStep: config_check, DiffStep: diff, ShadowStep: shadow, SwapStep: swap,
    VerifyStep: verify, RollbackStep: rollback, GateStep: gate, WaitStep: wait,
    LoadStep: load, RestoreStep: restore, CommitStep: commit,
}

