"""Every AF_UNIX socket path swapctl derives, checked against the kernel's limit up front.

A path the operator writes (control.socket, supervisord.socket, a service's socket) is
checked where it is read (`types.SocketPath`). The paths swapctl builds from them were not,
so a 107-byte control.socket passed `config check` and `up` failed later, on a 117-byte
handoff socket, with supervisord already started. These are they:

    RUN/SERVICE.handoff.sock              beside control.socket, one per service
    STATE/supervisord/slots/SERVICE-green/root-RELEASE-legacy-XXXXXXXX/COMPILED_NAME
                                          a legacy release's socket seen from outside its
                                          mount namespace (the longer slot, green)
    STATE_DIR/control.sock, STATE_DIR/requests.sock
                                          a standalone swap's (--state-dir, else
                                          .SOCKET.swapctl beside --socket)

The paths are built where they are used (daemon/paths.py, supervise/layout.py, the
spawner, swap/requests.py); config may import none of the daemon's packages (tests/unit/
test_layering.py), so they are restated here and tests/unit/test_derived_paths.py checks
each against the code that builds it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from swapctl.errors import UsageError

if TYPE_CHECKING:
    from swapctl.config.errors import Problem
    from swapctl.config.model import DaemonConfig, ServiceConfig
    from swapctl.config.yamlfile import Lines

MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL
LONGEST_SLOT = "green"  # supervise.layout.SLOTS: the longer of blue and green
LEGACY_TOKEN_HEX = 8    # daemon/legacy.py: f"{release}-legacy-{uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Derived:
    """A socket path swapctl builds: what it is, the setting it comes from, the fix."""

    path: Path
    what: str
    source: str  # the key or option it is derived from
    fix: str

    @property
    def size(self) -> int:
        return len(os.fsencode(self.path))

    @property
    def too_long(self) -> bool:
        return self.size > MAX_SOCKET_PATH

    def message(self) -> str:
        return (f"{self.what} ({self.path}, derived from {self.source}) is {self.size} bytes; "
                f"AF_UNIX socket paths are at most {MAX_SOCKET_PATH}: {self.fix} "
                f"(at least {self.size - MAX_SOCKET_PATH} bytes shorter)")


def handoff_socket(control: Path, service: str) -> Path:
    return control.parent / f"{service}.handoff.sock"


def supervisord_state(state_dir: Path) -> Path:
    return state_dir / "supervisord"


def legacy_slot_socket(state_dir: Path, service: str, release: str, compiled: Path) -> Path:
    """The longest path a legacy release's socket gets under the daemon's slots."""
    token = f"{release}-legacy-{'x' * LEGACY_TOKEN_HEX}"
    slot = supervisord_state(state_dir) / "slots" / f"{service}-{LONGEST_SLOT}"
    return slot / f"root-{token}" / compiled.name


def daemon_sockets(daemon: DaemonConfig,
                   services: Mapping[str, ServiceConfig]) -> list[tuple[str, Derived]]:
    """(swapctld.yaml key, derived socket) for every socket swapctld builds."""
    control = Path(daemon.control.socket)
    found = [("control.socket", Derived(
        handoff_socket(control, name), f"the handoff socket of {name}", "control.socket",
        "give control.socket a shorter directory (its relays' SERVICE.handoff.sock sit "
        "beside it), or a shorter service file name"))
        for name in sorted(services)]
    for name in sorted(services):
        for release_name, release in sorted(services[name].releases.items()):
            if release.compiled_socket is None:
                continue
            found.append(("state_dir", Derived(
                legacy_slot_socket(Path(daemon.state_dir), name, release_name,
                                   Path(release.compiled_socket)),
                f"legacy release {name}/{release_name}'s slot socket", "state_dir",
                "choose a shorter state_dir (or a shorter release name)")))
    return found


def daemon_problems(file: Path, daemon: DaemonConfig, services: Mapping[str, ServiceConfig],
                    lines: Lines) -> list[Problem]:
    """A Problem on swapctld.yaml for each derived socket path that is too long."""
    from swapctl.config.errors import Problem  # noqa: PLC0415 (pydantic: config check only)

    return [Problem(file, key, derived.message(), lines.get(tuple(key.split("."))))
            for key, derived in daemon_sockets(daemon, services) if derived.too_long]


def standalone_sockets(state_dir: Path) -> list[Path]:
    """The sockets a standalone swap binds in its state dir."""
    return [state_dir / "control.sock", state_dir / "requests.sock"]


def check_standalone(state_dir: Path, given: bool) -> None:
    """UsageError, naming the derived sockets that are too long and the option that fixes
    them, when a standalone swap's state dir (`given`: by --state-dir) is too long."""
    long = {p: len(os.fsencode(p)) for p in standalone_sockets(state_dir)
            if len(os.fsencode(p)) > MAX_SOCKET_PATH}
    if not long:
        return
    where = ("--state-dir" if given else
             "--socket: with no --state-dir the state dir is derived from it")
    fix = ("a shorter --state-dir" if given else
           "--state-dir DIR with a short DIR (e.g. /tmp/swap1), or a shorter --socket")
    sizes = ", ".join(f"{p} is {n} bytes" for p, n in long.items())
    raise UsageError(f"the swap's sockets would not fit AF_UNIX's {MAX_SOCKET_PATH} bytes: "
                     f"{sizes} (state dir from {where}): give {fix}, at least "
                     f"{max(long.values()) - MAX_SOCKET_PATH} bytes shorter")
