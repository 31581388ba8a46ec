"""`swapctl swap-legacy`: swaps that involve a legacy relay (takeover, bridge, restart).

Thin: parse, build a `LegacySwap`, call `run_strategy`, render. Exit codes: 0 the swap
completed and every figure is 0; 1 it completed with losses or disconnects, or was
rolled back, or failed; 2 bad usage. Register with `register(group)`.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from swapctl.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from swapctl.errors import SwapctlError, UsageError
from swapctl.legacy import layout as lay
from swapctl.legacy.run import STRATEGIES, LegacySwap, ReleaseSpec, old_relay, pick, run_strategy

DEFAULT_STATE = Path("/var/lib/swapctl/legacy")


def _spec(name: str, command: str | None, legacy: bool) -> ReleaseSpec | None:
    if command is None:
        return None
    argv = tuple(shlex.split(command))
    if not argv:
        raise UsageError(f"--{name}: empty command; give the relay's command line")
    return ReleaseSpec(name, argv, legacy)


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
              help="Canary messages/s during the swap (0: none).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON document on stdout.")
def swap_legacy(**o: Any) -> None:
    """Swap a relay where one side does not speak the handoff protocol."""
    sys.exit(run_legacy(o))


def run_legacy(o: dict[str, Any]) -> int:
    """The exit code of a legacy swap (also `swapctl swap --strategy ...` standalone)."""
    try:
        return _run(o)
    except (UsageError, click.UsageError) as exc:
        click.echo(f"swapctl: error: {exc}", err=True)
        return EXIT_USAGE
    except SwapctlError as exc:
        click.echo(f"swapctl: {exc}", err=True)
        return EXIT_FAILED


def _run(o: dict[str, Any]) -> int:
    public: Path = o["public"].absolute()
    compiled: Path = (o["compiled"] or public).absolute()
    state: Path = (o["state_dir"] or DEFAULT_STATE / public.stem).absolute()
    layout = lay.Layout(public=public, compiled=compiled, root=state)
    from_ = _spec("from", o["from_cmd"], o["from_legacy"])
    if o["migrate"]:
        return _migrate(layout, from_, state, o["output"])
    to = _spec("to", o["to_cmd"], o["to_legacy"])
    if to is None:
        raise UsageError("--to is required: the new release's command")
    request = LegacySwap(layout, to, state, from_=from_, canary_rate=o["canary_rate"])
    strategy = o["strategy"]
    if strategy == "auto":
        current = old_relay(layout)
        from_legacy = current[1].get("kind") == "legacy" if current else o["from_legacy"]
        strategy, why = pick(from_legacy, to.legacy)
        click.echo(f"plan: strategy {strategy}: {why}", err=o["output"] == "json")
        if strategy == "handoff":
            raise UsageError("use `swapctl swap` for two handoff-capable releases")
    report = run_strategy(strategy, request)
    if o["output"] == "json":
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        click.echo(report.render_text())
    return EXIT_OK if report.clean else EXIT_FAILED


def _migrate(layout: lay.Layout, from_: ReleaseSpec | None, state: Path, output: str) -> int:
    if from_ is None or not from_.legacy:
        raise UsageError("--migrate needs --from CMD: the legacy release to run in the slot")
    migration, _ = lay.migrate(layout, list(from_.command), state / "logs")
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
