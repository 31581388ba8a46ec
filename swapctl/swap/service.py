"""One relay service under swapctl: its listener, its relays, and the fds it holds.

The public listening socket is created once here and never closed or unlinked while
the service runs (swapctl is its fd store: even if every relay dies, connects queue
in its backlog). Relays are started through a `Spawner` into *slots*; the active slot
serves the clients, a warm slot is the previous release kept in standby during soak.
`held` is the orchestrator's own copy of the last handed-over listener and client
sockets, kept until a swap ends so that a candidate dying after adopt can still be
rolled back without disconnecting anyone who was connected before the swap.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from swapctl.errors import SwapctlError
from swapctl.fsutil import ensure_private_dir
from swapctl.handoff.controller import ControlServer, RelayLink
from swapctl.handoff.manifest import Transfer
from swapctl.handoff.messages import HandoffError
from swapctl.swap.spawner import ProcessHandle, Release, Spawner
from swapctl.unixsock import is_live, open_listener


class SlotError(SwapctlError):
    """A relay could not be started or did not become ready."""


@dataclass(slots=True)
class Slot:
    release: Release
    token: str
    handle: ProcessHandle
    link: RelayLink

    def alive(self) -> bool:
        return self.handle.alive()

    def stop(self, timeout: float = 5.0) -> None:
        self.link.close()
        self.handle.stop(timeout)


class Service:
    def __init__(self, socket_path: Path, state_dir: Path, spawner: Spawner,
                 control_path: Path | None = None) -> None:
        self.socket_path = socket_path
        self.state_dir = state_dir
        self.control_path = control_path or state_dir / "control.sock"
        self.spawner = spawner
        self.listener: socket.socket | None = None
        self.control: ControlServer | None = None
        self.active: Slot | None = None
        self.warm: Slot | None = None
        self.held: list[Transfer] = []

    def open(self, release: Release, timeout: float = 10.0) -> Slot:
        """Create the listener and control socket, start `release` and give it the listener."""
        self.open_control()
        self.listener = open_listener(self.socket_path)
        self.active = self.start_serving(release, self.listener.fileno(), timeout)
        return self.active

    def start_serving(self, release: Release, listener: int, timeout: float) -> Slot:
        """Start `release`, give it (a copy of) `listener` and let it serve: a first
        start, a restart after a crash, a candidate on a socket of its own."""
        slot = self.start_slot(release, time.monotonic() + timeout)
        slot.link.adopt(Transfer(listener, []), timeout)
        slot.link.resume(timeout)
        return slot

    def open_control(self) -> None:
        """The control socket relays connect to (created before any relay starts)."""
        ensure_private_dir(self.state_dir)
        if self.control is None:
            self.control = ControlServer(self.control_path)

    def start_slot(self, release: Release, deadline: float,
                   spawned: Callable[[str, int], None] | None = None) -> Slot:
        """Spawn `release` and wait until it connected and said READY (or raise).
        `spawned(token, pid)` is told as soon as the process runs, before it is ready (a
        journal notes it, so a restarted orchestrator knows that slot is this swap's)."""
        assert self.control is not None
        # unique across restarts of the orchestrator: relays started earlier still run
        token = f"{release.name}-{uuid.uuid4().hex[:8]}"
        handle = self.spawner.spawn(release, token, self.control.path, self.socket_path)
        if spawned is not None:
            spawned(token, handle.pid)
        try:
            return self._connect(release, token, handle, deadline)
        except (SwapctlError, TimeoutError, OSError) as exc:
            handle.stop(1.0)
            raise self._slot_error(release, handle, exc) from None

    def attach(self, release: Release, token: str, handle: ProcessHandle,
               deadline: float) -> Slot:
        """A relay that was already running (started before this orchestrator): wait for
        it to reconnect to the control socket and say READY again. Never stops it."""
        try:
            return self._connect(release, token, handle, deadline)
        except (SwapctlError, TimeoutError, OSError) as exc:
            raise self._slot_error(release, handle, exc) from None

    def _connect(self, release: Release, token: str, handle: ProcessHandle,
                 deadline: float) -> Slot:
        link = self._accept(token, handle, deadline)
        while not link.ready:
            self._check_alive(handle, release, "before saying ready")
            with contextlib.suppress(TimeoutError):
                link.wait_ready(min(0.05, max(0.001, deadline - time.monotonic())))
            if time.monotonic() >= deadline and not link.ready:
                raise SlotError(f"{release.name} did not say ready in time")
        return Slot(release, token, handle, link)

    @staticmethod
    def _slot_error(release: Release, handle: ProcessHandle, exc: BaseException) -> SlotError:
        if isinstance(exc, SlotError):
            return exc
        if isinstance(exc, HandoffError) and not handle.alive():
            return SlotError(f"{release.name} exited before saying ready "
                             f"({handle.describe_exit()})")
        return SlotError(str(exc))

    def _accept(self, token: str, handle: ProcessHandle, deadline: float) -> RelayLink:
        assert self.control is not None
        while True:
            self._check_alive(handle, None, "before connecting to the control socket")
            # (a relay that does not speak the handoff protocol never connects)
            try:
                wait = min(0.05, max(0.001, deadline - time.monotonic()))
                return self.control.accept(token, wait, pid=handle.pid)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise SlotError(f"relay {token} did not connect to the control socket "
                                    "in time") from None

    @staticmethod
    def _check_alive(handle: ProcessHandle, release: Release | None, when: str) -> None:
        if not handle.alive():
            name = release.name if release else f"pid {handle.pid}"
            raise SlotError(f"{name} exited {when} ({handle.describe_exit()})")

    def connections(self) -> int:
        if self.active is None:
            return 0
        return int(self.active.link.stats(2.0)["connections_open"])

    def drop_held(self) -> None:
        """Close the orchestrator's copies of handed-over sockets (the listener stays)."""
        for transfer in self.held:
            for fd in transfer.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.held = []

    def detach(self) -> None:
        """Let go of everything but the relays: they keep serving (an orchestrator
        restart, or a daemon that stops without `down`)."""
        for slot in (self.active, self.warm):
            if slot is not None:
                slot.link.close()
        self._let_go()

    def close(self) -> None:
        """Stop the relays, then let go of everything; the public socket file goes too."""
        for slot in (self.active, self.warm):
            if slot is not None:
                slot.stop()
        ours = self.listener is not None or self.socket_path.is_symlink()  # (legacy: a link)
        self._let_go()
        if ours and not is_live(self.socket_path):  # and nobody serves it any more
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    def _let_go(self) -> None:
        self.active = self.warm = None
        self.drop_held()
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None
