"""`swapctl swap-legacy`: swaps that involve a legacy relay (takeover, bridge, restart).

Thin: parse, build the typed `LegacyRequest` (swap_requests.py, shared with `swapctl
swap`), run it with `swap_run.run_standalone` (the one function `swapctl swap` runs too),
render. Exit codes: 0 the swap completed and every figure is 0; 1 it completed with losses
or disconnects, or was rolled back, or failed; 2 bad usage. Register with `register(group)`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from swapctl.cli import swap_run
from swapctl.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from swapctl.cli.swap_requests import (
    NO_PROOF,
    Canary,
    LegacyRequest,
    command,
    drain_deadline,
    legacy_layout,
    resolve,
)
from swapctl.errors import SwapctlError, UsageError
from swapctl.legacy import layout as lay
from swapctl.legacy.run import STRATEGIES
from swapctl.protocol.profiles import Domain, Profile


@click.command("swap-legacy", hidden=False)
@click.option("--public", "public", type=click.Path(path_type=Path), required=True,
              help="The public socket path clients connect to (a symlink swapctl owns).")
@click.option("--compiled", type=click.Path(path_type=Path),
              help="The socket path compiled into the legacy builds [default: --public].")
@click.option("--state-dir", type=click.Path(path_type=Path),
              help="Slots, control socket and logs [default: /var/lib/swapctl/legacy/NAME].")
@click.option("--from", "from_cmd", metavar="CMD",
              help="Command of the running release (started in a slot only on a fresh box, "
                   "or by --migrate).")
@click.option("--from-legacy/--from-handoff", default=True, show_default=True,
              help="Whether the running release is a legacy build.")
@click.option("--to", "to_cmd", metavar="CMD", help="Command of the new release.")
@click.option("--to-legacy/--to-handoff", default=False, show_default=True,
              help="Whether the new release is a legacy build.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="auto", show_default=True,
              help="auto: the best the two releases allow (printed, with why, before it runs).")
@click.option("--migrate", is_flag=True,
              help="One-time: move this box to the slot layout (start --from in a slot, then "
                   "rename the public link over the relay's socket) and exit.")
@click.option("--canary-rate", type=click.FloatRange(min=0), default=1000.0, show_default=True,
              help=f"Canary messages/s during the swap. {NO_PROOF}.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON document on stdout.")
def swap_legacy(**o: Any) -> None:
    """Swap a relay where one side does not speak the handoff protocol."""
    sys.exit(guarded(lambda: _swap_legacy(o)))


def guarded(body: Callable[[], int]) -> int:
    """The exit code of a legacy swap: bad usage 2, a swapctl error 1 (the swap failed)."""
    try:
        return body()
    except (UsageError, click.UsageError) as exc:
        click.echo(f"swapctl: error: {exc}", err=True)
        return EXIT_USAGE
    except SwapctlError as exc:
        click.echo(f"swapctl: {exc}", err=True)
        return EXIT_FAILED


def _swap_legacy(o: dict[str, Any]) -> int:
    layout = legacy_layout(o["public"], o["compiled"], o["state_dir"])
    if o["migrate"]:
        return _migrate(layout, o["from_cmd"], o["from_legacy"], o["output"])
    if o["to_cmd"] is None:
        raise UsageError("--to is required: the new release's command")
    strategy, why = resolve(o["strategy"], layout, o["from_legacy"], o["to_legacy"])
    request = LegacyRequest(
        layout=layout, from_cmd=command("--from", o["from_cmd"]) if o["from_cmd"] else None,
        from_legacy=o["from_legacy"], to_cmd=command("--to", o["to_cmd"]),
        to_legacy=o["to_legacy"], strategy=strategy, why=why,
        drain_deadline=drain_deadline(strategy, None),
        canary=Canary(o["canary_rate"], Domain.MARKET_DATA, Profile.ALPHAPULSE),
        dry_run=False, output=o["output"])
    swap_run.announce(request)
    return swap_run.finish(swap_run.run_standalone(request))


def _migrate(layout: lay.Layout, from_cmd: str | None, from_legacy: bool, output: str) -> int:
    if from_cmd is None or not from_legacy:
        raise UsageError("--migrate needs --from CMD: the legacy release to run in the slot")
    argv = command("--from", from_cmd)
    migration, _ = lay.migrate(layout, list(argv), layout.root / "logs")
    result = {"slot": migration.slot, "already": migration.already,
              "replaced": migration.replaced, "public": str(layout.public),
              "target": str(layout.slot_socket(migration.slot))}
    if output == "json":
        click.echo(json.dumps(result))
    elif migration.already:
        click.echo(f"{layout.public} already points into slot {migration.slot}: nothing done")
    else:
        click.echo(f"{layout.public} -> {result['target']} (slot {migration.slot}); the old "
                   "relay keeps the clients it has: retire it with a strategy")
    return EXIT_OK


def register(group: click.Group) -> None:
    group.add_command(swap_legacy)
