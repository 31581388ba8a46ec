"""`swapctl init DIR`: a working local stack's configuration, every path under DIR."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from swapctl.demo import configs
from swapctl.errors import UsageError


@click.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--force", is_flag=True,
              help="Overwrite the configuration files DIR/configs already holds.")
def init_command(directory: Path, force: bool) -> None:
    """Write a local configuration under DIRECTORY: three services (market_data, signal,
    execution) on the reference relay, releases v1 and v2, a 2 s soak; supervisord
    started by swapctl; sockets, state, logs and the control socket all under DIRECTORY.
    Then `swapctl up --config-dir DIRECTORY/configs`.

    Exit 2 when DIRECTORY already holds a configuration (unless --force) or is so long
    that a socket under it would not fit AF_UNIX's 107 bytes.
    """
    root = directory.expanduser().absolute()
    _check(root, force)
    config_dir = configs.write(root)
    click.echo(f"wrote {', '.join(p.name for p in configs.existing(root))} in {config_dir}")
    click.echo("next:")
    for command, what in configs.next_commands(config_dir):
        click.echo(f"  {command:<{_width(config_dir)}}  # {what}")


def _check(root: Path, force: bool) -> None:
    if (there := configs.existing(root)) and not force:
        raise UsageError(f"{root / 'configs'} already holds a configuration "
                         f"({', '.join(p.name for p in there)}): give --force to overwrite "
                         "it (stop its stack first), or choose another DIR")
    if there and _answers(control := configs.socket_paths(root)[0]):
        raise UsageError(f"a stack configured in {root / 'configs'} is running (swapctld "
                         f"answers on {control}): stop it first with `swapctl down "
                         f"--config-dir {root / 'configs'}`")
    if long := configs.too_long(root):
        worst = max(long, key=lambda p: len(bytes(p)))
        spare = len(bytes(root)) - (len(bytes(worst)) - configs.MAX_UNIX_PATH)
        raise UsageError(f"{worst} is {len(bytes(worst))} bytes, longer than AF_UNIX's "
                         f"{configs.MAX_UNIX_PATH}: choose a DIR of at most {max(spare, 1)} "
                         "bytes, such as /tmp/swapctl-stack")


def _answers(path: Path) -> bool:
    """Whether something listens on the Unix socket PATH (a stale file does not)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _width(config_dir: Path) -> int:
    return max(len(c) for c, _ in configs.next_commands(config_dir))


def register(group: click.Group) -> None:
    group.add_command(init_command)
