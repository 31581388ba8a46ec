"""`swapctl bench soak` (added to the `bench` group on import, as `bench daemon` is)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from swapctl.bench.rust_relay import ENV, rust_relay_binary
from swapctl.bench.soak import SoakSettings, run_soak
from swapctl.bench.soak_plot import check_plot_path, write_plot
from swapctl.cli.bench import bench, emit, output_option, progress
from swapctl.cli.exits import EXIT_FAILED

D = SoakSettings()


@bench.command("soak")
@output_option
@click.option("--minutes", type=click.FloatRange(min=0.1, max=24 * 60), default=D.minutes,
              show_default=True, help="Length of the run (fractions allowed: 0.5).")
@click.option("--faults", is_flag=True,
              help="Every few steps a fault instead: swapctld SIGKILLed at a random moment of "
                   "a swap, the warm old relay SIGKILLed while a swap soaks, signal's active "
                   "relay SIGKILLed (swapctld restarts it), supervisord SIGKILLed at a random "
                   "moment of a swap (swapctld restarts it).")
@click.option("--rate", type=click.IntRange(min=100), default=D.rate, show_default=True,
              help="Messages/s of the independent load on market_data.")
@click.option("--every", type=click.FloatRange(min=0.5), default=D.every, show_default=True,
              help="Seconds from the start of one step (swap, rollback, fault) to the next.")
@click.option("--sample-every", type=click.FloatRange(min=1.0), default=D.sample_every,
              show_default=True, help="Seconds between RSS/fd samples (a short run takes "
                                      "at least 6).")
@click.option("--seed", type=int, default=None, help="Seed of the random fault moments.")
@click.option("--keep-state", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Copy the stack's state (configs, journal, logs of swapctld, supervisord "
                   "and every relay) into DIR at the end. Without it, only a run that is not "
                   "clean keeps it, in /tmp/swapctl-soak-*.")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write memory, fds and pauses over time to FILE (.png, .svg, .pdf; needs "
                   "matplotlib: pip install 'swapctl[plot]').")
@click.option("--relay", type=click.Choice(["python", "rust"]), default="python",
              show_default=True,
              help="The relay every service runs as v1 and v2: the Python reference relay, "
                   "or the Rust example relay (sdk/rust; exit 2 if it is not built: build "
                   "it with scripts/ensure-tools).")
@click.option("--rust-relay", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help=f"The Rust example relay's binary [default: ${ENV}, else "
                   "sdk/rust/target/release/swapctl-example-relay of this checkout]; only "
                   "with --relay rust.")
def soak_command(output: str, plot: Path | None, relay: str, rust_relay: Path | None,
                 **o: Any) -> None:
    """The operators' production simulation: real clients, swaps, rollbacks and faults.

    Exit 1 when the load checker saw a loss, duplicate, reorder or disconnect, or a step
    did not end as designed (the figures are printed anyway).
    """
    if plot is not None:
        check_plot_path(plot)
    if rust_relay is not None and relay != "rust":
        raise click.BadParameter(f"{rust_relay} names the Rust relay's binary, but the run "
                                 f"is on the {relay} relay: add --relay rust, or drop "
                                 "--rust-relay", param_hint="--rust-relay")
    binary = rust_relay_binary(rust_relay).resolve() if relay == "rust" else None
    settings = SoakSettings(minutes=o["minutes"], faults=o["faults"], rate=o["rate"],
                            every=o["every"], sample_every=o["sample_every"], seed=o["seed"],
                            keep_state=o["keep_state"], rust_relay=binary)
    if o["keep_state"] is not None and o["keep_state"].exists() and any(
            o["keep_state"].iterdir()):
        raise click.BadParameter(f"{o['keep_state']} is not empty: name a new or empty "
                                 "directory", param_hint="--keep-state")
    report = run_soak(settings, progress)
    if plot is not None:
        write_plot(report, plot)
        report["plot"] = str(plot)
    emit("swapctl bench soak", report, output)
    if not report["ok"]:
        progress("not clean: " + "; ".join(
            report["failures"] + ((report["load"] or {}).get("problems") or [])))
        sys.exit(EXIT_FAILED)


def register(group: click.Group) -> None:
    """The command is attached to the `bench` group on import."""
    del group
