"""`swapctl bench strategies` (added to the `bench` group)."""

from __future__ import annotations

from typing import Any

import click

from swapctl.bench.procs import sigterm_interrupts
from swapctl.bench.strategies import STRATEGIES, StrategiesBenchSettings, run_strategies_bench
from swapctl.cli.bench import bench, emit, output_option, progress


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("give numbers like 10000,100000", param_hint=flag) from None
    if not values or min(values) <= 0:
        raise click.BadParameter("give at least one number above 0", param_hint=flag)
    return values


def _names(values: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(n.strip() for v in values for n in v.split(",") if n.strip())
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(unknown)}: use {', '.join(STRATEGIES)}",
                                 param_hint="--strategies")
    return tuple(dict.fromkeys(names))


@bench.command("strategies")
@output_option
@click.option("--rates", default="10000,100000", show_default=True,
              help="Comma-separated messages/s asked of the load publisher.")
@click.option("--clients", type=click.IntRange(min=4), default=100, show_default=True,
              help="Connected clients on the public path (the load's 3 included).")
@click.option("--swaps", type=click.IntRange(min=1), default=20, show_default=True,
              help="Swaps per strategy and rate.")
@click.option("--strategies", "--strategy", "strategies", multiple=True,
              callback=lambda _c, _p, v: _names(v),
              help=f"Only these strategies: a comma-separated list, or the option repeated "
                   f"({', '.join(STRATEGIES)}); default all.")
@click.option("--canary-rate", type=click.FloatRange(min=10), default=1000.0,
              show_default=True, help="Canary messages/s (the pause's resolution).")
def strategies_command(output: str, **o: Any) -> None:
    """Each swap strategy at each rate with N clients: pause, disconnects, loss; restart
    as the reference, measured in the same run; and the latency the bridge adds."""
    settings = StrategiesBenchSettings(o["strategies"] or STRATEGIES,
                                       _ints(o["rates"], "--rates"), o["clients"], o["swaps"],
                                       o["canary_rate"])
    with sigterm_interrupts():  # (each run's `finally` then stops its processes)
        report = run_strategies_bench(settings, progress)
    emit("swapctl bench strategies", report, output)


def register(group: click.Group) -> None:
    """The command is attached to the `bench` group on import."""
    del group
