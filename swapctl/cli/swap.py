"""`swapctl swap`, `rollback`, `commit`, `abort`: through swapctld (`swap SERVICE`), or
standalone with no daemon (`swap --socket S --from CMD --to CMD`, for CI and tests).

`swap` parses, builds the typed request of its mode (swap_requests.py: every option that
does not apply is refused, exit 2), then: through swapctld, `ops.daemon_swap`; standalone
with --dry-run, the plan (swap_plan.py) and nothing else; standalone,
`swap_run.run_standalone` (the one function that runs a standalone swap, handoff or
legacy, and decides its exit code)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from swapctl.cli import legacy as legacy_cli
from swapctl.cli import ops, swap_plan, swap_requests, swap_run
from swapctl.cli.exits import EXIT_OK
from swapctl.cli.swap_requests import (
    LEGACY_STRATEGIES,
    NO_PROOF,
    DaemonSwap,
    HandoffRequest,
    LegacyRequest,
)
from swapctl.errors import UsageError
from swapctl.protocol.profiles import Domain, Profile
from swapctl.swap.requests import send_request, state_dir_for

_output = click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
                       show_default=True, help="json: one JSON document on stdout.")


@click.command("swap")
@click.argument("service", required=False, shell_complete=ops._services)
@ops.config_dir_option
@click.option("--to", "to", metavar="RELEASE|CMD", shell_complete=ops._releases,
              help="With SERVICE: the release to swap to [default: the service file's active]. "
                   "Standalone: the candidate's command.")
@click.option("--soak", callback=ops._duration, metavar="D",
              help="Soak window (30s, 2m): the old release stays warm while the candidate is "
                   "watched [default: the service file's soak; standalone 5s]. Standalone "
                   "bridge: the drain deadline [default 60s]; takeover and restart have no soak.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (mode, strategy and why, releases, socket, state dir, phases "
                   "and deadlines) and do nothing else: nothing started, written or bound.")
@click.option("--yes", "-y", is_flag=True,
              help="Through swapctld: do not ask before swapping on a terminal.")
@click.option("--no-wait", is_flag=True,
              help="Through swapctld: return once swapctld has accepted the swap.")
@click.option("--timeout", callback=ops._duration, metavar="D",
              help="Through swapctld: stop following after D (exit 5); the swap goes on.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path),
              help="Standalone: the public socket path the clients connect to.")
@click.option("--from", "from_cmd", metavar="CMD",
              help="Standalone: command of the running release, started first (legacy: only "
                   "on a fresh box, in a free slot).")
@click.option("--rollback-after", type=click.FloatRange(min=0),
              help="Standalone handoff: ask for a rollback this many seconds into the soak "
                   "(drills).")
@click.option("--canary-rate", type=click.FloatRange(min=0), default=2000.0, show_default=True,
              help=f"Standalone: canary messages per second. {NO_PROOF}.")
@click.option("--pause-budget-ms", type=click.FloatRange(min=0), default=250.0,
              show_default=True, help="Standalone handoff: server-side pause that rolls back.")
@click.option("--domain", type=click.Choice([d.value for d in Domain]), default="market_data",
              show_default=True, help="Standalone: the relay domain (the canary's messages).")
@click.option("--profile", type=click.Choice([p.value for p in Profile]), default="alphapulse",
              show_default=True, help="Standalone: the numbering profile (header byte 4).")
@click.option("--state-dir", type=click.Path(path_type=Path),
              help="Standalone: control/request sockets, logs, journal [default: beside the "
                   "socket; legacy: /var/lib/swapctl/legacy/NAME, the slots' root].")
@click.option("--strategy", type=click.Choice(["auto", "handoff", *LEGACY_STRATEGIES]),
              default="auto", show_default=True,
              help="auto: the best the two releases allow, printed with why before it runs "
                   "(handoff between handoff-capable releases; docs/legacy.md for the others).")
@click.option("--from-legacy/--from-handoff", default=False, show_default=True,
              help="Standalone: the running release is a legacy build (no handoff protocol).")
@click.option("--to-legacy/--to-handoff", default=False, show_default=True,
              help="Standalone: the new release is a legacy build.")
@click.option("--old-pid", type=click.IntRange(min=1), metavar="PID",
              help="Standalone legacy: adopt the relay serving --socket that swapctl did "
                   "not start (a takeover moves its clients) [default: the process holding "
                   "the socket's listener, when a socket is there and no slot serves it].")
@click.option("--compiled", type=click.Path(path_type=Path),
              help="Standalone legacy: the socket path compiled into the legacy builds "
                   "[default: --socket].")
@_output
@click.pass_context
def swap_command(ctx: click.Context, /, **o: Any) -> None:
    """Swap SERVICE to another release with no client disconnected, prove it, report.

    \b
    Through swapctld:   swapctl swap market_data --to v2 [--soak 60s] [--dry-run]
    Standalone handoff: swapctl swap --socket S --from CMD --to CMD [--dry-run]
    Standalone legacy:  swapctl swap --socket S --to CMD --strategy takeover|bridge|restart
                        (or --from-legacy/--to-legacy with --strategy auto) [--dry-run]
    First swap of a box: swapctl swap --socket S --to CMD [--old-pid PID] [--dry-run]
                        (a relay swapctl did not start serves S: taken over, 0 cut)
    An option that does not apply to the chosen mode is refused (exit 2), saying why.
    Exit 0 when committed and proven clean (every figure measured and 0); 1 when rolled
    back, anything was lost or cut, or a figure is unknown (--canary-rate 0: committed,
    unproven); 6 when the rollback itself failed; 5 on --timeout; 7 when swapctld does
    not answer.
    """
    request = swap_requests.build(o, _given(ctx))
    if isinstance(request, DaemonSwap):
        ops.daemon_swap(request.config_dir, request.service, request.to, request.soak,
                        dry_run=request.dry_run, yes=request.yes, no_wait=request.no_wait,
                        timeout=request.timeout, output=request.output,
                        strategy=request.strategy)
        return
    if request.dry_run:
        plan = swap_plan.plan(request)
        click.echo(json.dumps(plan, indent=2) if request.output == "json"
                   else swap_plan.text(plan))
        sys.exit(EXIT_OK)
    standalone(request)


def _given(ctx: click.Context) -> set[str]:
    """The options the operator set (command line or environment), not left at default."""
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT,
                                                      ParameterSource.DEFAULT_MAP)}


def standalone(request: HandoffRequest | LegacyRequest) -> None:
    """Say the plan line (and the no-proof warning), run the swap, print, exit."""
    swap_run.announce(request)
    if isinstance(request, LegacyRequest):  # a legacy swap's own error: exit 1
        code = legacy_cli.guarded(lambda: swap_run.finish(swap_run.run_standalone(request)))
    else:
        code = swap_run.finish(swap_run.run_standalone(request))
    sys.exit(code)


def _request_command(name: str) -> click.Command:
    daemon = ops.request_command(name)

    @click.command(name)
    @click.argument("service", required=False, shell_complete=ops._services)
    @ops.config_dir_option
    @click.option("--socket", "socket_path", type=click.Path(path_type=Path),
                  help="Standalone: public socket of the service being swapped.")
    @click.option("--state-dir", type=click.Path(path_type=Path), help="Standalone.")
    @click.option("--yes", "-y", is_flag=True, help="rollback with no swap running: do not "
                  "ask on a terminal.")
    @click.option("--no-wait", is_flag=True, help="rollback with no swap running: return "
                  "once accepted.")
    @click.option("--timeout", callback=ops._duration, metavar="D")
    @_output
    def command(service: str | None, config_dir: Path | None, socket_path: Path | None,
                **o: Any) -> None:
        if service is not None:
            daemon(config_dir, service, o["output"], dry_run=False, yes=o["yes"],
                   no_wait=o["no_wait"], timeout=o["timeout"])
            return
        if socket_path is None or name == "abort":
            raise UsageError(f"give SERVICE (`swapctl {name} market_data`)"
                             + ("" if name == "abort" else
                                ", or --socket for a standalone swap"))
        target = (o["state_dir"] or state_dir_for(socket_path)) / "requests.sock"
        send_request(target, name)
        if o["output"] == "json":
            click.echo(json.dumps({"requested": name, "socket": str(socket_path)}))
        else:
            click.echo(f"{name} requested for the swap on {socket_path}")

    command.help = {
        "rollback": "Roll SERVICE back: the running swap (during verify or soak), or, with "
                    "none running, swap back to the release the last committed swap replaced.",
        "commit": "Commit SERVICE's running swap now, before its soak window ends.",
        "abort": "Abort SERVICE's running swap at any phase (it rolls back).",
    }[name]
    return command


def register(group: click.Group) -> None:
    group.add_command(swap_command)
    for name in ("rollback", "commit", "abort"):
        group.add_command(_request_command(name))
