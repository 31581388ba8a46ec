"""`swapctl bench handoff` (added to the `bench` group)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from swapctl.bench.handoff import HandoffBenchSettings, run_handoff_bench
from swapctl.bench.handoff_table import side_by_side
from swapctl.bench.procs import sigterm_interrupts
from swapctl.bench.report import render_text
from swapctl.bench.rust_relay import relays_asked
from swapctl.cli.bench import bench, emit, output_option, progress, rust_relay_options
from swapctl.swap.executor import SwapSettings
from swapctl.swap.priority import MAX_PRIORITY


@bench.command("handoff")
@output_option
@click.option("--clients", default="10,100,1000,5000", show_default=True,
              help="Comma-separated client counts.")
@click.option("--swaps", type=click.IntRange(min=1), default=50, show_default=True,
              help="Measured swaps per configuration.")
@click.option("--load-rate", type=click.IntRange(min=0), default=100_000, show_default=True,
              help="Background messages/s asked for the loaded runs (capped, see conditions).")
@click.option("--rollbacks", type=click.IntRange(min=1), default=10, show_default=True,
              help="Warm and cold rollbacks timed.")
@click.option("--row-rollbacks", type=click.IntRange(min=0), default=10, show_default=True,
              help="Warm rollbacks at the end of every row, under its clients, load and "
                   "backlog: the hand-back's server pause by client count (0: none).")
@click.option("--rollback-clients", type=click.IntRange(min=1), default=None,
              help="Clients during the timed rollbacks [default: the --clients count "
                   "nearest 100].")
@click.option("--no-load", is_flag=True, help="Skip the runs under background load.")
@click.option("--no-never-reader", is_flag=True,
              help="Leave out the never-reading publisher (by default its full echo backlog "
                   "is on the relay in every row): the pause is then the connections' alone.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep what each row leaves behind in DIR/<relay>-<clients>-<idle|load> "
                   "(and <relay>-rollback-<warm|cold>): the relays' logs, the journal and "
                   "every swap's report (swaps.jsonl), to look into a row that did not "
                   "commit every swap. DIR must be new or empty.")
@click.option("--pause-priority", type=click.IntRange(min=0, max=MAX_PRIORITY),
              default=SwapSettings().pause_priority, show_default=True,
              help="SCHED_FIFO priority of the adopting relay while each pause lasts, as a "
                   "service's pause_priority (docs/config.md); 0 measures the pause with the "
                   "relays left at their own scheduling. Each row says whether it was "
                   "applied.")
@rust_relay_options("Relays measured: the Python reference relay, the Rust example relay "
                    "(sdk/rust), or both, each client count for each relay in turn.")
def handoff_command(output: str, **o: Any) -> None:
    """Pause of a hot swap (server and client side) by clients and load, for the Python and
    the Rust relay side by side; cost per moved connection against the kernel's SCM_RIGHTS
    cost measured in the same run; rollback times."""
    try:
        counts = tuple(int(c) for c in o["clients"].split(",") if c.strip())
    except ValueError:
        raise click.BadParameter("give client counts like 10,100,1000",
                                 param_hint="--clients") from None
    keep = o["keep"]
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise click.BadParameter(f"{keep} is not empty: give a new or empty directory",
                                 param_hint="--keep")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    settings = HandoffBenchSettings(counts, o["swaps"], o["load_rate"], o["rollbacks"],
                                    loaded=not o["no_load"],
                                    relays=relays_asked(o["relay"], o["rust_relay"]),
                                    never_reader=not o["no_never_reader"],
                                    rust_binary=o["rust_relay"], keep=keep,
                                    rollback_clients=o["rollback_clients"],
                                    row_rollbacks=o["row_rollbacks"],
                                    pause_priority=o["pause_priority"])
    with sigterm_interrupts():  # (each row's `finally` then stops its processes)
        report = run_handoff_bench(settings, progress)
    if output == "json":
        emit("swapctl bench handoff", report, output)
    else:
        click.echo(side_by_side(report) + "\n\n" + render_text("swapctl bench handoff", report))


def register(group: click.Group) -> None:
    """The command is attached to the `bench` group on import."""
    del group
