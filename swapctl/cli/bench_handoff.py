"""`swapctl bench handoff` (added to the `bench` group)."""

from __future__ import annotations

from typing import Any

import click

from swapctl.bench.handoff import HandoffBenchSettings, run_handoff_bench
from swapctl.cli.bench import bench, emit, output_option, progress


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
@click.option("--no-load", is_flag=True, help="Skip the runs under background load.")
def handoff_command(output: str, **o: Any) -> None:
    """Pause of a hot swap (server and client side) by clients and load; rollback times."""
    try:
        counts = tuple(int(c) for c in o["clients"].split(",") if c.strip())
    except ValueError:
        raise click.BadParameter("give client counts like 10,100,1000",
                                 param_hint="--clients") from None
    settings = HandoffBenchSettings(counts, o["swaps"], o["load_rate"], o["rollbacks"],
                                    loaded=not o["no_load"])
    emit("swapctl bench handoff", run_handoff_bench(settings, progress), output)


def register(group: click.Group) -> None:
    """The command is attached to the `bench` group on import."""
    del group
