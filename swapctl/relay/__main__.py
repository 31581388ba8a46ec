"""`python -m swapctl.relay`: the same as `swapctl relay`."""

from swapctl.relay.command import relay_command

relay_command(prog_name="python -m swapctl.relay")
