"""The systemd side of swapctld: sd_notify, the watchdog, and fds handed back at start.

How this works (sd_notify(3), sd_watchdog_enabled(3), sd_listen_fds(3), systemd.service(5)):

- The service manager names a datagram socket in NOTIFY_SOCKET: an absolute path, or
  `@name` for the abstract namespace (the `@` stands for a leading NUL byte). A message is
  one AF_UNIX SOCK_DGRAM datagram of newline-separated `KEY=VALUE` lines. No reply comes.
- `FDSTORE=1` with `FDNAME=name` and descriptors attached as SCM_RIGHTS asks the manager to
  keep them across a restart of the daemon (FileDescriptorStoreMax= must be non-zero);
  `FDSTOREREMOVE=1` with `FDNAME=name` drops them again.
- On the next start the manager passes stored and socket-activated fds from fd 3 upwards:
  LISTEN_PID (must be our pid, else they were meant for a parent), LISTEN_FDS (how many) and
  LISTEN_FDNAMES (colon-separated names; "unknown" where none is given).
- WATCHDOG_USEC asks for `WATCHDOG=1` within that many microseconds, when WATCHDOG_PID is
  unset or our pid; the usual cadence is half of it.

Failing to notify must never take the daemon down: `notify` returns False and logs the first
failure of a run of failures; a success re-arms the log. Malformed messages are our bug and
raise ValueError.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import time
from collections.abc import Sequence

from swapctl.logs import event

log = logging.getLogger("swapctl.daemon.sdnotify")

LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PIDFDID")
_WATCHDOG_VARS = ("WATCHDOG_USEC", "WATCHDOG_PID")
_FDNAME_MAX = 255


def _encode(assignments: Sequence[str]) -> bytes:
    if not assignments:
        raise ValueError("sd_notify message needs at least one KEY=VALUE assignment")
    for item in assignments:
        key, sep, _ = item.partition("=")
        if not sep or not key or "\n" in item:
            raise ValueError(f"sd_notify assignment {item!r} must be one KEY=VALUE line")
    return "\n".join(assignments).encode()


def _check_fdname(name: str) -> str:
    if not name or len(name) > _FDNAME_MAX or ":" in name or not name.isprintable():
        raise ValueError(
            f"fd store name {name!r} must be 1-{_FDNAME_MAX} printable characters without ':'"
        )
    return name


class Notifier:
    """Sends sd_notify datagrams to one socket address (a path, or bytes starting NUL)."""

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_env(cls, unset_env: bool = False) -> Notifier | None:
        """The notifier NOTIFY_SOCKET names, or None when it is unset or not a Unix socket."""
        value = os.environ.get("NOTIFY_SOCKET", "")
        if unset_env:
            os.environ.pop("NOTIFY_SOCKET", None)
        if not value:
            return None
        if value.startswith("@"):
            return cls(b"\0" + value[1:].encode())
        if value.startswith("/"):
            return cls(value)
        event(log, logging.WARNING, "sd_notify_unsupported_address", address=value,
              hint="only absolute paths and @abstract names are supported; notify disabled")
        return None

    def notify(self, *assignments: str, fds: Sequence[int] = ()) -> bool:
        """Send one datagram; True when the kernel accepted it, False (logged) otherwise."""
        data = _encode(assignments)
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendmsg([data], ancillary, 0, self.address)
        except OSError as exc:
            if not self._failing:
                event(log, logging.WARNING, "sd_notify_failed", address=self.address,
                      message=data.decode(errors="replace"), error=str(exc),
                      hint="the service manager did not get this notification; "
                           "further failures are not logged until one succeeds")
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with the MONOTONIC_USEC that Type=notify-reload requires."""
        stamp = f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        return self.notify("RELOADING=1", stamp, *_status(status))

    def fdstore(self, name: str, fds: Sequence[int]) -> bool:
        """Ask the manager to keep `fds` under `name` until the next start of the daemon."""
        if not fds:
            raise ValueError(f"fdstore({name!r}) needs at least one file descriptor")
        return self.notify("FDSTORE=1", f"FDNAME={_check_fdname(name)}", fds=fds)

    def fdstore_remove(self, name: str) -> bool:
        return self.notify("FDSTOREREMOVE=1", f"FDNAME={_check_fdname(name)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> tuple[str, ...]:
    return () if text is None else (f"STATUS={text}",)


def _own_pid(value: str) -> bool:
    try:
        return int(value) == os.getpid()
    except ValueError:
        return False


def watchdog_interval(unset_env: bool = False) -> float | None:
    """Seconds within which the manager wants WATCHDOG=1 from us, or None (no watchdog)."""
    usec, pid = (os.environ.get(name, "") for name in _WATCHDOG_VARS)
    if unset_env:
        for name in _WATCHDOG_VARS:
            os.environ.pop(name, None)
    if not usec or (pid and not _own_pid(pid)):
        return None
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        event(log, logging.WARNING, "watchdog_usec_invalid", value=usec,
              hint="WATCHDOG_USEC must be a positive integer; watchdog pings disabled")
        return None
    return value / 1_000_000


def listen_fds(unset_env: bool = True) -> dict[str, list[int]]:
    """Fds the manager passed us (socket activation, fd store), by name, in order.

    Every fd gets FD_CLOEXEC so relays we spawn do not inherit it by accident.
    """
    pid, count, names = (os.environ.get(name, "") for name in _LISTEN_VARS[:3])
    if unset_env:
        for name in _LISTEN_VARS:
            os.environ.pop(name, None)
    if not pid or not count or not _own_pid(pid):
        return {}
    try:
        n = int(count)
    except ValueError:
        n = -1
    if n < 0:
        event(log, logging.WARNING, "listen_fds_invalid", value=count,
              hint="LISTEN_FDS must be a non-negative integer; passed fds ignored")
        return {}
    labels = names.split(":") if names else []
    if len(labels) > n:
        event(log, logging.WARNING, "listen_fdnames_extra", fds=n, names=names)
    labels += ["unknown"] * (n - len(labels))
    found: dict[str, list[int]] = {}
    for fd, label in zip(range(LISTEN_FDS_START, LISTEN_FDS_START + n), labels, strict=False):
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            event(log, logging.WARNING, "listen_fd_unusable", fd=fd, fdname=label, error=str(exc))
            continue
        found.setdefault(label, []).append(fd)
    return found
