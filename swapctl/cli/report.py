"""`swapctl report SWAP_ID`: one swap's full report from swapctld (text or JSON)."""

from __future__ import annotations

from pathlib import Path

import click

from swapctl.cli.ops import _calling, _client, _json, _report_text, config_dir_option, output_option


@click.command("report")
@config_dir_option
@click.argument("swap_id")
@output_option
def report_command(config_dir: Path | None, swap_id: str, output: str) -> None:
    """One swap's full report (phases, pause, clients, canary audit, journal)."""
    def body() -> None:
        report = _client(config_dir).call("report", swap_id=swap_id)["report"]
        _json(report) if output == "json" else click.echo(_report_text(report))
    _calling(body)


def register(group: click.Group) -> None:
    group.add_command(report_command)
