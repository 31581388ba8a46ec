"""Starting a relay under test, isolated, and stopping it with everything it started.

A relay is named by a command or a built-in release:
- `reference`, `reference:chunk`, `reference:no-validate`, `reference:sink`,
  `reference:no-echo`: the reference relay in one of its modes;
- a command line. `{socket}` in it is replaced by a private socket path. Without
  `{socket}` the relay is taken to bind a hard-coded path (by default the real relays'
  path for the domain and profile) and runs in a private mount namespace where that
  directory is a private folder (swapctl.isolation): this works for binaries that take
  no arguments at all.
Each relay runs in its own process group, its output goes to a log file in the run's
work directory, readiness is "the socket accepts", and stop is SIGTERM to the group,
then SIGKILL after a grace period. If swapctl itself dies, the kernel sends the relay
SIGTERM (PR_SET_PDEATHSIG), so no relay under test outlives its run.
"""

from __future__ import annotations

import ctypes
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from swapctl import isolation, unixsock
from swapctl.errors import SwapctlError, UsageError
from swapctl.process import stop_group
from swapctl.protocol.profiles import Domain, Profile

PLACEHOLDER = "{socket}"
PR_SET_PDEATHSIG = 1
REFERENCE_MODES = {"": (), "frame": (), "chunk": ("--framing", "chunk"),
                   "no-validate": ("--no-validate",), "sink": ("--sink",),
                   "no-echo": ("--no-echo",)}
_SOCKET_NAMES = {Domain.MARKET_DATA: "market_data.sock", Domain.SIGNAL: "signals.sock",
                 Domain.EXECUTION: "execution.sock"}
_DIRS = {Profile.TORQ: Path("/tmp/torq"), Profile.ALPHAPULSE: Path("/tmp/alphapulse")}


@dataclass(frozen=True, slots=True)
class RelaySpec:
    label: str  # as the operator wrote it
    argv: tuple[str, ...]  # may contain {socket}
    hardcoded: Path | None  # the path it binds by itself (then isolated), or None


def default_path(domain: Domain, profile: Profile) -> Path:
    """Where the real relays bind: /tmp/torq/... (torq) or /tmp/alphapulse/... (alphapulse)."""
    name = _SOCKET_NAMES.get(domain)
    if name is None:
        raise UsageError(f"no real relay serves the {domain.value} domain: give the "
                         "socket path the command binds with --old-path/--new-path")
    return _DIRS[profile] / name


def resolve(text: str, domain: Domain, profile: Profile, path: Path | None = None
            ) -> RelaySpec:
    """A RelaySpec for a built-in release name or a command line."""
    if text == "reference" or text.startswith("reference:"):
        mode = text.partition(":")[2]
        if mode not in REFERENCE_MODES:
            raise UsageError(f"unknown reference mode {mode!r}: use one of "
                             f"{', '.join(m for m in REFERENCE_MODES if m)}")
        argv = (sys.executable, "-P", "-m", "swapctl.relay", "--socket", PLACEHOLDER,
                "--domain", domain.value, "--profile", profile.value,
                "--log-level", "warning", *REFERENCE_MODES[mode])
        return RelaySpec(text, argv, None)
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"cannot parse relay command {text!r}: {exc}") from None
    if not argv:
        raise UsageError("empty relay command")
    if any(PLACEHOLDER in a for a in argv):
        return RelaySpec(text, argv, None)
    return RelaySpec(text, argv, path or default_path(domain, profile))


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if swapctl dies without stopping it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class RelayProcess:
    """One relay under test; a context manager that always stops its process group."""

    def __init__(self, spec: RelaySpec, workdir: Path, name: str) -> None:
        self.spec = spec
        self.name = name
        self.private = workdir / name
        self.log = workdir / f"{name}.log"
        leaf = spec.hardcoded.name if spec.hardcoded else "relay.sock"
        self.socket = self.private / leaf
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [a.replace(PLACEHOLDER, str(self.socket)) for a in self.spec.argv]
        if self.spec.hardcoded is None:
            return argv
        bind = isolation.Bind(self.private, self.spec.hardcoded.parent)
        return isolation.command(argv, [bind])

    def start(self, timeout: float = 10.0) -> RelayProcess:
        """Spawn, then wait until the socket accepts connections."""
        self.spawn()
        self.wait_ready(timeout)
        return self

    def spawn(self) -> None:
        self.private.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            try:  # the side-by-side runner is single-threaded: preexec_fn is safe here
                self.proc = subprocess.Popen(
                    self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True, close_fds=True,
                    preexec_fn=_die_with_parent)  # noqa: PLW1509
            except OSError as exc:
                raise UsageError(f"{self.name} relay: cannot run {self.spec.label!r}: "
                                 f"{exc}") from None

    def wait_ready(self, timeout: float) -> None:
        proc = self.proc
        assert proc is not None

        def alive() -> None:
            if proc.poll() is not None:
                raise SwapctlError(
                    f"{self.name} relay ({self.spec.label}) exited with code "
                    f"{proc.returncode} before its socket accepted connections; "
                    f"its log ends with:\n{self.log_tail()}")

        try:
            unixsock.wait_connectable(self.socket, timeout, alive=alive, interval=0.005)
            return
        except OSError:
            pass
        self.stop()
        where = (f"{self.spec.hardcoded} (private folder {self.private})"
                 if self.spec.hardcoded else str(self.socket))
        raise SwapctlError(f"{self.name} relay ({self.spec.label}) did not accept "
                           f"connections on {where} within {timeout}s; if it binds "
                           "another path, give it with --old-path/--new-path")

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 3.0) -> None:
        proc = self.proc
        if proc is None:
            return
        stop_group(proc, grace)

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
