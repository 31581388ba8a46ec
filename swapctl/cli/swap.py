"""`swapctl swap` (standalone, no daemon), `swapctl rollback`, `swapctl commit`."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

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
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), required=True,
              help="Public socket path the clients connect to.")
@click.option("--from", "from_cmd", required=True, metavar="CMD",
              help="Command of the running release (handoff-capable), started first.")
@click.option("--to", "to_cmd", required=True, metavar="CMD", help="Command of the candidate.")
@click.option("--soak", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds the old release stays warm while the candidate is watched.")
@click.option("--rollback-after", type=click.FloatRange(min=0),
              help="Ask for a rollback this many seconds into the soak (drills, demos).")
@click.option("--canary-rate", type=click.FloatRange(min=0), default=2000.0, show_default=True,
              help="Canary messages per second (0: no canary).")
@click.option("--pause-budget-ms", type=click.FloatRange(min=0), default=250.0,
              show_default=True, help="Server-side pause above which the swap rolls back.")
@click.option("--domain", type=click.Choice([d.value for d in Domain]), default="market_data",
              show_default=True)
@click.option("--profile", type=click.Choice([p.value for p in Profile]), default="alphapulse",
              show_default=True)
@click.option("--state-dir", type=click.Path(path_type=Path),
              help="Control/request sockets, relay logs and journal [default: beside the socket].")
@_output
def swap_command(**o: Any) -> None:
    """Start --from on SOCKET, hand every client over to --to, prove it, report.

    Runs without the daemon: the relays live as long as this command. During the
    soak, `swapctl rollback --socket SOCKET` (or commit) steers it. Exit 0 when
    committed with a clean canary, 1 when rolled back or anything was lost.
    """
    dom = domain_byte(Domain(o["domain"]), Profile(o["profile"]))
    state_dir: Path = o["state_dir"] or state_dir_for(o["socket_path"])
    settings = SwapSettings(deadlines=Deadlines(soaking=o["soak"]),
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
        run = SwapRun(service, _release("to", o["to_cmd"]), settings, canary=canary,
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
    @click.command(name)
    @click.option("--socket", "socket_path", type=click.Path(path_type=Path), required=True,
                  help="Public socket of the service being swapped.")
    @click.option("--state-dir", type=click.Path(path_type=Path))
    def command(socket_path: Path, state_dir: Path | None) -> None:
        target = (state_dir or state_dir_for(socket_path)) / "requests.sock"
        send_request(target, name)
        click.echo(f"{name} requested for the swap on {socket_path}")

    verb = {"rollback": "roll back", "commit": "commit"}[name]
    command.help = f"Ask the swap running on SOCKET to {verb} now (during verify or soak)."
    return command


def register(group: click.Group) -> None:
    group.add_command(swap_command)
    group.add_command(_request_command("rollback"))
    group.add_command(_request_command("commit"))
