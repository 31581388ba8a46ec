"""The operator commands that talk to swapctld: up, down, status, swap SERVICE, rollback,
commit, abort, history, report, logs; and `daemon`, which is swapctld itself.

Every command takes `--config-dir` (where swapctld.yaml names the control socket) and
`-o text|json`; JSON goes to stdout only, progress and errors to stderr. Exit codes are
in swapctl/cli/exits.py and README.md.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
from click.shell_completion import get_completion_class

from swapctl.cli import follow
from swapctl.cli.exits import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNHEALTHY,
    EXIT_UNKNOWN_SERVICE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from swapctl.daemon.api import ApiError, DaemonUnreachable
from swapctl.errors import SwapctlError
from swapctl.swap import report as swap_report

# The daemon's error codes (swapctl/daemon/api.py) -> exit codes (README.md). busy: a swap
# (named, with its phase) or too many clients; too_late / refused: the running swap cannot
# honour the request in its phase; invalid / too_large / timeout: a malformed request.
CODES = {"unknown_service": EXIT_UNKNOWN_SERVICE, "usage": EXIT_USAGE, "busy": EXIT_USAGE,
         "invalid": EXIT_USAGE, "too_late": EXIT_USAGE, "refused": EXIT_USAGE,
         "too_large": EXIT_USAGE, "timeout": EXIT_USAGE, "permission": EXIT_USAGE,
         "unhealthy": EXIT_UNHEALTHY, "internal": EXIT_UNHEALTHY}


def _services(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of SERVICE: the service files in the configuration directory."""
    from swapctl.config.load import DAEMON_FILE, default_config_dir  # noqa: PLC0415 (pydantic: 0.4 s)
    directory = ctx.params.get("config_dir") or default_config_dir()
    try:
        names = [p.stem for p in Path(directory).glob("*.yaml") if p.name != DAEMON_FILE]
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(incomplete))


