"""`swapctl bench drill` (added to the `bench` group on import, as `bench handoff` is)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from swapctl.cli.bench import bench, emit, output_option, progress
from swapctl.cli.exits import EXIT_FAILED


@bench.command("drill")
@output_option
@click.option("--drills", type=click.IntRange(min=1), default=20, show_default=True,
              help="Drills to run (p99 needs at least 20 to mean anything).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A parameter of the drill playbook, e.g. check=1s (repeatable).")
@click.option("--playbook", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Another drill playbook [default: playbooks/rollback-drill.yaml].")
def drill_command(output: str, drills: int, params: tuple[str, ...],
                  playbook: Path | None) -> None:
    """Full rollback-drill time and the rollback within it, p50/p99, on a private stack.

    Exit 1 when a drill failed or lost a message (the figures are printed anyway).
    """
    from swapctl.bench.drill import DrillBenchSettings, run_drill_bench  # noqa: PLC0415

    pairs = dict(p.partition("=")[::2] for p in params)
    settings = DrillBenchSettings(drills, pairs, playbook) if playbook else \
        DrillBenchSettings(drills, pairs)
    report = run_drill_bench(settings, progress)
    emit("swapctl bench drill", report, output)
    if report["drills"]["passed"] != report["drills"]["run"] or \
            report["drills"]["lost_messages"]:
        sys.exit(EXIT_FAILED)


def register(group: click.Group) -> None:
    """The command is attached to the `bench` group on import."""
    del group
