"""`swapctl diff`, `record`, `replay`, `shadow` and `bench diff`: side-by-side equivalence.

`bench diff` joins the `bench` group of swapctl/cli/bench.py (as `bench handoff` does).

Exit codes of diff, replay --check and shadow: 0 equivalent, 1 different, 2 error (bad
option, a relay that would not start, an unreadable capture). See docs/diff.md.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from swapctl.capture.replay import load_traffic, replay
from swapctl.capture.shadow import Shadow, ShadowSettings
from swapctl.capture.tap import record
from swapctl.cli.bench import bench, emit, output_option
from swapctl.cli.bench import progress as bench_progress
from swapctl.cli.exits import EXIT_FAILED, EXIT_OK
from swapctl.diff import Mode
from swapctl.diff.report import (
    DiffReport,
    RunInfo,
    junit_error,
    render_text,
    to_json,
    to_junit,
)
from swapctl.errors import SwapctlError, UsageError
from swapctl.protocol.profiles import Domain, Profile, domain_byte
from swapctl.scenarios import builtin, files
from swapctl.scenarios.bench import DiffBenchSettings, run_diff_bench
from swapctl.scenarios.driver import Timing
from swapctl.scenarios.model import Scenario
from swapctl.scenarios.relays import resolve
from swapctl.scenarios.sidebyside import Setup, SideBySide

EXIT_ERROR = 2  # diff's documented error code (also for runtime failures)
_domains = click.Choice([d.value for d in Domain])
_profiles = click.Choice([p.value for p in Profile])
_modes = click.Choice([m.value for m in Mode])


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like an exception, so every relay this command started is stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_ERROR))


def progress(message: str) -> None:
    click.echo(f"swapctl: {message}", err=True)


def fail(message: str, junit: Path | None = None, scenario: str = "run") -> NoReturn:
    click.echo(f"swapctl: error: {message}", err=True)
    if junit is not None:
        junit.write_text(junit_error(scenario, message))
    sys.exit(EXIT_ERROR)


def timing_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--quiet-ms", type=click.IntRange(min=1), default=30, show_default=True,
                        help="A settle waits until no client received anything this long.")(func)
    return click.option("--read-timeout", type=click.FloatRange(min=0.1), default=5.0,
                        show_default=True,
                        help="Seconds a relay may take to read one write before it is "
                             "noted as not reading.")(func)


def _timing(o: dict[str, Any]) -> Timing:
    return Timing(quiet=o["quiet_ms"] / 1000, read_timeout=o["read_timeout"])


def _scenarios(o: dict[str, Any], dbyte: int) -> list[Scenario]:
    """Every (scenario, seed) to run, from --scenario, --replay and --seed; built before any
    relay starts, so a bad name or file fails fast."""
    seeds: list[int | None] = list(o["seeds"]) or [None]
    specs: list[str] = list(o["scenarios"])
    if not specs and not o["replays"]:
        specs = ["ci"]
    if "all" in specs:
        specs.remove("all")
        specs += [n for n in builtin.names() if n not in ("soak", "ci")]
    out: list[Scenario] = []
    for spec in specs:
        path = Path(spec)
        if spec.endswith((".yaml", ".yml")) or path.is_file():
            out += [files.load(path, seed, dbyte) for seed in seeds]
            continue
        name, params = builtin.parse_spec(spec)
        out += [builtin.build(name, 1 if seed is None else seed, dbyte, params)
                for seed in seeds]
    out += [load_traffic(capture, dbyte)[0] for capture in o["replays"]]
    return out


@click.command("diff")
@click.option("--old", required=True, metavar="CMD|RELEASE",
              help="The old relay: a command (with {socket}, or one that binds a hard-coded "
                   "path) or a built-in release: reference, reference:chunk, "
                   "reference:no-validate, reference:sink, reference:no-echo.")
@click.option("--new", required=True, metavar="CMD|RELEASE", help="The new relay, likewise.")
@click.option("--old-path", type=click.Path(path_type=Path),
              help="Socket path the old command binds by itself (default: the real relays' "
                   "path for --domain and --profile); it runs in a private mount namespace.")
@click.option("--new-path", type=click.Path(path_type=Path), help="Likewise for --new.")
@click.option("--domain", type=_domains, default="market_data", show_default=True)
@click.option("--profile", type=_profiles, default="alphapulse", show_default=True,
              help="Numbering of header byte 4 used by the traffic and the reference relay.")
@click.option("--scenario", "scenarios", multiple=True, metavar="NAME|FILE",
              help="A built-in scenario (NAME or NAME:key=value,...), 'all', or a YAML file; "
                   "repeatable. Default: ci.")
@click.option("--replay", "replays", multiple=True, type=click.Path(path_type=Path),
              help="A capture (pcapng) whose traffic to replay; repeatable.")
@click.option("--seed", "seeds", multiple=True, type=int,
              help="Seed of the scenarios; repeatable. Default: 1 (a file's own seed).")
@click.option("--mode", type=_modes, default="frames", show_default=True,
              help="frames: identical frame sequences; strict: raw bytes too; "
                   "per-publisher: each publisher's order only.")
@click.option("--junit", type=click.Path(path_type=Path), help="Write JUnit XML here.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--explain", "explained", type=click.IntRange(min=0), default=5,
              show_default=True, help="Differences explained in full in the text report.")
@click.option("--minimize", "minimize_to", type=click.Path(path_type=Path),
              help="If a scenario differs: shrink it to the fewest writes that still show the "
                   "first difference and save that as a capture here.")
@click.option("--minimize-trials", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--save", type=click.Path(path_type=Path),
              help="Save the traffic and what each side delivered as a capture (one run only).")
@click.option("--keep", is_flag=True, help="Keep the work directory (relay logs, sockets).")
@timing_options
def diff_command(**o: Any) -> None:
    """Run old and new relay side by side on identical traffic; compare what clients got.

    Exit codes: 0 equivalent, 1 different, 2 error.
    """
    junit: Path | None = o["junit"]
    stop_on_sigterm()
    try:
        reports = _run_diff(o)
    except SwapctlError as exc:
        fail(str(exc), junit)
    if o["output"] == "json":
        click.echo(json.dumps(to_json(reports), indent=2))
    else:
        click.echo(render_text(reports, o["explained"]))
    if junit is not None:
        junit.write_text(to_junit(reports, o["explained"]))
    sys.exit(EXIT_OK if all(r.equivalent for r in reports) else EXIT_FAILED)


def _run_diff(o: dict[str, Any]) -> list[DiffReport]:
    domain, profile = Domain(o["domain"]), Profile(o["profile"])
    dbyte = domain_byte(domain, profile)
    setup = Setup(resolve(o["old"], domain, profile, o["old_path"]),
                  resolve(o["new"], domain, profile, o["new_path"]),
                  Mode(o["mode"]), _timing(o), o["keep"])
    jobs = _scenarios(o, dbyte)
    if o["save"] is not None and len(jobs) != 1:
        raise UsageError(f"--save keeps one run; this would run {len(jobs)} "
                         "(give one --scenario or --replay and at most one --seed)")
    reports: list[DiffReport] = []
    with SideBySide(setup) as sbs:
        progress(f"diff: old {setup.old.label!r} and new {setup.new.label!r} are up "
                 f"(work directory {sbs.workdir})")
        for scenario in jobs:
            report = sbs.run(scenario, record=o["save"] is not None)
            verdict = "equivalent" if report.equivalent else "DIFFERENT"
            progress(f"diff: {scenario.name} (seed {scenario.seed}): {verdict} "
                     f"({report.comparison.frames_compared} frames, "
                     f"{report.info.seconds:.2f}s)")
            reports.append(report)
            if o["save"] is not None:
                sbs.save(o["save"], scenario, report)
                progress(f"diff: saved traffic and both outputs to {o['save']}")
            if o["minimize_to"] is not None and not report.equivalent:
                _minimize(sbs, scenario, report, o["minimize_to"], o["minimize_trials"])
                o["minimize_to"] = None  # the first differing scenario only
    return reports


def _minimize(sbs: SideBySide, scenario: Scenario, report: DiffReport, out: Path,
              trials: int) -> None:
    first = report.comparison.first
    assert first is not None
    progress(f"minimize: looking for the fewest writes that still show "
             f"'{first.category.value}' (at most {trials} runs)")
    result = sbs.minimize(scenario, report, trials)
    sbs.save(out, result.scenario, result.report)
    state = "minimal" if result.search.complete else "smaller (trial budget reached)"
    progress(f"minimize: {result.writes_before} writes -> {len(result.search.units)} "
             f"({state}, {result.search.trials} runs); saved to {out}; rerun with "
             f"--replay {out}")


@click.command("record")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), required=True,
              help="The live relay's socket; the recorder connects like a consumer, never "
                   "writes.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="pcapng file.")
@click.option("--duration", type=click.FloatRange(min=0.01), required=True,
              help="Seconds to record.")
@click.option("--max-bytes", type=click.IntRange(min=1), help="Stop after this many bytes.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: the summary as one JSON document on stdout.")
def record_command(socket_path: Path, out: Path, duration: float, max_bytes: int | None,
                   output: str) -> None:
    """Record what a live relay forwards into a pcapng capture (docs/capture.md).

    Exit 0 recorded; 2 bad option; 3 no relay answers on --socket (nothing is written).
    """
    progress(f"record: tapping {socket_path} for {duration}s into {out}")
    summary = record(socket_path, out, duration, max_bytes, lambda m: progress(f"record: {m}"))
    if output == "json":
        click.echo(json.dumps({"out": str(out), "socket": str(socket_path),
                               "frames": summary.frames, "bytes": summary.bytes,
                               "reads": summary.reads, "seconds": round(summary.seconds, 3),
                               "relay_closed": summary.relay_closed}, indent=2))
        return
    ended = "; the relay closed the connection" if summary.relay_closed else ""
    click.echo(f"recorded {summary.frames} frames ({summary.bytes} bytes in "
               f"{summary.reads} reads) in {summary.seconds:.1f}s to {out}{ended}")


@click.command("replay")
@click.argument("capture", type=click.Path(path_type=Path))
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), required=True,
              help="The relay to feed (use a relay under test, not a live one).")
@click.option("--domain", type=_domains, default="market_data", show_default=True)
@click.option("--profile", type=_profiles, default="alphapulse", show_default=True)
@click.option("--check", is_flag=True,
              help="Compare what the relay delivered with what the capture says it should "
                   "(exit 1 if different).")
@click.option("--mode", type=_modes, default="frames", show_default=True)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON document on stdout (with --check, the "
                                      "diff report; else what was replayed).")
@timing_options
def replay_command(capture: Path, socket_path: Path, **o: Any) -> None:
    """Feed a capture's traffic into the relay at --socket.

    Exit 0 replayed (--check: equivalent), 1 different, 2 error (an unreadable capture,
    no relay on --socket).
    """
    dbyte = domain_byte(Domain(o["domain"]), Profile(o["profile"]))
    try:
        result = replay(capture, socket_path, dbyte, timing=_timing(o), check=o["check"],
                        mode=Mode(o["mode"]))
    except SwapctlError as exc:
        fail(str(exc))
    except OSError as exc:  # no socket there, nobody listening, or the relay went away
        fail(f"cannot feed the relay at {socket_path}: {exc.strerror or exc}; start the relay "
             "under test on that socket first (a relay under test, never a live one)")
    writes = sum(1 for _ in result.scenario.writes())
    progress(f"replay: {writes} writes from {len(result.scenario.clients)} clients into "
             f"{socket_path}")
    if result.comparison is None:
        if o["output"] == "json":
            click.echo(json.dumps({"capture": str(capture), "socket": str(socket_path),
                                   "clients": len(result.scenario.clients), "writes": writes,
                                   "bytes": result.scenario.traffic_bytes, "checked": False,
                                   "notes": list(result.notes)}, indent=2))
        else:
            click.echo(f"replayed {capture}: {result.scenario.traffic_bytes} bytes in "
                       f"{writes} writes")
        return
    report = DiffReport(RunInfo(f"replay {capture.name}", result.scenario.seed,
                                "the capture", str(socket_path), dbyte, 0.0, result.notes),
                        result.comparison)
    if o["output"] == "json":
        click.echo(json.dumps(to_json([report]), indent=2))
    else:
        click.echo(render_text([report]))
    sys.exit(EXIT_OK if report.equivalent else EXIT_FAILED)


@click.command("shadow")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), required=True,
              help="The live relay's socket (only ever read: shadow never writes to it).")
@click.option("--candidate", required=True, metavar="CMD|RELEASE",
              help="The candidate relay, as for diff --new; it runs on a private socket.")
@click.option("--candidate-path", type=click.Path(path_type=Path),
              help="Socket path the candidate binds by itself (then isolated).")
@click.option("--duration", type=click.FloatRange(min=0.1), required=True,
              help="Seconds to mirror.")
@click.option("--domain", type=_domains, default="market_data", show_default=True)
@click.option("--profile", type=_profiles, default="alphapulse", show_default=True)
@click.option("--queue-bytes", type=click.IntRange(min=1024), default=16 * 1024 * 1024,
              show_default=True, help="Mirror queue bound; beyond it live frames are dropped "
                                      "from the mirror and counted, never waited for.")
@click.option("--lag", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
              help="A mirrored frame the candidate has not delivered after this many seconds "
                   "is missing.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between live summary lines (stderr).")
@click.option("--junit", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def shadow_command(**o: Any) -> None:
    """Mirror a live relay's traffic into a candidate and diff continuously.

    Exit codes: 0 no difference, 1 different, 2 error.
    """
    domain, profile = Domain(o["domain"]), Profile(o["profile"])
    stop_on_sigterm()
    try:
        spec = resolve(o["candidate"], domain, profile, o["candidate_path"])
        settings = ShadowSettings(o["socket_path"], spec, o["duration"], o["queue_bytes"],
                                  o["lag"], interval=o["interval"],
                                  domain_byte=domain_byte(domain, profile))
        report = Shadow(settings, progress).run()
    except SwapctlError as exc:
        fail(str(exc), o["junit"], "shadow")
    if o["output"] == "json":
        click.echo(json.dumps(to_json([report]), indent=2))
    else:
        click.echo(render_text([report]))
    if o["junit"] is not None:
        o["junit"].write_text(to_junit([report]))
    sys.exit(EXIT_OK if report.equivalent else EXIT_FAILED)


def register(group: click.Group) -> None:
    for command in (diff_command, record_command, replay_command, shadow_command):
        group.add_command(command)


@bench.command("diff")
@output_option
@click.option("--frames", type=click.IntRange(min=1000), default=DiffBenchSettings().frames,
              show_default=True, help="74-byte frames per compared stream.")
@click.option("--repeats", type=click.IntRange(min=1), default=DiffBenchSettings().repeats,
              show_default=True, help="Repeats per case; the best one is the figure.")
@click.option("--scenario", default="ci", show_default=True,
              help="The scenario whose wall time is measured (reference vs reference).")
def bench_diff_command(output: str, frames: int, repeats: int, scenario: str) -> None:
    """Frames compared per second, and the wall time of the standard CI scenario."""
    settings = DiffBenchSettings(frames, repeats, scenario)
    emit("swapctl bench diff", run_diff_bench(settings, bench_progress), output)
