"""`swapctl run PLAYBOOK` and `swapctl drill SERVICE`: playbooks and rollback drills.

Thin: parse, build the runner's options, run, render. Exit codes (swapctl/cli/exits.py):
0 every step and gate passed; 1 a step or gate failed, timed out or the run was
interrupted (the baseline was restored); 2 bad playbook, option or configuration, a
drill refused by a window, or another run holds the service; 3 swapctld or a relay
unhealthy; 6 the baseline could not be restored (operator action needed); 7 swapctld
does not answer. docs/playbooks.md has the details.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

import swapctl
from swapctl.cli.exits import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ROLLBACK_FAILED,
    EXIT_UNHEALTHY,
    EXIT_UNKNOWN_SERVICE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from swapctl.cli.ops import _releases, _services, config_dir_option, output_option

STANDARD_DRILL = "rollback-drill.yaml"


def _params(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: give NAME=VALUE, e.g. soak=1s",
                                     param_hint="--param")
        out[name] = value
    return out


def _progress(output: str) -> Any:
    quiet = output == "json" and not sys.stderr.isatty()
    return (lambda _line: None) if quiet else (lambda line: click.echo(line, err=True))


def _standard_drill(config_dir: Path) -> Path:
    """The standard drill: CONFIG_DIR/playbooks/ (production), else the checkout's."""
    for candidate in (config_dir / "playbooks" / STANDARD_DRILL,
                      Path(swapctl.__file__).resolve().parents[1] / "playbooks" / STANDARD_DRILL):
        if candidate.is_file():
            return candidate
    raise click.UsageError(f"no {STANDARD_DRILL} in {config_dir / 'playbooks'}: copy "
                           "playbooks/ there (systemd/README.md) or give --playbook PATH")


def _execute(playbook_path: Path, *, config_dir: Path | None, service: str | None,
             candidate: str | None, params: dict[str, str], output: str, dry_run: bool,
             override_window: bool) -> None:
    from swapctl.config.load import load_config  # noqa: PLC0415 (pydantic: 0.4 s)
    from swapctl.daemon.api import ApiError, DaemonUnreachable  # noqa: PLC0415
    from swapctl.playbook import reports  # noqa: PLC0415
    from swapctl.playbook.load import load_playbook  # noqa: PLC0415
    from swapctl.playbook.recovery import Busy  # noqa: PLC0415
    from swapctl.playbook.restore import RestoreFailed  # noqa: PLC0415
    from swapctl.playbook.runner import Runner, RunOptions  # noqa: PLC0415

    playbook = load_playbook(playbook_path, params)
    service = service or playbook.header.service
    if not service:
        raise click.UsageError(f"{playbook_path} names no service: give --service SERVICE")
    config = load_config(config_dir)
    _known(config, service)
    if dry_run:
        plan = {**playbook.plan(), "service": service,
                "candidate": candidate or playbook.header.candidate}
        click.echo(json.dumps(plan, indent=2) if output == "json" else _plan_text(plan))
        sys.exit(EXIT_OK)
    options = RunOptions(service, candidate, override_window, _progress(output))
    try:
        result = Runner(playbook, config, options).run()
    except DaemonUnreachable as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    except RestoreFailed as exc:
        _fail(f"{exc} (restoring a run that did not end)", EXIT_ROLLBACK_FAILED)
    except Busy as exc:
        _fail(str(exc), EXIT_USAGE)
    except ApiError as exc:
        _fail(str(exc), EXIT_USAGE if exc.code in ("usage", "busy") else EXIT_UNHEALTHY)
    report = {**reports.summary(result.journal), "files": result.files}
    if output == "json":
        click.echo(reports.dumps(report))
    else:
        click.echo(reports.render_text(report))
        for kind, path in result.files.items():
            click.echo(f"  {kind}: {path}")
    if result.state == "refused":
        sys.exit(EXIT_USAGE)
    if result.restore_failed:
        sys.exit(EXIT_ROLLBACK_FAILED)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


def _known(config: Any, service: str) -> None:
    """Exit 4 for an unknown service, as every command does; a service whose file is
    broken raises its configuration error (exit 2)."""
    from swapctl.config.errors import UnknownService  # noqa: PLC0415 (pydantic: 0.4 s)
    try:
        config.service(service)
    except UnknownService as exc:
        _fail(str(exc), EXIT_UNKNOWN_SERVICE)


def _fail(message: str, code: int) -> None:
    click.echo(f"swapctl: {message}", err=True)
    sys.exit(code)


