"""Legacy releases inside swapctld: isolated slots, the public link, takeover and restart.

A legacy release (`legacy: true`, `compiled_socket:` in its service file) speaks no
handoff protocol and binds the path compiled into it. supervisord runs it in a blue or
green slot like any release, but through `swapctl.isolation`: inside its own mount
namespace the compiled-in directory is the slot's private folder
(STATE/supervisord/slots/SERVICE-SLOT/root-TOKEN, a fresh one per start: a listener taken
over from an earlier start may still be bound in the old one), so its socket is
.../root-TOKEN/NAME.sock seen from outside and two builds never steal each other's path. The
service's public path is then a symlink swapctld owns, flipped atomically
(`swapctl.legacy.layout.point`), never to a socket that does not accept.

Swaps here run on the one engine (swap/executor.py) with the legacy strategies'
actions (legacy/actions.py: takeover, bridge, restart; docs/legacy.md has their
guarantees); `DaemonPlace` tells them where swapctld's relays live: candidates start in
a free supervisord slot (`start`), the public link is swapctld's (`point`), and a
committed swap leaves the service's active slot, slot socket and listener in step.

A service with `adopt: true` whose active (legacy) release already runs outside swapctl,
serving the public socket itself, starts by adopting it (`start_adopted`): the process
holding the socket's listener (legacy/adopt.py) becomes the active slot, nothing is
started, bound or linked; the first swap to a handoff-capable release is then a takeover
(`DaemonPlace` over that slot), after which swapctld holds the listener at the public
path like any handoff service's.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

import psutil

from swapctl import unixsock
from swapctl.config.model import ServiceConfig
from swapctl.errors import SwapctlError
from swapctl.handoff.controller import RelayLink
from swapctl.legacy import adopt as adopting
from swapctl.legacy import layout as lay
from swapctl.legacy import sockets
from swapctl.legacy.actions import Relay, actions_for
from swapctl.legacy.bridge import BridgeSettings
from swapctl.legacy.restart import probe_socket, stop_relay
from swapctl.legacy.run import PidHandle
from swapctl.legacy.takeover import TakeoverSettings
from swapctl.supervise.spawner import SupervisorSpawner
from swapctl.swap.executor import SwapRun
from swapctl.swap.service import Service, Slot, SlotError
from swapctl.swap.spawner import Release
from swapctl.unixsock import adopt_listener


class Host(Protocol):
    """What of a service's runtime the legacy pieces use (daemon/runtime.py has it)."""

    service: Service
    spawner: SupervisorSpawner
    legacy_socket: Path | None
    listener_store: Callable[[int], None]

    @property
    def legacy_root(self) -> Path: ...

    @property
    def domain_byte(self) -> int: ...

    @property
    def start_timeout(self) -> float: ...

    @property
    def probe_echo(self) -> bool: ...


class AdoptHost(Host, Protocol):
    """What adopting a running relay at start-up uses of a service's runtime."""

    name: str
    config: ServiceConfig

    def remember(self, release: str) -> None: ...

    def journal_event(self, kind: str, **details: Any) -> None: ...

    def refresh(self) -> dict[str, Any]: ...


class NoLink:
    """The control link of a relay that has none (legacy)."""

    hello: dict[str, Any] = {}

    def close(self) -> None:
        return None


def no_link() -> RelayLink:
    return cast(RelayLink, NoLink())


def slot_socket(spawner: SupervisorSpawner, slot: Slot) -> Path:
    """Where the legacy relay of `slot` binds, seen from outside its namespace."""
    assert slot.release.compiled is not None
    program = str(getattr(slot.handle, "program", ""))
    return spawner.private_dir(program, slot.token) / Path(slot.release.compiled).name


def public_layout(service: Service, release: Release, root: Path) -> lay.Layout:
    return lay.Layout(public=service.socket_path, compiled=Path(release.compiled or "/"),
                      root=root)


def start(rt: Host, release: Release) -> tuple[Slot, Path]:
    """Start a legacy release in a free slot; ready once its slot socket passes a probe
    (two clients, one message, echo when the service echoes). Never points the link."""
    service, spawner, timeout = rt.service, rt.spawner, rt.start_timeout
    assert service.control is not None
    _sweep(spawner, release)
    token = f"{release.name}-legacy-{uuid.uuid4().hex[:8]}"
    handle = spawner.spawn(release, token, service.control.path, service.socket_path)
    slot = Slot(release, token, handle, no_link())
    sock = slot_socket(spawner, slot)
    deadline = time.monotonic() + timeout

    def alive() -> None:
        if not handle.alive():
            raise SlotError(f"{release.name} exited before {sock} accepted "
                            f"({handle.describe_exit()})")

    try:
        try:
            unixsock.wait_connectable(sock, timeout, alive=alive, interval=0.005)
        except OSError:
            raise SlotError(f"{release.name}: {sock} did not accept within {timeout:g}s"
                            ) from None
        probe_socket(sock, rt.domain_byte, rt.probe_echo,
                     max(0.5, deadline - time.monotonic()))
    except Exception:
        handle.stop(1.0)
        raise
    return slot, sock


def _sweep(spawner: SupervisorSpawner, release: Release) -> None:
    """Remove the private folders of earlier starts whose socket nobody serves any more
    (one that a taken-over listener is still bound in accepts, and stays)."""
    assert release.compiled is not None
    name = Path(release.compiled).name
    for program in spawner.programs:
        for folder in spawner.private_dir(program, "x").parent.glob("root-*"):
            if not lay.connectable(folder / name):
                shutil.rmtree(folder, ignore_errors=True)


