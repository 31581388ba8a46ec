"""`swapctl demo`: the stack up, a hot swap and a rollback under load, the stack down."""

from __future__ import annotations

import json
import sys

import click

from swapctl.cli.exits import EXIT_FAILED, EXIT_OK
from swapctl.demo import run_demo


@click.command("demo")
@click.option("--rate", type=click.FloatRange(min=100), default=10_000.0, show_default=True,
              help="Background load on market_data, messages/s.")
@click.option("--soak", type=click.FloatRange(min=0.5), default=2.0, show_default=True,
              help="Soak window of each swap, seconds.")
@click.option("--keep", is_flag=True,
              help="Leave the stack up at the end (in its temp dir) and print the commands "
                   "that drive it and stop it, instead of `down` and removing the dir.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON document on stdout, no progress.")
def demo_command(rate: float, soak: float, keep: bool, output: str) -> None:
    """Run swapctld in a temp dir, swap market_data v1 -> v2 under load, roll back.

    Starts supervisord, swapctld and three reference relays (as `swapctl up`), drives
    market_data with an independent load checker, swaps and rolls back through the
    control API, prints every report and the checker's verdict, then stops everything
    (as `swapctl down`) and removes the temp dir, also on Ctrl-C. About 15 s.
    With --keep, a demo that ran to its end leaves the stack up instead and prints the
    commands (with their --config-dir) to drive it and to stop it.

    Exit 0 when both swaps committed with a clean canary and the load checker saw
    nothing lost, duplicated, reordered or corrupted, no disconnect, and the strategy
    consumer alive; 1 otherwise (or when interrupted).
    """
    say = (lambda _: None) if output == "json" else click.echo
    try:
        result = run_demo(rate, soak, say, keep)
    except KeyboardInterrupt:  # before the demo had started anything
        sys.exit(EXIT_FAILED)
    if output == "json":
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    elif result.ok:
        left = f"the stack left up in {result.root}" if result.kept else "nothing left running"
        click.echo(f"\ndemo OK in {result.wall_s:.1f} s; {left}")
    else:
        click.echo(f"\ndemo FAILED in {result.wall_s:.1f} s:")
        for problem in result.problems():
            click.echo(f"  - {problem}")
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


def register(group: click.Group) -> None:
    group.add_command(demo_command)
