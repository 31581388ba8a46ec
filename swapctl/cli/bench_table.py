"""`swapctl bench table` (added to the `bench` group): README's figures from docs/bench/*.json.

Exit codes: 0 printed, written, or README matches; 1 `--check` found README's table
different from what the reports give (the difference is on stderr); 2 a report or the
README's markers could not be read.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import click

from swapctl.bench.table import current_block, load, render, replace_block
from swapctl.cli.bench import bench
from swapctl.cli.exits import EXIT_FAILED
from swapctl.errors import UsageError

DEFAULT_DIR = Path("docs/bench")


@bench.command("table")
@click.argument("reports", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--check", "check", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Exit 1 if this README's table (between the bench-table markers) differs "
                   "from the one the reports give.")
@click.option("--write", "write", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Replace this README's table (between the bench-table markers).")
def table_command(reports: tuple[Path, ...], check: Path | None, write: Path | None) -> None:
    """Markdown tables of the benchmarks' figures, conditions, goals and commands, from
    their `-o json` reports [default: docs/bench/*.json]."""
    paths = list(reports) or sorted(DEFAULT_DIR.glob("*.json"))
    if not paths:
        raise UsageError(f"no reports given and none in {DEFAULT_DIR}/: write one with "
                         f"'swapctl bench NAME -o json > {DEFAULT_DIR}/NAME.json'")
    block = render(load(paths))
    if write is not None:
        write.write_text(replace_block(write.read_text(encoding="utf-8"), block, str(write)),
                         encoding="utf-8")
        click.echo(f"swapctl bench table: wrote the table of {len(paths)} reports "
                   f"into {write}", err=True)
    if check is not None:
        have = current_block(check.read_text(encoding="utf-8"), str(check))
        if have != block:
            diff = difflib.unified_diff(have.splitlines(), block.splitlines(),
                                        f"{check} (now)", "from the reports", lineterm="")
            click.echo("\n".join(diff), err=True)
            click.echo(f"swapctl bench table: {check}'s table differs from the reports; "
                       f"regenerate it with 'swapctl bench table --write {check}'", err=True)
            sys.exit(EXIT_FAILED)
    if check is None and write is None:
        click.echo(block)


def register(group: click.Group) -> None:
    """The command is attached to the `bench` group on import."""
    del group
