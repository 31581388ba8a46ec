"""The reference relay: Protocol V2 broadcast with echo, but with correct framing.

`run(config)` serves until SIGTERM/SIGINT. See server.py for how it works and
docs/relay.md for the operator's view (modes, bounds, faults, counters).
"""

from __future__ import annotations

import logging
import signal
import time

from swapctl.logs import event
from swapctl.relay.config import Faults, Forwarding, RelayConfig
from swapctl.relay.server import Relay

log = logging.getLogger("swapctl.relay")

__all__ = ["Faults", "Forwarding", "Relay", "RelayConfig", "run"]


def run(config: RelayConfig) -> None:
    faults = config.faults
    if faults.never_ready and config.handoff is None:
        event(log, logging.WARNING, "relay.never_ready", socket=str(config.socket))
        while True:
            signal.pause()
    if faults.slow_start:
        event(log, logging.INFO, "relay.slow_start", seconds=faults.slow_start)
        time.sleep(faults.slow_start)
    relay = Relay(config)
    relay.listen()
    if faults.stall_after == 0:
        relay.stall()
    if faults.never_ready:
        event(log, logging.WARNING, "relay.never_ready", socket=str(config.socket))
    else:
        relay.ready()
    relay.serve()
