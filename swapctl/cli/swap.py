"""`swapctl swap`, `rollback`, `commit`, `abort`: through swapctld (`swap SERVICE`), or
standalone with no daemon (`swap --socket S --from CMD --to CMD`, for CI and tests)."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from swapctl.cli import legacy as legacy_cli
from swapctl.cli import ops
from swapctl.cli.exits import EXIT_FAILED, EXIT_OK
from swapctl.errors import UsageError
from swapctl.protocol.profiles import Domain, Profile, domain_byte
from swapctl.swap import report
from swapctl.swap.canary import Canary
from swapctl.swap.executor import SwapRun, SwapSettings
from swapctl.swap.journal import Journal
from swapctl.swap.machine import Deadlines
from swapctl.swap.requests import RequestInbox, send_request, state_dir_for
from swapctl.swap.service import Service
from swapctl.swap.spawner import Release, SubprocessSpawner

_output = click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
                       show_default=True, help="json: one JSON document on stdout.")


def _release(name: str, command: str) -> Release:
    argv = tuple(shlex.split(command))
    if not argv:
        raise UsageError(f"--{name}: empty command; give the relay's command line")
    return Release(name, argv)


@click.command("swap")
@click.argument("service", required=False, shell_complete=ops._services)
@ops.config_dir_option
@click.option("--to", "to", metavar="RELEASE|CMD",
              help="With SERVICE: the release to swap to [default: the service file's active]. "
                   "Standalone: the candidate's command.")
@click.option("--soak", callback=ops._duration, metavar="D",
              help="Soak window (30s, 2m): the old release stays warm while the candidate is "
                   "watched [default: the service file's soak; standalone 5s].")
@click.option("--dry-run", is_flag=True, help="Print the plan (strategy, phases, deadlines).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before swapping on a terminal.")
@click.option("--no-wait", is_flag=True, help="Return once swapctld has accepted the swap.")
@click.option("--timeout", callback=ops._duration, metavar="D",
              help="Stop following after D (exit 5); the swap goes on in swapctld.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path),
              help="Standalone: the public socket path the clients connect to.")
@click.option("--from", "from_cmd", metavar="CMD",
              help="Standalone: command of the running release (handoff-capable), started first.")
@click.option("--rollback-after", type=click.FloatRange(min=0),
              help="Standalone: ask for a rollback this many seconds into the soak (drills).")
@click.option("--canary-rate", type=click.FloatRange(min=0), default=2000.0, show_default=True,
              help="Standalone: canary messages per second (0: no canary).")
@click.option("--pause-budget-ms", type=click.FloatRange(min=0), default=250.0,
              show_default=True, help="Standalone: server-side pause that rolls back.")
@click.option("--domain", type=click.Choice([d.value for d in Domain]), default="market_data",
              show_default=True, help="Standalone: the relay domain.")
@click.option("--profile", type=click.Choice([p.value for p in Profile]), default="alphapulse",
              show_default=True, help="Standalone: the numbering profile.")
@click.option("--state-dir", type=click.Path(path_type=Path),
              help="Standalone: control/request sockets, logs, journal [default: beside the "
                   "socket].")
@click.option("--strategy", type=click.Choice(["auto", "handoff", "takeover", "bridge",
                                               "restart"]), default="auto", show_default=True,
              help="auto: the best the two releases allow, printed with why before it runs "
                   "(handoff between handoff-capable releases; docs/legacy.md for the others).")
@click.option("--from-legacy/--from-handoff", default=False, show_default=True,
              help="Standalone: the running release is a legacy build (no handoff protocol).")
@click.option("--to-legacy/--to-handoff", default=False, show_default=True,
              help="Standalone: the new release is a legacy build.")
@click.option("--compiled", type=click.Path(path_type=Path),
              help="Standalone, legacy: the socket path compiled into the legacy builds "
                   "[default: --socket].")
@_output
def swap_command(**o: Any) -> None:
    """Swap SERVICE to another release with no client disconnected, prove it, report.

    \b
    Through swapctld:  swapctl swap market_data --to v2 [--soak 60s] [--dry-run]
    Standalone:        swapctl swap --socket S --from CMD --to CMD
    Exit 0 when committed with a clean canary; 1 when rolled back or anything was lost;
    6 when the rollback itself failed; 5 on --timeout; 7 when swapctld does not answer.
    """
    if o["service"] is not None:
        if o["socket_path"] or o["from_cmd"]:
            raise UsageError("give SERVICE (swap through swapctld) or --socket/--from "
                             "(standalone), not both")
        ops.daemon_swap(o["config_dir"], o["service"], o["to"], o["soak"], dry_run=o["dry_run"],
                        yes=o["yes"], no_wait=o["no_wait"], timeout=o["timeout"],
                        output=o["output"], strategy=o["strategy"])
        return
    legacy = o["from_legacy"] or o["to_legacy"] or o["strategy"] not in ("auto", "handoff")
    needed = (("socket", "socket_path"), ("to", "to")) if legacy else \
        (("socket", "socket_path"), ("from", "from_cmd"), ("to", "to"))
    missing = [f"--{n}" for n, k in needed if not o[k]]
    if missing:
        raise UsageError(f"give SERVICE (swap through swapctld), or {', '.join(missing)} "
                         "for a standalone swap")
    if legacy:
        if o["strategy"] == "handoff":
            raise UsageError("--strategy handoff needs two handoff-capable releases: drop "
                             "--from-legacy/--to-legacy, or choose takeover, bridge or restart")
        sys.exit(legacy_cli.run_legacy({
            "public": o["socket_path"], "compiled": o["compiled"], "state_dir": o["state_dir"],
            "from_cmd": o["from_cmd"], "from_legacy": o["from_legacy"], "to_cmd": o["to"],
            "to_legacy": o["to_legacy"], "strategy": o["strategy"], "migrate": False,
            "canary_rate": o["canary_rate"], "output": o["output"]}))
    if o["output"] != "json" or sys.stderr.isatty():
        click.echo("plan: strategy handoff: both releases speak the handoff protocol, so no "
                   "client is disconnected", err=True)
    standalone(o)


def standalone(o: dict[str, Any]) -> None:
    """Start --from on SOCKET, hand every client over to --to, prove it, report. The
    relays live as long as this command; `swapctl rollback --socket SOCKET` steers it."""
    dom = domain_byte(Domain(o["domain"]), Profile(o["profile"]))
    state_dir: Path = o["state_dir"] or state_dir_for(o["socket_path"])
    soak = 5.0 if o["soak"] is None else o["soak"]
    settings = SwapSettings(deadlines=Deadlines(soaking=soak),
                            pause_budget_ms=o["pause_budget_ms"])
    service = Service(o["socket_path"], state_dir, SubprocessSpawner(state_dir / "logs"))
    canary = Canary(o["socket_path"], o["canary_rate"], domain_byte=dom) \
        if o["canary_rate"] > 0 else None
    inbox: RequestInbox | None = None
    try:
        service.open(_release("from", o["from_cmd"]))
        inbox = RequestInbox(state_dir / "requests.sock")
        if canary is not None:
            canary.start()
            time.sleep(0.2)  # steady state before the swap
        requests = _requests(inbox, o["rollback_after"])
        journal = Journal(state_dir / "journal.jsonl", _progress(o["output"]))
        run = SwapRun(service, _release("to", o["to"]), settings, canary=canary,
                      requests=requests, journal=journal, domain_byte=dom).run()
        result = report.build(run, canary.stop() if canary else None)
    finally:
        if canary is not None:
            canary.close()
        if inbox is not None:
            inbox.close()
        service.close()
    _emit(result, o["output"])
    clean = result["decision"] == "committed" and not _losses(result)
    sys.exit(EXIT_OK if clean else EXIT_FAILED)


def _requests(inbox: RequestInbox, rollback_after: float | None) -> Callable[[], str | None]:
    """Operator requests from the inbox, plus a scripted rollback `rollback_after` seconds
    after the first poll (the first poll happens when the soak starts)."""
    started: list[float] = []

    def poll() -> str | None:
        request = inbox.poll()
        if request is not None or rollback_after is None:
            return request
        if not started:
            started.append(time.monotonic())
        return "rollback" if time.monotonic() - started[0] >= rollback_after else None

    return poll


def _progress(output: str) -> list[Callable[[dict[str, Any]], None]]:
    """Live phase lines on stderr: always for text output; for JSON only on a terminal
    (stdout stays one JSON document either way)."""
    if output == "json" and not sys.stderr.isatty():
        return []
    started: list[float] = []

    def show(record: dict[str, Any]) -> None:
        if not started:
            started.append(float(record["at"]))
        click.echo(report.progress_line(record, started[0]), err=True)

    return [show]


def _losses(result: dict[str, Any]) -> int:
    canary = result.get("canary") or {}
    return sum(int(canary.get(k, 0)) for k in ("lost", "duplicated", "reordered", "corrupted",
                                               "disconnects", "dead"))


def _emit(result: dict[str, Any], output: str) -> None:
    if output == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(report.render_text(result))


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
