"""`swapctl demo`: relays, traffic, a hot swap, an automatic and a manual rollback."""

from __future__ import annotations

import json
import sys

import click

from swapctl.cli.exits import EXIT_FAILED, EXIT_OK
from swapctl.demo import run_demo


@click.command("demo")
@click.option("--rate", type=click.FloatRange(min=100), default=20_000.0, show_default=True,
              help="Background load, messages/s.")
@click.option("--soak", type=click.FloatRange(min=0.5), default=2.0, show_default=True,
              help="Soak window of each swap, seconds.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def demo_command(rate: float, soak: float, output: str) -> None:
    """Run the whole story in a temp dir and print the reports (under a minute).

    Exit 0 when the swap committed, both rollbacks happened and the load checker saw
    nothing lost, duplicated, reordered, corrupted, and no disconnect.
    """
    say = (lambda _: None) if output == "json" else click.echo
    result = run_demo(rate, soak, say)
    if output == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"\ndemo {'OK' if result.ok else 'FAILED'} in {result.wall_s:.1f} s; "
                   "nothing left running")
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


def register(group: click.Group) -> None:
    group.add_command(demo_command)
