"""`swapctl supervisord-config`: the supervisord configuration swapctld expects.

It is the text swapctld writes itself before it starts supervisord (`supervisord.start:
swapctl`): one `render` (supervise/layout.py) from one layout (daemon/paths.py
`layout_of`), so the file systemd's swapctl-supervisord unit reads cannot drift from what
swapctld talks to (its XML-RPC socket, a blue and a green program per service, each the
slot launcher run by this swapctl's Python).

    swapctl supervisord-config                      print it
    swapctl supervisord-config --write              write it to supervisord.config
    swapctl supervisord-config --check --make-dirs  the unit's ExecStartPre: refuse a stale
                                                    file, create the directories it names

Exit 0 when done (or current), 1 when --check finds the file stale or missing, 2 on a
configuration error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from swapctl.cli.exits import EXIT_FAILED, EXIT_OK
from swapctl.errors import UsageError


@click.command("supervisord-config")
@click.option("--config-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Directory of swapctld.yaml and SERVICE.yaml files [default: "
                   "$SWAPCTL_CONFIG_DIR, else ./configs if it has swapctld.yaml, "
                   "else /etc/swapctl].")
@click.option("--write", "write", is_flag=True,
              help="Write it (atomically) to supervisord.config of swapctld.yaml instead of "
                   "printing it.")
@click.option("--check", is_flag=True,
              help="Print nothing; exit 1, saying why, when the file at supervisord.config "
                   "is missing or not what this command generates now.")
@click.option("--make-dirs", is_flag=True,
              help="Also create (owner-only, as the user running this) the directories the "
                   "configuration names: the state, log and slot directories and the "
                   "socket's directory.")
def supervisord_config_command(config_dir: Path | None, write: bool, check: bool,
                               make_dirs: bool) -> None:
    """Generate the supervisord configuration swapctld expects (systemd/README.md).

    The same text swapctld writes before starting supervisord itself: supervisord's
    XML-RPC socket (supervisord.socket), and a blue and a green program per service
    (autostart=false), each the slot launcher run by this swapctl's Python. Run it
    after adding or removing a service, then restart swapctl-supervisord (the relays
    keep running: KillMode=process).
    """
    from swapctl.config import load_config  # noqa: PLC0415 (pydantic costs 0.4 s)
    from swapctl.daemon.paths import Paths, layout_of  # noqa: PLC0415
    from swapctl.supervise import layout as lay  # noqa: PLC0415

    if write and check:
        raise UsageError("--write and --check exclude each other: --write rewrites the file "
                         "that --check compares")
    config = load_config(config_dir)
    layout = layout_of(config, Paths.of(config))
    if make_dirs:
        lay.make_dirs(layout)
    if write:
        path = lay.write_config(layout, dirs=False)
        then = ("then: systemctl restart swapctl-supervisord (the relays keep running)"
                if config.daemon.supervisord.start == "systemd" else
                "swapctld rewrites it whenever it starts supervisord")
        click.echo(f"wrote {path} ({len(layout.programs())} programs for "
                   f"{', '.join(layout.services)}); {then}", err=True)
    elif check:
        problem = lay.stale(layout)
        if problem is not None:
            click.echo(f"swapctl: {layout.config}: {problem}: regenerate it with "
                       f"`{sys.argv[0]} supervisord-config --config-dir {config.directory} "
                       "--write`", err=True)
            sys.exit(EXIT_FAILED)
    else:
        click.echo(lay.render(layout), nl=False)
    sys.exit(EXIT_OK)


def register(group: click.Group) -> None:
    group.add_command(supervisord_config_command)
