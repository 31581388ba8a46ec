"""How a swap through swapctld is shown while it runs: its plan (and how long it takes),
what `rollback` with no swap running is about to do, and its progress on stderr, the
soak included (a countdown with the canary's counts). Rendering only: ops.py calls
swapctld and decides; nothing here talks to it."""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from swapctl.swap import report as swap_report


class Progress:
    """A swap's progress on stderr as it happens: each phase marked and timed on a
    terminal, plain lines otherwise (for logs); nothing with -o json unless stderr is a
    terminal. While it soaks, swapctld sends a tick each second (the window left and the
    canary's counts): a countdown rewritten in place on a terminal, a plain line every
    PLAIN_SOAK_S seconds otherwise."""

    PLAIN_SOAK_S = 10.0

    def __init__(self, output: str) -> None:
        self.tty = sys.stderr.isatty()
        self.quiet = output == "json" and not self.tty
        self.started: float | None = None
        self.counting = False  # a countdown is on the terminal's last line
        self.plain_at: float | None = None  # remaining_s of the last plain soak line

    def accepted(self, answer: dict[str, Any]) -> None:
        if self.quiet:
            return
        plan = answer.get("plan") or {}
        self._line(f"{answer['kind']} {answer['swap_id']}: {plan.get('from')} -> "
                   f"{plan.get('to')} (strategy {plan.get('strategy', 'handoff')})")

    def record(self, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        if "to" not in record:
            reason = record.get("reason")
            self._line(f"  ({record.get('event')}{': ' + str(reason) if reason else ''})")
            return
        if self.started is None:
            self.started = float(record["at"])
        line = swap_report.progress_line(record, self.started)
        if self.tty:
            mark = "✗" if record["event"] in ("fail", "rollback", "rollback_failed") else "✓"
            line = click.style(mark, fg="red" if mark == "✗" else "green") + line[1:]
        self._line(line)

    def soak(self, tick: dict[str, Any]) -> None:
        if self.quiet:
            return
        left = float(tick["remaining_s"])
        if self.tty:
            click.echo(f"\r\x1b[K{soak_text(tick)}", nl=False, err=True)
            self.counting = True
        elif self.plain_at is None or self.plain_at - left >= self.PLAIN_SOAK_S:
            self.plain_at = left
            click.echo(soak_text(tick), err=True)

    def end(self) -> None:
        """Take the countdown off the terminal (before a line, or at the end)."""
        if self.counting:
            click.echo("\r\x1b[K", nl=False, err=True)
            self.counting = False

    def _line(self, text: str) -> None:
        self.end()
        click.echo(text, err=True)


def soak_text(tick: dict[str, Any]) -> str:
    """`  soaking: 42s of 60s left; canary 84,000 sent, 83,990 seen, 0 lost`."""
    canary = "no canary" if tick.get("sent") is None else (
        f"canary {tick['sent']:,} sent, {tick['seen']:,} seen, {tick['lost']:,} lost")
    return (f"  {tick.get('phase', 'soaking')}: {math.ceil(float(tick['remaining_s']))}s of "
            f"{float(tick['window_s']):g}s left; {canary}")


def duration_text(plan: dict[str, Any]) -> str:
    """How long the planned swap takes: its soak window, and every phase's deadline."""
    deadlines = {p["phase"]: float(p["deadline_s"] or 0) for p in plan["phases"]}
    most = sum(deadlines.values())
    window = deadlines.get("soaking") or deadlines.get("draining")
    if not window:
        return f"no soak window, so a few seconds (at most {most:g}s)"
    return (f"soak window {window:g}s, so about {window:g}s (at most {most:g}s); `swapctl "
            f"commit {plan['service']}` ends the soak early")


def rollback_text(plan: dict[str, Any]) -> str:
    """What `rollback SERVICE` with no swap running does, said before it starts."""
    return (f"rollback {plan['service']}: no swap is running, so this is a whole swap back "
            f"from {plan['from']['release']} to {plan['to']['release']} (the release the "
            f"last committed swap replaced), strategy {plan['strategy']}; "
            + duration_text(plan))


def plan_text(plan: dict[str, Any]) -> str:
    lines = [f"plan: {plan.get('kind', 'swap')} {plan['service']} ({plan['socket']}): "
             f"{plan['from']['release']} -> {plan['to']['release']}",
             f"  strategy: {plan['strategy']} ({plan['why']})",
             f"  from: {' '.join(plan['from']['command'])} ({plan['from']['program']}, "
             f"pid {plan['from']['pid']})",
             f"  to:   {' '.join(plan['to']['command'])}",
             "  phases: " + ", ".join(f"{p['phase']} <= {p['deadline_s']:g}s"
                                      for p in plan["phases"]),
             f"  pause budget {plan['pause_budget_ms']:g} ms; rollback within "
             f"{plan['rollback_deadline_s']:g}s; canary {plan['canary_rate']:g} msg/s",
             f"  takes: {duration_text(plan)}"]
    return "\n".join(lines)
