"""`swapctl bench daemon` (added to the `bench` group on import, as `bench handoff` is)."""

from __future__ import annotations

import sys
from typing import Any

import click

from swapctl.bench.daemon import DaemonBenchSettings, run_daemon_bench
from swapctl.cli.bench import bench, emit, output_option, progress
from swapctl.cli.exits import EXIT_FAILED

D = DaemonBenchSettings()


@bench.command("daemon")
@output_option
@click.option("--swaps", type=click.IntRange(min=1), default=D.swaps, show_default=True,
              help="Swaps v1 <-> v2 through the API (op swap, wait, short soak).")
@click.option("--rollbacks", type=click.IntRange(min=0), default=None,
              help="Rollbacks requested during the soak [default: as many as --swaps].")
@click.option("--recoveries", type=click.IntRange(min=0), default=D.recoveries,
              show_default=True,
              help="SIGKILLs of swapctld while a swap soaks, each timed to ready and finished.")
@click.option("--rate", type=click.IntRange(min=100), default=D.rate, show_default=True,
              help="Messages/s of the independent load (2 publishers, 2 consumers).")
@click.option("--clients", type=click.IntRange(min=0), default=D.idle_clients,
              show_default=True,
              help="Extra idle clients on market_data (read and discard; each one is moved).")
@click.option("--soak", type=click.FloatRange(min=0.0), default=D.soak, show_default=True,
              help="Seconds of soak of each measured swap.")
@click.option("--recovery-soak", type=click.FloatRange(min=1.0), default=D.recovery_soak,
              show_default=True, help="Seconds of soak of the swaps swapctld is killed in.")
def daemon_command(output: str, **o: Any) -> None:
    """swapctld on the real stack under load: up, swaps, rollbacks, recoveries from SIGKILL.

    Exit 1 when the load checker saw a loss, duplicate, reorder or disconnect, or a step
    did not end as it should (the figures are printed anyway).
    """
    settings = DaemonBenchSettings(
        swaps=o["swaps"], rollbacks=o["swaps"] if o["rollbacks"] is None else o["rollbacks"],
        recoveries=o["recoveries"], rate=o["rate"], idle_clients=o["clients"],
        soak=o["soak"], recovery_soak=o["recovery_soak"])
    report = run_daemon_bench(settings, progress)
    emit("swapctl bench daemon", report, output)
    if not report["ok"]:
        progress("not clean: " + "; ".join(
            report["failures"] + ((report["load"] or {}).get("problems") or [])))
        sys.exit(EXIT_FAILED)


def register(group: click.Group) -> None:
    """The command is attached to the `bench` group on import."""
    del group
