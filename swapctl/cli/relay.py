"""`swapctl relay` and `swapctl relay-stats`.

The commands live in swapctl/relay/command.py so that starting a relay
(`python -m swapctl.relay`, many times per swap) imports the relay alone, not every
swapctl command.
"""

from __future__ import annotations

import click

from swapctl.relay.command import relay_command, relay_stats_command


def register(group: click.Group) -> None:
    group.add_command(relay_command)
    group.add_command(relay_stats_command)
