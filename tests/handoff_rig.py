"""Relays in handoff mode driven step by step, without a swap engine: a control socket, a
public listener created once, and relay processes started by the subprocess spawner.
Used by the protocol tests (the reference relay) and the Rust crate's staging test."""

from __future__ import annotations

import sys
from pathlib import Path

from swapctl.handoff.controller import ControlServer, RelayLink
from swapctl.handoff.manifest import Transfer
from swapctl.swap.spawner import Release, SubprocessHandle, SubprocessSpawner
from swapctl.unixsock import open_listener

REFERENCE_RELAY = (sys.executable, "-m", "swapctl.relay")


class Rig:
    """`relay`: the command every `start` runs (its extra arguments appended)."""

    def __init__(self, root: Path, relay: tuple[str, ...] = REFERENCE_RELAY) -> None:
        self.root = root
        self.relay = relay
        self.public = root / "r.sock"
        self.control = ControlServer(root / "ctl.sock")
        self.listener = open_listener(self.public)
        self.spawner = SubprocessSpawner(root / "logs")

    def start(self, token: str, *args: str) -> tuple[SubprocessHandle, RelayLink]:
        release = Release(token, (*self.relay, *args))
        handle = self.spawner.spawn(release, token, self.control.path, self.public)
        link = self.control.accept(token, timeout=10, pid=handle.pid)
        return handle, link

    def activate(self, link: RelayLink) -> None:
        """The listener to `link`, which serves from then on."""
        link.wait_ready(5)
        link.adopt(Transfer(self.listener.fileno(), []), 5)
        link.resume(5)

    def handoff(self, old: RelayLink, new: RelayLink) -> Transfer:
        """A version-1 handoff, old -> new."""
        new.wait_ready(5)
        transfer = old.release(flush_ms=5, timeout=5)
        new.adopt(transfer, 5)
        new.resume(5)
        old.close_held(5)
        return transfer

    def close(self) -> None:
        self.spawner.stop_all()
        self.control.close()
        self.listener.close()
