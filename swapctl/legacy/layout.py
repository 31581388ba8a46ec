"""The legacy slot layout: isolated slots behind a public symlink that swapctl owns.

A legacy relay binds a path compiled into it (say /tmp/torq/market_data.sock) and
deletes whatever is there first. Under this layout it never touches the real path:

    ROOT/slots/a/            private folder, bind-mounted over /tmp/torq inside slot a's
    ROOT/slots/a/market_data.sock   own mount namespace: the relay's socket, seen from outside
    ROOT/slots/a.json        who serves slot a (pid, start time, command, kind)
    /tmp/torq/market_data.sock -> ROOT/slots/a/market_data.sock   the public symlink

Each slot's relay runs through `python -m swapctl.isolation --bind SLOT COMPILED_DIR`
(a private mount namespace), so two builds with the same compiled-in path run side by
side. Clients connect to the public path; connect(2) follows the symlink. swapctl
flips it with a temporary symlink and rename(2) (atomic: a client sees the old target
or the new one, never nothing), and only to a socket that has just accepted a
connection, so the public path is never left dangling.

The one-time migration of a box (`migrate`) starts the release in a slot while the
old, unisolated relay keeps serving, then renames the symlink over the old socket
file: from that instant new clients reach the slot; clients already connected stay
on the old relay (its listener and connections live on without a path) until it is
retired by a strategy. See docs/legacy.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from swapctl import isolation, process, unixsock
from swapctl.errors import SwapctlError
from swapctl.swap.spawner import SubprocessHandle

READY_TIMEOUT = 10.0
POLL = 0.005


class LayoutError(SwapctlError):
    """A slot could not be started, or the public link could not be pointed."""


@dataclass(frozen=True, slots=True)
class Layout:
    public: Path  # the path clients use: a symlink swapctl owns
    compiled: Path  # the path compiled into the legacy builds
    root: Path  # swapctl's state for this service: slots live under ROOT/slots

    def slot_dir(self, name: str) -> Path:
        return self.root / "slots" / name

    def slot_socket(self, name: str) -> Path:
        """Where slot `name`'s relay socket is reachable from outside its namespace."""
        return self.slot_dir(name) / self.compiled.name

    def current(self) -> str | None:
        """The slot the public link points to, or None (not a link into a slot)."""
        if not self.public.is_symlink():
            return None
        target = Path(os.readlink(self.public))
        slots = self.root / "slots"
        if target.parent.parent != slots or target.name != self.compiled.name:
            return None
        return target.parent.name

    def free_slot(self, avoid: str | None = None) -> str:
        """A slot name not serving anything now ("a", "b", then "c"...)."""
        for name in "abcdefgh":
            if name != avoid and name != self.current() and not connectable(
                    self.slot_socket(name)):
                return name
        raise LayoutError(f"no free slot under {self.root / 'slots'}: stop old slots first")


@dataclass(slots=True)
class LegacySlot:
    """A relay started in a slot (legacy, isolated) and its process handle."""

    layout: Layout
    name: str
    handle: SubprocessHandle

    @property
    def socket(self) -> Path:
        return self.layout.slot_socket(self.name)

    @property
    def pid(self) -> int:
        return self.handle.pid

    def alive(self) -> bool:
        return self.handle.alive()

    def stop(self, timeout: float = 2.0) -> None:
        self.handle.stop(timeout)
        with contextlib.suppress(FileNotFoundError):
            state_path(self.layout, self.name).unlink()


