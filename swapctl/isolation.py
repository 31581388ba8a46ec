"""Run a command in a private mount namespace where chosen directories are private folders.

Why: the real relays bind a hard-coded path (e.g. /tmp/torq/market_data.sock) and first
delete whatever is there, so a second relay silently steals the path from a live one.
`python -m swapctl.isolation --bind PRIVATE TARGET -- CMD [ARGS...]` runs CMD in its
own mount namespace where TARGET is a bind mount of PRIVATE: the relay creates its
socket in PRIVATE (reachable from outside as PRIVATE/<name>) and the real TARGET is
never touched. The launcher execs CMD, so the pid is the relay's own; stopping it
needs nothing special. `command()` builds that command line for a supervisor.

How it works: unshare(CLONE_NEWNS) as root, or with a user namespace mapping the
caller to root inside when unprivileged (like `unshare -rm`); make every mount
private so nothing propagates back to the host; create TARGET if it is missing (an
empty directory on the host is the only trace); bind-mount PRIVATE over it; exec.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from swapctl.errors import SwapctlError, UsageError

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
EXIT_ISOLATION = 3  # the launcher could not isolate: the command never ran


class IsolationError(SwapctlError):
    """A mount namespace could not be set up."""


@dataclass(frozen=True, slots=True)
class Bind:
    source: Path  # a private folder
    target: Path  # the directory the command believes it uses


def command(argv: Sequence[str], binds: Sequence[Bind]) -> list[str]:
    """The command line that runs `argv` with `binds` in a private mount namespace."""
    out = [sys.executable, "-P", "-m", "swapctl.isolation"]
    for bind in binds:
        out += ["--bind", str(bind.source), str(bind.target)]
    return [*out, "--", *argv]


def enter(binds: Sequence[Bind]) -> None:
    """Move the calling process into a new mount namespace and apply `binds`."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        if err != errno.EPERM or libc.unshare(CLONE_NEWNS | CLONE_NEWUSER) != 0:
            raise IsolationError(
                f"cannot create a mount namespace: {os.strerror(ctypes.get_errno() or err)}; "
                "run as root, or enable unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    _mount(libc, None, "/", MS_REC | MS_PRIVATE)
    for bind in binds:
        if not bind.source.is_dir():
            raise IsolationError(f"private folder {bind.source} does not exist: create it "
                                 "before starting the command")
        bind.target.mkdir(parents=True, exist_ok=True)
        _mount(libc, str(bind.source), str(bind.target), MS_BIND)


def _mount(libc: ctypes.CDLL, source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source is not None else None
    if libc.mount(src, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        what = f"bind {source} on {target}" if source else f"make {target} private"
        raise IsolationError(f"mount failed ({what}): {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def parse(args: Sequence[str]) -> tuple[list[Bind], list[str]]:
    """`--bind SRC DST ... -- CMD ARGS...` -> binds and the command."""
    binds: list[Bind] = []
    rest = list(args)
    while rest and rest[0] == "--bind":
        if len(rest) < 3:
            raise UsageError("--bind needs two paths: PRIVATE_FOLDER TARGET_DIR")
        binds.append(Bind(Path(rest[1]), Path(rest[2])))
        rest = rest[3:]
    if not rest or rest[0] != "--" or len(rest) < 2:
        raise UsageError("usage: python -m swapctl.isolation --bind PRIVATE TARGET ... "
                         "-- COMMAND [ARGS...]")
    return binds, rest[1:]


def main(args: Sequence[str] | None = None) -> NoReturn:
    try:
        binds, argv = parse(sys.argv[1:] if args is None else args)
        enter(binds)
        os.execvp(argv[0], argv)
    except SwapctlError as exc:
        print(f"swapctl isolation: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UsageError) else EXIT_ISOLATION)
    except OSError as exc:
        print(f"swapctl isolation: cannot run {argv[0]!r}: {exc}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
