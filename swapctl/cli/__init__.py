"""The `swapctl` command line: thin click commands that parse, call and render.

Only this package calls `sys.exit`. Exit codes (README.md's table; swapctl/cli/exits.py):
  0 ok; 1 check failed (loss, difference, failed swap); 2 usage or configuration error;
  3 unhealthy or runtime error (a relay or socket could not be reached); 4 unknown
  service; 5 --timeout passed; 6 a rollback failed; 7 swapctld does not answer. The
  diff family (diff, replay, shadow) says 2 for any error (docs/diff.md).
"""

from __future__ import annotations

import sys

import click

from swapctl.cli import (
    bench,
    bench_daemon,
    bench_drill,
    bench_handoff,
    bench_soak,
    bench_strategies,
    bench_table,
    config,
    conformance,
    demo,
    diff,
    init,
    legacy,
    load,
    ops,
    playbook,
    relay,
    report,
    supervisord_config,
    swap,
)
from swapctl.cli.exits import EXIT_RUNTIME, EXIT_UNKNOWN_SERVICE, EXIT_USAGE
from swapctl.config.errors import UnknownService
from swapctl.errors import SwapctlError, UsageError


class SwapctlGroup(click.Group):
    """Translates swapctl errors into one line for the operator and an exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except UnknownService as exc:  # (a usage error with its own code, everywhere)
            click.echo(f"swapctl: error: {exc}", err=True)
            sys.exit(EXIT_UNKNOWN_SERVICE)
        except UsageError as exc:
            click.echo(f"swapctl: error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except SwapctlError as exc:
            click.echo(f"swapctl: {exc}", err=True)
            sys.exit(EXIT_RUNTIME)


@click.group(cls=SwapctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swapctl")
def main() -> None:
    """swapctl: zero-downtime swaps of Protocol V2 message relays."""


for _module in (relay, load, swap, legacy, ops, bench, bench_handoff, bench_strategies,
                bench_drill, bench_daemon, bench_soak, bench_table, diff, demo, config,
                playbook, conformance, init, report, supervisord_config):
    _module.register(main)
