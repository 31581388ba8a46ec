"""`swapctl report SWAP_ID`: one swap's full report from swapctld (text or JSON), and with
--html/--svg its timeline drawn to a file (swap/timeline.py renders; this only writes)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from swapctl.cli.ops import _calling, _client, _json, config_dir_option, output_option
from swapctl.errors import UsageError
from swapctl.swap import report as swap_report
from swapctl.swap import timeline

Renderer = Callable[[Mapping[str, Any]], str]
file_type = click.Path(path_type=Path, dir_okay=False)


@click.command("report")
@config_dir_option
@click.argument("swap_id")
@click.option("--html", "html_file", type=file_type, metavar="FILE",
              help="Also draw the swap's timeline (phases, pause, canary gap, outcome, "
                   "figures) to FILE: one self-contained HTML page with an inline SVG, no "
                   "script, no network.")
@click.option("--svg", "svg_file", type=file_type, metavar="FILE",
              help="Also draw the same timeline to FILE as a bare SVG image.")
@output_option
def report_command(config_dir: Path | None, swap_id: str, html_file: Path | None,
                   svg_file: Path | None, output: str) -> None:
    """One swap's full report (phases, pause, clients, canary audit, journal).

    With --html or --svg the report is printed as usual and its timeline is written to
    FILE; a swap without phase timings (one that never left idle) exits 2 and writes
    nothing."""
    drawings: list[tuple[str, Path, Renderer]] = [
        (option, path, render) for option, path, render in
        (("--html", html_file, timeline.render_html), ("--svg", svg_file, timeline.render_svg))
        if path is not None]
    for option, path, _render in drawings:
        _check_writable(option, path)  # before asking the daemon anything

    def body() -> None:
        report = _client(config_dir).call("report", swap_id=swap_id)["report"]
        pictures = [(option, path, render(report)) for option, path, render in drawings]
        for option, path, text in pictures:
            _write(option, path, text)
        _json(report) if output == "json" else click.echo(swap_report.render_any(report))
        for _option, path, _text in pictures:
            click.echo(f"timeline of {swap_id} written to {path}", err=True)
    _calling(body)


def _check_writable(option: str, path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: no directory {parent}; create it or give a path "
                         "in an existing directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and
                                                      not os.access(path, os.W_OK)):
        raise UsageError(f"{option} {path}: not writable by this user; give a path you may "
                         "write (e.g. under your home directory or /tmp)")


def _write(option: str, path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write it: {exc.strerror or exc}; give "
                         "another path") from None


def register(group: click.Group) -> None:
    group.add_command(report_command)