def connectable(path: Path, timeout: float = 0.5) -> bool:
    """True if a Unix stream socket at `path` accepts a connection now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def wait_connectable(path: Path, handle: SubprocessHandle | None, timeout: float) -> float:
    """Wait until `path` accepts (the relays' only readiness signal); returns seconds.
    The wait is `unixsock.wait_connectable`'s; the errors are this layout's."""

    def alive() -> None:
        if handle is not None and not handle.alive():
            raise LayoutError(f"relay exited before {path} accepted ({handle.describe_exit()})")

    try:
        return unixsock.wait_connectable(path, timeout, alive=alive, interval=POLL)
    except OSError:
        raise LayoutError(f"{path} did not accept connections within {timeout} s") from None


def isolated_command(layout: Layout, name: str, argv: list[str]) -> list[str]:
    """The command that runs a legacy build in slot `name`."""
    bind = isolation.Bind(layout.slot_dir(name), layout.compiled.parent)
    return isolation.command(argv, [bind])


def start_legacy(layout: Layout, name: str, argv: list[str], log_dir: Path | None = None,
                 timeout: float = READY_TIMEOUT) -> LegacySlot:
    """Start a legacy build in slot `name` (own process group, own mount namespace) and
    wait until its slot socket accepts connections."""
    sock = layout.slot_socket(name)
    if connectable(sock):
        raise LayoutError(f"slot {name} is in use: {sock} accepts connections")
    layout.slot_dir(name).mkdir(parents=True, exist_ok=True)
    log = None
    log_path = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"slot-{name}.log"
        log = log_path.open("ab")
    try:
        proc = subprocess.Popen(isolated_command(layout, name, argv), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    except OSError as exc:
        if log is not None:
            log.close()
        raise LayoutError(f"cannot run {argv[0]!r} in slot {name}: {exc}") from None
    handle = SubprocessHandle(proc, log, log_path)
    try:
        wait_connectable(sock, handle, timeout)
    except LayoutError:
        handle.stop(1.0)
        raise
    slot = LegacySlot(layout, name, handle)
    write_state(layout, name, {"pid": handle.pid, "started_s": handle.started_s,
                               "command": argv, "kind": "legacy"})
    return slot


def state_path(layout: Layout, name: str) -> Path:
    return layout.root / "slots" / f"{name}.json"


def write_state(layout: Layout, name: str, state: dict[str, Any]) -> None:
    path = state_path(layout, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def read_state(layout: Layout, name: str) -> dict[str, Any] | None:
    """Who serves slot `name`, if that process is still the one recorded."""
    try:
        state: dict[str, Any] = json.loads(state_path(layout, name).read_text())
        pid = int(state["pid"])
        if "started_s" not in state:  # written by a swapctl before 2026-12: epoch seconds
            if abs(psutil.Process(pid).create_time() - float(state["create_time"])) > 1.5:
                return None
            state["started_s"] = process.started(pid)
        if not process.is_same(pid, float(state["started_s"])):
            return None
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    return state


def point(layout: Layout, target: Path, timeout: float = 2.0) -> None:
    """Atomically point the public link at `target`, a socket that must accept now.

    Refuses to replace anything at the public path that is neither a symlink nor a
    socket (a regular file or a directory is not ours to replace)."""
    if not connectable(target, timeout):
        raise LayoutError(f"refusing to point {layout.public} at {target}: it does not "
                          "accept connections (the link would dangle)")
    public = layout.public
    if public.exists() and not public.is_symlink() and not public.is_socket():
        raise LayoutError(f"{public} is neither a symlink nor a socket: not replacing it")
    public.parent.mkdir(parents=True, exist_ok=True)
    tmp = public.with_name(f".{public.name}.swapctl-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.rename(tmp, public)  # atomic: the old target or the new one, never nothing
    if not connectable(public, timeout):
        raise LayoutError(f"{public} -> {target} was pointed but does not accept connections")


@dataclass(frozen=True, slots=True)
class Migration:
    slot: str
    already: bool  # the public path was already a link into a slot: nothing done
    replaced: str  # what was at the public path: "socket", "nothing", "symlink"


def migrate(layout: Layout, argv: list[str], log_dir: Path | None = None,
            timeout: float = READY_TIMEOUT) -> tuple[Migration, LegacySlot | None]:
    """One-time move of a box to the layout: start `argv` in a slot, verify it accepts,
    then rename a symlink over the public path. The old unisolated relay (if any) is not
    touched: it keeps its connected clients; retire it with a strategy."""
    current = layout.current()
    if current is not None:
        return Migration(current, True, "symlink"), None
    public = layout.public
    replaced = "socket" if public.is_socket() else "nothing" if not public.exists() else ""
    if not replaced:
        raise LayoutError(f"{public} exists and is not a socket: move it away first")
    name = layout.free_slot()
    slot = start_legacy(layout, name, argv, log_dir, timeout)
    try:
        point(layout, slot.socket)
    except (LayoutError, OSError):
        slot.stop()
        raise
    return Migration(name, False, replaced), slot
