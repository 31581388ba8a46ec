"""Messages between a load run and its child processes, and the children's common frame.

The parent talks to each child over a `multiprocessing` pipe. A child ignores SIGINT
(the parent decides how a run ends), treats the pipe's EOF as "the parent is gone,
exit now" (so a killed parent leaves no orphans), and reports any crash as `Failed`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

from swapctl import unixsock
from swapctl.errors import SwapctlError
from swapctl.probes.report import ConsumerReport, PublisherReport


class LoadError(SwapctlError):
    """A load run could not be carried out (relay unreachable, a client crashed)."""


class ParentGone(Exception):
    """The control pipe closed: the run is over for this child."""


@dataclass(frozen=True, slots=True)
class Ready:
    pid: int


@dataclass(frozen=True, slots=True)
class Connect:
    """Publishers: connect, then repeat sync messages until Go."""


@dataclass(frozen=True, slots=True)
class Synced:
    """A child's connection is registered: it has seen every publisher's sync message
    (a publisher that audits nothing says so once connected)."""


@dataclass(frozen=True, slots=True)
class Go:
    """Publishers: publish."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Publishers: stop publishing now and report."""


@dataclass(frozen=True, slots=True)
class Settle:
    """Auditors: this is what was sent; report once it has all arrived or gone quiet."""

    sent: dict[int, int]
    idle: float
    limit: float


@dataclass(frozen=True, slots=True)
class Close:
    """Everyone: disconnect and exit."""


@dataclass(frozen=True, slots=True)
class Failed:
    error: str


@dataclass(frozen=True, slots=True)
class Published:
    report: PublisherReport


@dataclass(frozen=True, slots=True)
class Audited:
    report: ConsumerReport | PublisherReport


Command = Connect | Go | Stop | Settle | Close


def receive(ctl: Connection) -> Command:
    try:
        msg = ctl.recv()
    except (EOFError, OSError):
        raise ParentGone() from None
    if not isinstance(msg, Connect | Go | Stop | Settle | Close):
        raise TypeError(f"unexpected control message {msg!r}")
    return msg


def child_main(body: Callable[[Connection], None], ctl: Connection) -> None:
    """Run a child's body with the common rules (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        body(ctl)
    except ParentGone:
        return
    except SwapctlError as exc:
        _tell(ctl, Failed(str(exc)))
    except Exception as exc:  # noqa: BLE001 (whatever broke, the parent must hear it)
        detail = "".join(traceback.format_exception_only(exc)).strip()
        _tell(ctl, Failed(f"{detail}\n{traceback.format_exc()}"))


def _tell(ctl: Connection, msg: Failed) -> None:
    with contextlib.suppress(OSError):
        ctl.send(msg)


class CpuMeter:
    """How much of the wall time since `start()` this process ran, and waited for a CPU
    (Linux /proc/self/schedstat; elsewhere waiting reads 0)."""

    def __init__(self) -> None:
        self.begin = _cpu_sample()

    def shares(self) -> tuple[float, float]:
        """(busy, starved) as fractions of the wall time since construction."""
        now = _cpu_sample()
        wall = now[0] - self.begin[0]
        if wall <= 0:
            return 0.0, 0.0
        return (now[1] - self.begin[1]) / wall, (now[2] - self.begin[2]) / wall


def _cpu_sample() -> tuple[float, float, float]:
    """(wall, on-CPU, waiting-for-CPU) seconds."""
    wall = time.monotonic()
    try:
        with open("/proc/self/schedstat") as f:
            run_ns, wait_ns = (int(x) for x in f.read().split()[:2])
    except (OSError, ValueError):
        return wall, time.process_time(), 0.0
    return wall, run_ns / 1e9, wait_ns / 1e9


def connect(path: str, timeout: float) -> socket.socket:
    """A non-blocking connection to the relay, retried every 20 ms until `timeout` passes."""
    try:
        sock = unixsock.connect(path, timeout, interval=0.02)
    except OSError as exc:
        raise LoadError(
            f"cannot connect to {path}: {exc.strerror or exc}; is the relay running "
            f"and accepting there? (waited {timeout:.1f} s)"
        ) from None
    sock.setblocking(False)
    return sock