def _releases(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of a release (swap --to, drill --candidate): the releases of the
    SERVICE already typed, read from its file as plain YAML (quick, and a file with a
    problem elsewhere still completes)."""
    import yaml  # noqa: PLC0415 (only when completing)

    from swapctl.config.load import default_config_dir  # noqa: PLC0415 (pydantic: 0.4 s)
    # (the option waiting for its value stops click's parse before it fills SERVICE in:
    # then SERVICE is the first positional argument left over)
    service = ctx.params.get("service") or next(iter(ctx.args), None)
    if not service:
        return []
    directory = ctx.params.get("config_dir") or default_config_dir()
    try:
        data = yaml.safe_load((Path(directory) / f"{service}.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    releases = data.get("releases") if isinstance(data, dict) else None
    if not isinstance(releases, dict):
        return []
    return sorted(str(n) for n in releases if str(n).startswith(incomplete))


config_dir_option = click.option(
    "--config-dir", type=click.Path(path_type=Path, file_okay=False), is_eager=True,
    help="Directory of swapctld.yaml and the service files [default: $SWAPCTL_CONFIG_DIR, "
         "else ./configs if it has swapctld.yaml, else /etc/swapctl].")
output_option = click.option("-o", "--output", type=click.Choice(["text", "json"]),
                             default="text", show_default=True,
                             help="json: one JSON document on stdout (progress and errors "
                                  "on stderr).")
watch_output_option = click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="json: one JSON document on stdout; with --watch, one document a line.")
service_argument = click.argument("service", shell_complete=_services)


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from pydantic_core import PydanticCustomError  # noqa: PLC0415 (pydantic: 0.4 s)

    from swapctl.config.types import parse_duration  # noqa: PLC0415 (pydantic: 0.4 s)
    try:
        return parse_duration(value)
    except (PydanticCustomError, ValueError) as exc:
        raise click.BadParameter(f"{value!r}: {exc}; use e.g. 30s, 250ms, 2m") from None


def _config(config_dir: Path | None) -> Any:
    from swapctl.config.load import load_config  # noqa: PLC0415 (pydantic: 0.4 s)
    return load_config(config_dir)


def _client(config_dir: Path | None, timeout: float = 10.0) -> Any:
    from swapctl.daemon.stack import client_for  # noqa: PLC0415 (pydantic: 0.4 s)
    return client_for(_config(config_dir), timeout)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"swapctl: {message}", err=True)
    sys.exit(code)


def _calling(body: Callable[[], None], output: str = "text") -> None:
    """Run `body`, turning daemon errors into one stderr line and the documented code
    (with -o json, a refusal's details also go to stdout: {"error": code, ...})."""
    try:
        body()
    except DaemonUnreachable as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    except ApiError as exc:
        if output == "json" and exc.details:
            _json({"error": exc.code, "message": str(exc), **exc.details})
        _fail(str(exc), CODES.get(exc.code, EXIT_UNHEALTHY))
    except TimeoutError as exc:
        _fail(str(exc), EXIT_TIMEOUT)


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# ----- swapctld itself, up, down -------------------------------------------------------

@click.command("daemon")
@config_dir_option
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info",
              show_default=True)
def daemon_command(config_dir: Path | None, log_level: str) -> None:
    """Run swapctld in the foreground (systemd's swapctld.service runs this)."""
    from swapctl import logs  # noqa: PLC0415 (pydantic: 0.4 s)
    from swapctl.daemon.daemon import main  # noqa: PLC0415 (pydantic: 0.4 s)
    logs.setup(log_level)
    sys.exit(main(config_dir))


@click.command("up")
@config_dir_option
@click.option("--timeout", callback=_duration, default="60s", show_default=True,
              help="Longest wait for swapctld to recover its services and answer.")
@output_option
def up_command(config_dir: Path | None, timeout: float, output: str) -> None:
    """Start supervisord, swapctld and every service's last good release (idempotent)."""
    from swapctl.daemon.stack import up  # noqa: PLC0415 (pydantic: 0.4 s)

    broken: list[str] = []

    def body() -> None:
        result = up(_config(config_dir), timeout)
        status = _client(config_dir).call("status")
        broken.extend(s["service"] for s in status["services"] if s.get("config_error"))
        if output == "json":  # what the text shows: the stack, and each service's status
            _json({**result, "status": status})
        else:
            how = "started" if result["started"] else "already running"
            click.echo(f"swapctld {how} (pid {result['pid']}, swapctl {result['version']})")
            if result.get("repaired"):  # supervisord had died: swapctld has it back
                click.echo("supervisord was down "
                           f"({result['repaired'].get('supervisord_was')}): restarted, "
                           "every running relay re-attached")
            _show_status(status)
    _calling(body, output)
    if broken:  # the others run; this one cannot until its file is fixed
        _fail(f"not served: {', '.join(broken)}: its service file is broken (`swapctl "
              "config check` says where); fix it, then restart swapctld (its relays keep "
              "serving)", EXIT_UNHEALTHY)


@click.command("down")
@config_dir_option
@click.option("--timeout", callback=_duration, default="60s", show_default=True)
@output_option
def down_command(config_dir: Path | None, timeout: float, output: str) -> None:
    """Stop every relay (clients are disconnected), supervisord and swapctld."""
    from swapctl.daemon.stack import down  # noqa: PLC0415 (pydantic: 0.4 s)

    def body() -> None:
        result = down(_config(config_dir), timeout)
        if output == "json":
            _json(result)
        elif result["stopped"] and result["pid"] is None:
            relays = ", ".join(result["relays"]) or "no relay"
            if result.get("supervisord_pid") is None:
                click.echo("swapctld and supervisord were not running: stopped the relays "
                           f"they left behind ({relays})")
            else:
                click.echo(f"swapctld was not running: supervisord (pid "
                           f"{result['supervisord_pid']}) stopped {relays} and exited")
        elif result["stopped"]:
            click.echo(f"swapctld (pid {result['pid']}) stopped every relay and exited")
        else:
            click.echo("swapctld is not running")
    _calling(body, output)


# ----- status --------------------------------------------------------------------------

@click.command("status")
@config_dir_option
@click.argument("service", required=False, shell_complete=_services)
@click.option("--watch", "-w", is_flag=True, help="Refresh every --interval until Ctrl-C.")
@click.option("--interval", callback=_duration, default="1s", show_default=True)
@watch_output_option
def status_command(config_dir: Path | None, service: str | None, watch: bool,
                   interval: float, output: str) -> None:
    """Each service: the release serving, its slot and pid, connections, health, swap.

    Exit 3 when a service is unhealthy (no relay, or it does not answer).
    """
    client = _client(config_dir)
    args = {"service": service} if service else {}

    def once() -> dict[str, Any]:
        result: dict[str, Any] = client.call("status", **args)
        if output == "json":
            click.echo(json.dumps(result, default=str, indent=None if watch else 2))
        else:
            if watch and sys.stdout.isatty():
                click.clear()
            _show_status(result)
        return result

    def body() -> None:
        result = once()
        while watch:
            time.sleep(interval)
            result = once()
        unhealthy = [s for s in result["services"] if not s["health"].get("healthy")]
        sys.exit(EXIT_UNHEALTHY if unhealthy else EXIT_OK)
    try:
        _calling(body, output)
    except KeyboardInterrupt:
        sys.exit(EXIT_OK)


def _show_status(result: dict[str, Any]) -> None:
    d = result["daemon"]
    up_for = _ago(time.time() - float(d["started"]))
    click.echo(f"swapctld pid {d['pid']}, up {up_for}, config {d['config_dir']}"
               + (f", metrics {d['metrics']}" if d.get("metrics") else ""))
    rows = [("SERVICE", "RELEASE", "SLOT", "PID", "CONNS", "HEALTH", "SWAP")]
    for s in result["services"]:
        active, health, swap = s["active"] or {}, s["health"], s["swap"]
        state = "-"
        if swap and swap["running"]:
            state = f"{swap['swap_id']} {swap['from']}->{swap['to']} {swap['state']}"
        elif swap:
            state = f"last: {swap['decision']} ({swap['from']}->{swap['to']})"
        rows.append((s["service"], active.get("release", "-"),
                     str(active.get("program", "-")).rsplit("-", 1)[-1],
                     str(active.get("pid", "-")), str(health.get("connections", "-")),
                     "healthy" if health.get("healthy") else
                     f"UNHEALTHY: {health.get('problem', '?')}", state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
                   + "  " + row[-1])


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


# ----- swap, rollback, commit, abort --------------------------------------------------

def daemon_swap(config_dir: Path | None, service: str, to: str | None, soak: float | None,
                *, dry_run: bool, yes: bool, no_wait: bool, timeout: float | None, output: str,
                rollback: bool = False, strategy: str = "auto") -> None:
    """`swapctl swap SERVICE` (and `rollback SERVICE` with no swap running)."""
    client = _client(config_dir, 10.0)
    args: dict[str, Any] = {"service": service, "to": to, "soak": soak, "rollback": rollback,
                            "strategy": strategy}

    def body() -> None:
        if dry_run or (sys.stdin.isatty() and not yes):
            plan = client.call("swap", **args, dry_run=True)["plan"]
            if dry_run:
                _json(plan) if output == "json" else click.echo(follow.plan_text(plan))
                sys.exit(EXIT_OK)
            click.echo(follow.plan_text(plan), err=True)
            if not click.confirm("Proceed?", err=True):
                _fail("nothing done", EXIT_FAILED)
        elif rollback and not follow.Progress(output).quiet:  # a whole swap: say so before it
            plan = client.call("swap", **args, dry_run=True)["plan"]
            click.echo(follow.rollback_text(plan), err=True)
        report = _run_swap(client, args, no_wait, timeout, output)
        if report is None:
            sys.exit(EXIT_OK)
        _json(report) if output == "json" else click.echo(swap_report.render_any(report))
        sys.exit(_swap_exit(report))
    _calling(body, output)


def _run_swap(client: Any, args: dict[str, Any], no_wait: bool, timeout: float | None,
              output: str) -> dict[str, Any] | None:
    deadline = None if timeout is None else time.monotonic() + timeout
    progress = follow.Progress(output)
    stream: Iterator[dict[str, Any]] = client.stream("swap", **args, wait=not no_wait,
                                                     timeout=timeout or 3600.0)
    swap_id = "?"
    try:
        for answer in stream:
            if answer["type"] == "accepted":
                swap_id = answer["swap_id"]
                progress.accepted(answer)
            elif answer["type"] == "progress":
                progress.record(answer["record"])
            elif answer["type"] == "soak":
                progress.soak(answer)
            elif answer["type"] == "result":
                progress.end()
                if "report" in answer:
                    report: dict[str, Any] = answer["report"]
                    return report
                if output == "json":
                    _json(answer)
                else:
                    click.echo(f"swap {answer['swap_id']} started; follow it with `swapctl "
                               f"status {args['service']} --watch`")
                return None
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError
    except TimeoutError:
        progress.end()
        _fail(f"--timeout passed; swap {swap_id} goes on in swapctld: `swapctl status "
              f"{args['service']}`, `swapctl abort {args['service']}`", EXIT_TIMEOUT)
    except KeyboardInterrupt:
        progress.end()
        _fail(f"stopped following; swap {swap_id} goes on in swapctld (`swapctl abort "
              f"{args['service']}` to roll it back)", EXIT_FAILED)
    progress.end()
    _fail("swapctld ended the stream without a result", EXIT_UNHEALTHY)


def _swap_exit(report: dict[str, Any]) -> int:
    """The report's own exit code (swap/evidence.py): 0 only when committed and every
    figure measured and 0; 6 when the rollback failed; 1 otherwise."""
    return swap_report.exit_code(report)


def request_command(name: str) -> Callable[..., None]:
    """rollback / commit / abort SERVICE through swapctld."""
    def run(config_dir: Path | None, service: str, output: str, **swap_args: Any) -> None:
        client = _client(config_dir)

        def body() -> None:
            status = client.call("status", service=service)["services"][0]
            running = status["swap"] and status["swap"]["running"]
            if name == "rollback" and not running:  # kubectl rollout undo
                daemon_swap(config_dir, service, None, None, output=output, rollback=True,
                            **swap_args)
                return
            result = client.call("request", service=service, request=name)
            if output == "json":
                _json(result)
            else:
                click.echo(_answer_text(name, service, result))
        _calling(body, output)
    return run


def _answer_text(name: str, service: str, result: dict[str, Any]) -> str:
    """The daemon's answer to rollback / commit / abort (a refusal is an error instead)."""
    swap = f"swap {result['swap_id']}"
    if result.get("pending"):
        return (f"{name} asked of {swap} in {result['state']}, not taken yet: "
                f"{result.get('note') or ''}")
    note = f" ({result['note']})" if result.get("note") else ""
    doing = "commits now" if name == "commit" else "rolls back"
    return f"{name} taken by {swap} in {result['state']}: it {doing}{note}; follow it with " \
           f"`swapctl status {service} --watch`"


# ----- history, report, logs ----------------------------------------------------------

@click.command("history")
@config_dir_option
@click.argument("service", required=False, shell_complete=_services)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--drills", is_flag=True, help="Past rollback drills (STATE/drills) instead: "
              "verdict, drill and rollback time, messages lost.")
@output_option
def history_command(config_dir: Path | None, service: str | None, limit: int,
                    output: str, drills: bool = False) -> None:
    """Past swaps, newest first: decision, pause, rollback time, canary losses."""
    def _s(value: Any) -> str:
        return "-" if value is None else f"{float(value):.3f}s"

    if drills:
        from swapctl.playbook.reports import list_runs  # noqa: PLC0415 (pydantic: 0.4 s)
        config = _config(config_dir)
        if service:
            config.service(service)
        runs = list_runs(config, True, service, limit)
        if output == "json":
            _json(runs)
            return
        if not runs:
            click.echo("no drills yet")
        for d in runs:
            v = d["values"]
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(d["started"] or 0)))
            click.echo(f"{when}  {d['run_id']}  {str(d['state']).upper():<11} "
                       f"{d['baseline'] or '-'} -> {d['candidate'] or '-'}  drill "
                       f"{_s(d['seconds'])}  rollback {_s(v.get('rollback_seconds'))}  "
                       f"lost {v.get('lost', '-')}"
                       + ("" if d["ok"] else f"  ({d['reason']})"))
        return

    def body() -> None:
        args = {"service": service} if service else {}
        rows = _client(config_dir).call("history", limit=limit, **args)["swaps"]
        if output == "json":
            _json(rows)
            return
        if not rows:
            click.echo("no swaps yet")
        for r in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(r["started"] or 0)))
            click.echo(f"{when}  {r['swap_id']}  {r['service']:<12} {r['kind'] or 'swap':<8} "
                       f"{r['from']} -> {r['to']}  {str(r['decision']).upper():<11} "
                       f"pause {_ms(r['server_pause_ms'])}  rollback {_ms(r['rollback_ms'])}  "
                       f"lost {r['lost'] if r['lost'] is not None else '-'}")
    _calling(body, output)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f} ms"


@click.command("logs")
@config_dir_option
@service_argument
@click.option("-n", "--lines", type=click.IntRange(min=1), default=50, show_default=True)
@output_option
def logs_command(config_dir: Path | None, service: str, lines: int, output: str) -> None:
    """The last lines of each of the service's slots (blue and green)."""
    def body() -> None:
        logs = _client(config_dir).call("logs", service=service, lines=lines)["logs"]
        if output == "json":
            _json(logs)
            return
        for entry in logs:
            click.echo(f"==> {entry['program']} ({entry['path']}) <==")
            click.echo(entry["text"] or "(empty)")
    _calling(body, output)


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_command(shell: str) -> None:
    """Print the shell completion script: eval "$(swapctl completion bash)"."""
    root = click.get_current_context().find_root().command  # the group, not an import of it
    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        _fail(f"no completion for {shell}", EXIT_USAGE)
    click.echo(cls(root, {}, "swapctl", "_SWAPCTL_COMPLETE").source())


def register(group: click.Group) -> None:
    for command in (daemon_command, up_command, down_command, status_command, history_command,
                    logs_command, completion_command):
        group.add_command(command)


__all__ = ["SwapctlError", "daemon_swap", "register", "request_command"]