def adopted_slot(socket: Path, release: Release) -> Slot | None:
    """The relay swapctl did not start that serves `socket` (the one holding its
    listener), as a slot of the legacy `release`; None if nothing listens there. Two
    holders, or none this user can see, are refused (adopt.AdoptError)."""
    if not lay.connectable(socket):
        return None
    found = adopting.find(socket, None)
    as_running = Release(release.name, release.command, handoff=False, env=release.env,
                         compiled=found.bound)  # where it bound: its sockets carry that name
    return Slot(as_running, f"{release.name}-adopted-{found.pid}",
                PidHandle(found.pid, found.started_s), no_link())


def start_adopted(rt: AdoptHost, release: Release) -> dict[str, Any] | None:
    """A fresh start of a service with `adopt: true`: its active `release` already runs
    outside swapctl at the public socket; make that process the active slot. None when
    there is nothing to adopt (adopt is off, the release is not legacy, or nothing serves
    the socket): the caller then starts the release as usual."""
    if not rt.config.adopt or not release.legacy:
        return None
    svc = rt.service
    try:
        slot = adopted_slot(svc.socket_path, release)
    except SwapctlError as exc:
        rt.journal_event("adopt_refused", release=release.name, error=str(exc))
        raise
    if slot is None:
        return None
    svc.active, rt.legacy_socket = slot, svc.socket_path
    rt.remember(release.name)
    rt.journal_event("adopted", release=release.name, pid=slot.handle.pid,
                     listener=slot.release.compiled)
    rt.refresh()
    return {"service": rt.name, "action": "adopted", "release": release.name,
            "pid": slot.handle.pid}


def point(service: Service, release: Release, target: Path, root: Path) -> None:
    lay.point(public_layout(service, release, root), target)


def healthy(slot: Slot, sock: Path) -> dict[str, Any]:
    if not slot.alive():
        return {"healthy": False, "problem": f"{slot.release.name} exited: "
                                              f"{slot.handle.describe_exit()}"}
    if sockets.proc_state(slot.handle.pid) == "T":
        return {"healthy": False, "problem": f"{slot.release.name} is stopped (SIGSTOP)"}
    if not lay.connectable(sock):
        return {"healthy": False, "problem": f"{sock} does not accept connections"}
    try:
        found = sockets.find(slot.handle.pid, str(slot.release.compiled))
        connections: int | None = len(found.connections)
    except Exception:  # noqa: BLE001 (health must not fail on a /proc race)
        connections = None
    return {"healthy": True, "connections": connections, "legacy": True}


def is_stopped(pid: int) -> bool:
    return sockets.proc_state(pid) == "T"


def thaw_if_stopped(pid: int) -> bool:
    """A legacy relay left frozen by a takeover that never finished: let it run."""
    if sockets.proc_state(pid) != "T":
        return False
    with contextlib.suppress(ProcessLookupError, psutil.Error):
        psutil.Process(pid).send_signal(signal.SIGCONT)
    return True


class DaemonPlace:
    """swapctld's relays for a legacy strategy (legacy/actions.py `Place`)."""

    def __init__(self, host: Host, old: Slot) -> None:
        self.host, self.old_slot = host, old
        svc = host.service
        if old.release.legacy:
            sock = host.legacy_socket or svc.socket_path
            bound = str(old.release.compiled)
        else:
            sock = svc.socket_path
            bound = str(svc.listener.getsockname()) if svc.listener else str(svc.socket_path)
        self.old = Relay(old.handle.pid, sock, bound, old)
        self.release: Release | None = None

    def start(self, release: Release, timeout: float) -> Relay:
        self.release = release
        slot, sock = start(self.host, release)
        return Relay(slot.handle.pid, sock, str(release.compiled), slot)

    def flip(self, target: Path) -> None:
        release = self.release or self.old_slot.release
        point(self.host.service, release, target, self.host.legacy_root)

    def stop(self, relay: Relay) -> None:
        if sockets.proc_state(relay.pid) not in ("Z", "X", "gone"):
            stop_relay(relay.pid, 2.0)
        slot = relay.handle
        if isinstance(slot, Slot):
            slot.handle.stop(2.0)  # supervisord reaps it and marks the program stopped

    def committed(self, run: SwapRun, new: Relay | None) -> None:
        svc, host = self.host.service, self.host
        if new is None:  # a takeover: the handoff-capable candidate holds the listener
            assert run.cand is not None
            svc.active, host.legacy_socket = run.cand, None
            fd = run.cand.link.listener(5.0)
            svc.listener = adopt_listener(fd)
            host.listener_store(fd)
            return
        assert isinstance(new.handle, Slot)
        svc.active, host.legacy_socket = new.handle, new.socket
        if svc.listener is not None:  # the old release's listener: nobody serves it any more
            svc.listener.close()
            svc.listener = None


def actions(host: Host, strategy: str, release: Release, drain_deadline: float) -> Any:
    """The engine's actions for a legacy strategy run by swapctld."""
    active = host.service.active
    assert active is not None
    place = DaemonPlace(host, active)
    takeover = TakeoverSettings(ready_timeout=host.start_timeout,
                                domain_byte=host.domain_byte, echo=host.probe_echo)
    bridge = BridgeSettings(ready_timeout=host.start_timeout, domain_byte=host.domain_byte,
                            echo=host.probe_echo, drain_deadline=drain_deadline)
    return actions_for(strategy, place, takeover=takeover, bridge=bridge)
