"""`swapctl conformance --relay CMD`: the handoff protocol's conformance suite."""

from __future__ import annotations

import json
import shlex
import sys

import click

from swapctl.cli.exits import EXIT_FAILED, EXIT_OK
from swapctl.conformance.suite import ALL_CASES, Result, render_text, run, select, to_dict


@click.command("conformance")
@click.option("--relay", "relay", metavar="CMD",
              help="The relay's command line, started the way swapctl starts a release "
                   "(SWAPCTL_HANDOFF, SWAPCTL_TOKEN, SWAPCTL_SOCKET, SWAPCTL_RELEASE set).")
@click.option("--case", "cases", multiple=True, metavar="NAME",
              help="Run only this case (repeatable); --list names them.")
@click.option("--list", "list_cases", is_flag=True, help="List the cases and exit.")
@click.option("--domain-byte", type=click.IntRange(0, 255), default=1, show_default=True,
              help="relay_domain byte the relay forwards (market data, alphapulse: 1).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON document on stdout.")
def conformance_command(relay: str | None, cases: tuple[str, ...], list_cases: bool,
                        domain_byte: int, output: str) -> None:
    """Check a relay against the handoff protocol: every message, deadline and failure
    case, plus whole frames, echo and broadcast.

    \b
    swapctl conformance --relay "python -m swapctl.relay --log-level warning"
    Exit 0 when every case passes, 1 when any fails, 2 on a usage error.
    """
    if list_cases:
        for case in ALL_CASES:
            click.echo(f"{case.group + '/' + case.name:<38} {case.summary}")
        return
    if not relay:
        raise click.UsageError("give --relay CMD: the relay command to check")
    command = tuple(shlex.split(relay))
    chosen = select(cases)
    progress = None if output == "json" else _progress
    results = run(command, chosen, domain_byte, progress)
    if output == "json":
        click.echo(json.dumps(to_dict(command, results), indent=2))
    else:
        click.echo(render_text(command, results))
    sys.exit(EXIT_OK if all(r.ok for r in results) else EXIT_FAILED)


def _progress(result: Result) -> None:
    click.echo(f"{'pass' if result.ok else 'FAIL'} {result.group}/{result.name} "
               f"({result.seconds:.2f}s)", err=True)


def register(group: click.Group) -> None:
    group.add_command(conformance_command)
