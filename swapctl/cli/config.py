"""`swapctl config check`: validate the configuration directory, list every problem.

`swapctl config reference` prints the key reference that docs/config.md embeds.

Exit 0 when every file is valid, 2 (usage/configuration error) otherwise. The
configuration package (pydantic) is imported only when a config command runs, so
the other commands, and every relay start, do not pay for it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from swapctl.cli.exits import EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from swapctl.config import CheckResult


@click.group("config")
def config_group() -> None:
    """The configuration: one YAML per service and swapctld.yaml (docs/config.md)."""


@config_group.command("check")
@click.option("--config-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Directory of swapctld.yaml and SERVICE.yaml files [default: "
                   "$SWAPCTL_CONFIG_DIR, else ./configs if it has swapctld.yaml, "
                   "else /etc/swapctl].")
@click.argument("services", nargs=-1, metavar="[SERVICE]...")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON document on stdout.")
def check_command(config_dir: Path | None, services: tuple[str, ...], output: str) -> None:
    """Check swapctld.yaml and every SERVICE.yaml (or only the SERVICEs named).

    Every problem is listed as FILE: KEY: what is wrong, and what would be right.
    Exit 0 when all is valid, 2 otherwise.
    """
    from swapctl.config import check_config  # noqa: PLC0415 (pydantic costs 0.4 s to import)

    result = check_config(config_dir, services)
    if output == "json":
        click.echo(json.dumps(_document(result), indent=2))
    else:
        _render_text(result)
    sys.exit(EXIT_OK if result.ok else EXIT_USAGE)


@config_group.command("reference")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="text: the Markdown tables docs/config.md embeds; "
                                      "json: per file kind, every key's type, default, "
                                      "meaning and example.")
def reference_command(output: str) -> None:
    """Print every key of swapctld.yaml and SERVICE.yaml: type, default, meaning."""
    from swapctl.config.reference import (  # noqa: PLC0415
        reference_data,
        reference_markdown,
    )

    if output == "json":
        click.echo(json.dumps(reference_data(), indent=2))
    else:
        click.echo(reference_markdown(), nl=False)


def _document(result: CheckResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "config_dir": str(result.directory),
        "files": [str(path) for path in result.files],
        "services": {name: {"socket": str(service.socket), "domain": service.domain.value,
                            "profile": service.profile.value, "active": service.active,
                            "releases": sorted(service.releases)}
                     for name, service in result.services.items()},
        "errors": [problem.to_dict() for problem in result.problems],
    }


def _render_text(result: CheckResult) -> None:
    for problem in result.problems:
        click.echo(str(problem))
    if not result.ok:
        count = len(result.problems)
        click.echo(f"{count} error{'s' * (count != 1)} in {result.directory}: fix "
                   f"{'them' if count != 1 else 'it'} and run `swapctl config check` again")
        return
    for name, service in result.services.items():
        click.echo(f"{name}: {service.socket} ({service.domain.value}/{service.profile.value})"
                   f", active {service.active} of {', '.join(sorted(service.releases))}")
    click.echo(f"{result.directory}: OK ({len(result.files)} files)")


def register(group: click.Group) -> None:
    group.add_command(config_group)
