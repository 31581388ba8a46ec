"""Running a standalone swap from its typed request (`swapctl swap` and `swap-legacy`).

`run_standalone` is the one function that builds and runs a standalone swap, handoff or
legacy, and judges it (report and exit code); `announce` says the plan line and the
no-proof warning before it starts; `finish` prints the report. The relays of a standalone
handoff live as long as this command; `swapctl rollback --socket SOCKET` steers it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from swapctl.cli.swap_requests import NO_PROOF, HandoffRequest, LegacyRequest
from swapctl.legacy.run import LegacySwap, ReleaseSpec, run_strategy
from swapctl.swap import report
from swapctl.swap.canary import Canary
from swapctl.swap.executor import SwapRun, SwapSettings
from swapctl.swap.handoff_actions import HandoffActions
from swapctl.swap.journal import Journal
from swapctl.swap.machine import Deadlines
from swapctl.swap.requests import RequestInbox
from swapctl.swap.service import Service
from swapctl.swap.spawner import Release, SubprocessSpawner


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a standalone swap prints (JSON document, or text) and its exit code."""

    document: dict[str, Any]
    text: str
    exit_code: int
    output: str  # text | json


def announce(request: HandoffRequest | LegacyRequest) -> None:
    """Before the swap starts, on stderr: the strategy and why; no proof, when so."""
    click.echo(f"plan: strategy {request.strategy}: {request.why}", err=True)
    if not request.canary.proof:
        click.echo(f"swapctl: warning: {NO_PROOF}", err=True)


def finish(outcome: Outcome) -> int:
    """Print the report (stdout) and return the exit code."""
    if outcome.output == "json":
        click.echo(json.dumps(outcome.document, indent=2, default=str))
    else:
        click.echo(outcome.text)
    return outcome.exit_code


def run_standalone(request: HandoffRequest | LegacyRequest) -> Outcome:
    """Build and run a standalone swap; its report and exit code. The one place where a
    standalone swap is run and judged (the exit code is the report's: swap/evidence.py)."""
    if isinstance(request, LegacyRequest):
        result = execute_legacy(request)
    else:
        result = _run_handoff(request)
    return Outcome(result, report.render_text(result), report.exit_code(result),
                   request.output)


def execute_legacy(request: LegacyRequest) -> dict[str, Any]:
    """Run a standalone legacy swap through `run_strategy`: domain byte, canary rate and
    (bridge) the drain deadline as asked."""
    extra = {} if request.drain_deadline is None else {"drain_deadline": request.drain_deadline}
    from_ = None if request.from_cmd is None else \
        ReleaseSpec("from", request.from_cmd, request.from_legacy)
    swap = LegacySwap(request.layout, ReleaseSpec("to", request.to_cmd, request.to_legacy),
                      request.state_dir, from_=from_, canary_rate=request.canary.rate,
                      domain_byte=request.canary.domain_byte, extra=extra,
                      adopt=request.adopt)
    return run_strategy(request.strategy, swap, journal_watchers=_progress(request.output))


def _run_handoff(request: HandoffRequest) -> dict[str, Any]:
    """Start --from on SOCKET, hand every client over to --to, prove it: the report."""
    dom, state_dir = request.canary.domain_byte, request.state_dir
    settings = SwapSettings(deadlines=Deadlines(soaking=request.soak),
                            pause_budget_ms=request.pause_budget_ms)
    service = Service(request.socket, state_dir, SubprocessSpawner(state_dir / "logs"))
    canary = Canary(request.socket, request.canary.rate, domain_byte=dom) \
        if request.canary.proof else None
    inbox: RequestInbox | None = None
    try:
        service.open(Release("from", request.from_cmd))
        inbox = RequestInbox(state_dir / "requests.sock")
        if canary is not None:
            canary.start()
            time.sleep(0.2)  # steady state before the swap
        requests = _requests(inbox, request.rollback_after)
        journal = Journal(state_dir / "journal.jsonl", _progress(request.output))
        run = SwapRun(service, Release("to", request.to_cmd), settings, canary=canary,
                      requests=requests, journal=journal, domain_byte=dom,
                      actions=HandoffActions()).run()
        return report.build(run, canary.stop() if canary else None)
    finally:
        if canary is not None:
            canary.close()
        if inbox is not None:
            inbox.close()
        service.close()


def _requests(inbox: RequestInbox, rollback_after: float | None) -> Callable[[], str | None]:
    """Operator requests from the inbox, plus a scripted rollback `rollback_after` seconds
    after the first poll (the first poll happens when the soak starts)."""
    started: list[float] = []

    def poll() -> str | None:
        request = inbox.poll()
        if request is not None or rollback_after is None:
            return request
        if not started:
            started.append(time.monotonic())
        return "rollback" if time.monotonic() - started[0] >= rollback_after else None

    return poll


def _progress(output: str) -> list[Callable[[dict[str, Any]], None]]:
    """Live phase lines on stderr: always for text output; for JSON only on a terminal
    (stdout stays one JSON document either way)."""
    if output == "json" and not sys.stderr.isatty():
        return []
    started: list[float] = []

    def show(record: dict[str, Any]) -> None:
        if "from" not in record or "to" not in record:
            return  # not a phase change (e.g. a candidate's "spawned" note)
        if not started:
            started.append(float(record["at"]))
        click.echo(report.progress_line(record, started[0]), err=True)

    return [show]
