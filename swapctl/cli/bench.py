"""`swapctl bench ...`: benchmarks that print their figures with the conditions of the run.

Every subcommand parses its options into a settings object, runs a bench from
`swapctl.bench`, and hands the report to `emit`: text for people, or `-o json` for
one JSON document alone on stdout (progress goes to stderr). To add a benchmark
(`bench handoff`, `bench diff`, ...), write it in swapctl/bench/, returning a report
dict (see swapctl/bench/report.py), then add a command here with `@bench.command`,
`@output_option` and a final `emit(...)`.

Exit codes: 0 the benchmark ran (goals met or not: they are figures, not checks);
1 a check failed (messages lost, corrupted or duplicated); 3 a benchmark process
failed or stopped answering (the message quotes its stderr).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from swapctl.bench.codec import CodecSettings, run_codec
from swapctl.bench.relay import RELAY_TARGETS, RelayBenchSettings, run_relay_bench
from swapctl.bench.relay_report import relay_report
from swapctl.bench.report import render_text
from swapctl.bench.rust_relay import ENV as RUST_ENV
from swapctl.bench.rust_relay import RELAYS, relays_asked
from swapctl.cli.exits import EXIT_FAILED

F = TypeVar("F", bound=Callable[..., Any])


def output_option(func: F) -> F:
    return click.option(
        "-o", "--output", type=click.Choice(["text", "json"]), default="text",
        show_default=True,
        help="json: the report as one JSON document on stdout (progress on stderr).",
    )(func)


def rust_relay_options(measured: str) -> Callable[[F], F]:
    """--relay python|rust|both and --rust-relay, as every bench that runs both relays
    takes them; `measured` says what --relay picks in that bench."""
    def decorate(func: F) -> F:
        func = click.option(
            "--rust-relay", "rust_relay", default=None,
            type=click.Path(dir_okay=False, path_type=Path),
            help="The Rust example relay's binary [default: $" + RUST_ENV + ", else "
                 "sdk/rust/target/release/swapctl-example-relay of this checkout].")(func)
        return click.option(
            "--relay", "relay", type=click.Choice([*RELAYS, "both"]), default="both",
            show_default=True,
            help=f"{measured} 'both' and 'rust' need the Rust binary (exit 2 if it is not "
                 "built: build it with scripts/ensure-tools, or ask for --relay python).",
        )(func)
    return decorate


def emit(title: str, report: Mapping[str, Any], output: str) -> None:
    if output == "json":
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_text(title, report))


def progress(message: str) -> None:
    click.echo(f"swapctl bench: {message}", err=True)


@click.group("bench")
def bench() -> None:
    """Measure the codec and the relay; figures come with the conditions they ran under."""


@bench.command("codec")
@output_option
@click.option("--messages", type=click.IntRange(min=1000), default=CodecSettings().messages,
              show_default=True, help="Messages per repeat.")
@click.option("--repeats", type=click.IntRange(min=1), default=CodecSettings().repeats,
              show_default=True, help="Repeats per measurement; the best one is the figure.")
def codec_command(output: str, messages: int, repeats: int) -> None:
    """Frames/s parsed and messages/s built, against the relays' published codec baselines."""
    progress(f"codec: {messages:,} messages x {repeats} repeats per measurement")
    emit("swapctl bench codec", run_codec(CodecSettings(messages, repeats)), output)


@bench.command("relay")
@output_option
@click.option("--duration", type=click.FloatRange(min=0.1), default=RelayBenchSettings().duration,
              show_default=True,
              help="Seconds per throughput window (one per target), and seconds of latency "
                   "traffic per target (the targets interleaved).")
@click.option("--rate", type=click.IntRange(min=100, max=100_000),
              default=RelayBenchSettings().rate, show_default=True,
              help="Latency runs: messages per second, one per write.")
@rust_relay_options("Relays measured beside the raw forwarder and the direct link: the "
                    "Python reference relay (target 'relay'), the Rust example relay of "
                    "sdk/rust (target 'rust', no block mode), or both.")
@click.option("--relay-arg", "relay_args", multiple=True, metavar="ARG",
              help="Extra option for the Python relay under test, repeatable "
                   "(e.g. --relay-arg=--framing --relay-arg=chunk).")
@click.option("--idle-timeout", type=click.FloatRange(min=0.1),
              default=RelayBenchSettings().idle_timeout, show_default=True,
              help="Seconds of silence after which a stream (or an echo) is taken as over, "
                   "what did not arrive counting as lost.")
def relay_command(output: str, *, duration: float, rate: int, relay: str,
                  rust_relay: Path | None, relay_args: tuple[str, ...],
                  idle_timeout: float) -> None:
    """Reference relay and Rust example relay vs raw byte forwarder vs direct link:
    throughput, block mode with a consumer slower than the publisher (Python relay vs raw,
    both lossless), and latency, every target in the same run."""
    relays = tuple(RELAY_TARGETS[RELAYS.index(name)] for name in relays_asked(relay, rust_relay))
    settings = RelayBenchSettings(duration=duration, rate=rate, relay_args=relay_args,
                                  idle_timeout=idle_timeout, rust_binary=rust_relay,
                                  targets=("direct", "raw", *relays))
    results = run_relay_bench(settings, progress)
    report = relay_report(settings, results)
    emit("swapctl bench relay", report, output)
    if not report["verified"]:
        progress("messages were lost, corrupted or duplicated (see verified/lost above)")
        sys.exit(EXIT_FAILED)


def register(group: click.Group) -> None:
    group.add_command(bench)