def _plan_text(plan: dict[str, Any]) -> str:
    lines = [f"plan: {plan['playbook']} ({plan['kind']}) on {plan['service']}, candidate "
             f"{plan['candidate']}; params {plan['params'] or '-'}"]
    for section in ("steps", "cleanup"):
        lines.append(f"  {section}:")
        for step in plan[section]:
            extra = {k: v for k, v in step.items()
                     if k not in ("section", "index", "name", "timeout_s", "kind")}
            keys = " ".join(f"{k}={v}" for k, v in extra.items())
            lines.append(f"    {step['index'] + 1:>2}. {step['name']} [{step['kind']}, "
                         f"<= {step['timeout_s']:g}s] {keys}".rstrip())
    return "\n".join(lines)


param_option = click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
                            help="Set a playbook parameter (repeatable), e.g. soak=1s.")
candidate_option = click.option("--candidate", shell_complete=_releases,
                                 help="The release @candidate names [default: "
                                 "the playbook's candidate, else the first other "
                                 "handoff-capable release; never a legacy one].")


@click.command("run")
@click.argument("playbook", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@config_dir_option
@click.option("--service", "-s", shell_complete=_services,
              help="The service [default: the playbook's service].")
@candidate_option
@param_option
@click.option("--dry-run", is_flag=True, help="Print the plan; do nothing.")
@click.option("--override-window", is_flag=True,
              help="Run a drill playbook even inside a refused window.")
@output_option
def run_command(*, playbook: Path, config_dir: Path | None, service: str | None,
                candidate: str | None, params: tuple[str, ...], dry_run: bool,
                override_window: bool, output: str) -> None:
    """Run a playbook (playbooks/*.yaml) against a service through swapctld.

    Steps run in order and stop at the first failure; cleanup steps always run.
    Exit 0 passed, 1 failed (baseline restored), 2 usage, 6 baseline NOT restored.
    """
    _execute(playbook, config_dir=config_dir, service=service, candidate=candidate,
             params=_params(params), output=output, dry_run=dry_run,
             override_window=override_window)


@click.command("drill")
@click.argument("service", required=False, shell_complete=_services)
@config_dir_option
@click.option("--schedule", is_flag=True, help="Show the next runs of the drill timer.")
@click.option("--count", type=click.IntRange(min=1, max=100), default=5, show_default=True,
              help="With --schedule: how many runs.")
@click.option("--timer", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="With --schedule: the timer unit to read [default: the installed one].")
@click.option("--playbook", "playbook_path", type=click.Path(path_type=Path, dir_okay=False,
                                                             exists=True),
              help=f"The drill playbook [default: CONFIG_DIR/playbooks/{STANDARD_DRILL}].")
@candidate_option
@param_option
@click.option("--override-window", is_flag=True, help="Run even inside a refused window.")
@click.option("--dry-run", is_flag=True, help="Print the plan; do nothing.")
@output_option
def drill_command(*, service: str | None, config_dir: Path | None, schedule: bool, count: int,
                  timer: Path | None, playbook_path: Path | None, candidate: str | None,
                  params: tuple[str, ...], override_window: bool, dry_run: bool,
                  output: str) -> None:
    """The standard rollback drill of SERVICE: swap to a candidate, force a rollback
    during soak, time it, prove no message lost (playbooks/rollback-drill.yaml).

    Refused inside swapctld.yaml's drills.refuse windows unless --override-window.
    Reports (JSON, JUnit XML, Prometheus textfile) go to STATE/drills/.
    """
    if schedule:
        _schedule(service, config_dir, count, timer, output)
        return
    if not service:
        raise click.UsageError("give SERVICE (or --schedule)")
    from swapctl.config.load import default_config_dir  # noqa: PLC0415

    path = playbook_path or _standard_drill(config_dir or default_config_dir())
    _execute(path, config_dir=config_dir, service=service, candidate=candidate,
             params=_params(params), output=output, dry_run=dry_run,
             override_window=override_window)


def _schedule(service: str | None, config_dir: Path | None, count: int, timer: Path | None,
              output: str) -> None:
    from swapctl.config.load import load_config  # noqa: PLC0415
    from swapctl.playbook.windows import schedule  # noqa: PLC0415

    config = load_config(config_dir)
    names = [service] if service else sorted(config.services)
    for name in names:
        _known(config, name)
    result = [schedule(config, name, count, timer) for name in names]
    if output == "json":
        click.echo(json.dumps(result, indent=2))
        return
    for entry in result:
        click.echo(f"{entry['unit']}: OnCalendar={'; '.join(entry['on_calendar'])}, "
                   f"RandomizedDelaySec={entry['randomized_delay'] or 0}, "
                   f"Persistent={entry['persistent'] or 'false'} ({entry['files'][-1]})")
        for run in entry["runs"]:
            refused = f"  REFUSED: {run['refused']}" if run["refused"] else ""
            click.echo(f"  {run['at']}{refused}")


def register(group: click.Group) -> None:
    group.add_command(run_command)
    group.add_command(drill_command)
