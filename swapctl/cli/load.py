"""`swapctl load`: generated Protocol V2 traffic through a relay, every message audited.

The options are generated from `swapctl.probes.config.LoadConfig` (each setting is
declared once, there). Exit codes: 0 clean; 1 a message lost, duplicated, reordered,
corrupted or unexpected, or a disconnect; 2 usage error; 3 the relay could not be
reached or a client process failed.
"""

from __future__ import annotations

import enum
import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from swapctl.probes.config import LoadConfig, Option, options
from swapctl.probes.load import run_load
from swapctl.probes.report import render_text

EXIT_FAILED = 1


def _plain(hint: Any) -> Any:
    """`float | None` -> float."""
    if isinstance(hint, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _click_option(opt: Option, hint: Any) -> Callable[[Any], Any]:
    hint = _plain(hint)
    if hint is bool:
        name = opt.flag.removeprefix("--")
        return click.option(f"--{name}/--no-{name}", opt.name, default=opt.default,
                            show_default=True, help=opt.help)
    kwargs: dict[str, Any] = {"help": opt.help, "show_default": True}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        kwargs.update(type=click.Choice([m.value for m in hint]), default=opt.default.value)
    elif hint is Path:
        kwargs.update(type=click.Path(path_type=Path, dir_okay=False), required=True)
    else:
        kwargs.update(type=hint, default=opt.default)
    return click.option(opt.flag, opt.name, **kwargs)


def _config(values: dict[str, Any]) -> LoadConfig:
    hints = typing.get_type_hints(LoadConfig)
    converted = {}
    for name, value in values.items():
        hint = _plain(hints[name])
        is_enum = isinstance(hint, type) and issubclass(hint, enum.Enum)
        converted[name] = hint(value) if is_enum else value
    return LoadConfig(**converted)


def _load(output: str, **values: Any) -> None:
    """Publish generated Protocol V2 traffic through a relay and audit every message.

    Publishers send Trade, Quote, ArbitrageSignal and extended vendor TLVs, each with
    a unique (source, sequence) and a CRC-32; consumers classify every message they
    receive: lost, duplicated, reordered, corrupted, unexpected. Exit 0 when clean,
    1 on any of those or a disconnect, 2 on a usage error, 3 if the relay cannot be
    reached.
    """
    report = run_load(_config(values))
    if output == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render_text(report))
    if not report.ok:
        sys.exit(EXIT_FAILED)


def _command() -> click.Command:
    func: Any = _load
    hints = typing.get_type_hints(LoadConfig)
    for opt in reversed(options()):
        func = _click_option(opt, hints[opt.name])(func)
    func = click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
                        show_default=True, help="Report format; json prints only JSON.")(func)
    return click.command("load")(func)


load_command = _command()


def register(group: click.Group) -> None:
    """Add this module's commands to the swapctl group."""
    group.add_command(load_command)
