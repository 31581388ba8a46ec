"""A supervisord slot's command: exec the release that swapctl chose for this slot.

    python -m swapctl.supervise.launcher --slot DIR [--log FILE --log-max-bytes N
                                                     --log-backups K]

with --log, first makes FILE the relay's stdout and stderr (appended; rotated first,
as FILE.1 .. FILE.K, if it has grown past N bytes), so the relay's output never goes
through supervisord's pipes, which die with supervisord (a relay writing to a dead
pipe loses its output, or fails); then reads DIR/release.json (see `slotfile`),
records its pid in DIR/pid.json (how swapctl finds the relay again if supervisord dies
first), prints one line to stderr naming the release (the slot's log then shows where
each run begins), and `execvpe`s the release's argv
with the file's environment over the inherited one. The pid supervisord reports is
therefore the relay's own. Nothing here runs after a successful exec.

Exit codes when the release never ran (supervisord records them as the exit status;
the line on stderr, in the slot's log, says what and where):
    64  bad launcher command line          65  the slot file is not valid
    66  the slot file is missing           71  cannot enter the release's cwd
    126 the release cannot be executed     127 the release's program does not exist
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from swapctl.supervise import slotfile

EXIT_USAGE = 64       # bad command line (EX_USAGE)
EXIT_BAD_FILE = 65    # the slot file is not valid (EX_DATAERR)
EXIT_NO_FILE = 66     # the slot file is missing or unreadable (EX_NOINPUT)
EXIT_OS = 71          # could not change to the release's directory (EX_OSERR)
EXIT_CANNOT_RUN = 126  # the release's program exists but cannot be executed
EXIT_NOT_FOUND = 127   # the release's program does not exist
EXIT_CODES = {
    EXIT_USAGE: "bad launcher command line",
    EXIT_BAD_FILE: "invalid slot file",
    EXIT_NO_FILE: "missing slot file",
    EXIT_OS: "cannot enter the release's directory",
    EXIT_CANNOT_RUN: "release program cannot be executed",
    EXIT_NOT_FOUND: "release program not found",
}

PREFIX = "swapctl launcher"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        _fail(EXIT_USAGE, message)


def _fail(code: int, message: str) -> NoReturn:
    sys.stderr.write(f"{PREFIX}: error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def _own_log(path: Path, max_bytes: int, backups: int) -> None:
    """Make `path` fds 1 and 2 (on failure, say so and keep supervisord's pipes)."""
    try:
        _rotate(path, max_bytes, backups)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        sys.stderr.write(f"{PREFIX}: warning: {path}: cannot open the relay's log "
                         f"({exc.strerror}): its output goes through supervisord\n")
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _rotate(path: Path, max_bytes: int, backups: int) -> None:
    try:
        if max_bytes <= 0 or path.stat().st_size < max_bytes:
            return
    except FileNotFoundError:
        return
    if backups <= 0:
        os.truncate(path, 0)
        return
    for number in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{number}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{number + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = _Parser(prog="python -m swapctl.supervise.launcher",
                     description="Exec the release swapctl chose for a supervisord slot.")
    parser.add_argument("--slot", required=True, type=Path, metavar="DIR",
                        help=f"the slot's directory (holding {slotfile.FILENAME})")
    parser.add_argument("--log", type=Path, metavar="FILE",
                        help="the relay's stdout and stderr (appended)")
    parser.add_argument("--log-max-bytes", type=int, default=0, metavar="N",
                        help="rotate FILE before the start once it has N bytes (0: never)")
    parser.add_argument("--log-backups", type=int, default=0, metavar="K",
                        help="rotated files kept (FILE.1 .. FILE.K)")
    args = parser.parse_args(argv)
    if args.log is not None:
        _own_log(args.log, args.log_max_bytes, args.log_backups)
    slot_dir: Path = args.slot
    try:
        spec = slotfile.read(slot_dir)
    except slotfile.SlotFileError as exc:
        _fail(EXIT_NO_FILE if exc.missing else EXIT_BAD_FILE, str(exc))
    if spec.cwd is not None:
        try:
            os.chdir(spec.cwd)
        except OSError as exc:
            _fail(EXIT_OS, f"{slotfile.path_in(slot_dir)}: cwd: cannot enter {spec.cwd}: "
                           f"{exc.strerror}")
    token = spec.env.get("SWAPCTL_TOKEN", "")
    try:  # how swapctl finds this relay again if supervisord dies before it does
        slotfile.write_pid(slot_dir, os.getpid(), token)
    except OSError as exc:
        sys.stderr.write(f"{PREFIX}: warning: {slot_dir / slotfile.PID_FILENAME}: cannot "
                         f"record the pid ({exc.strerror}): if supervisord dies, swapctl "
                         "cannot find this relay again\n")
    sys.stderr.write(f"{PREFIX}: slot {slot_dir.name}: release {spec.release} "
                     f"(token {token}, pid {os.getpid()}): exec {' '.join(spec.argv)}\n")
    sys.stderr.flush()
    env = dict(os.environ, **spec.env)
    try:
        os.execvpe(spec.argv[0], list(spec.argv), env)
    except FileNotFoundError:
        _fail(EXIT_NOT_FOUND, f"{slotfile.path_in(slot_dir)}: argv[0]: release "
                              f"{spec.release}: {spec.argv[0]!r} not found "
                              f"(PATH={env.get('PATH', '')})")
    except OSError as exc:
        _fail(EXIT_CANNOT_RUN, f"{slotfile.path_in(slot_dir)}: argv[0]: release "
                               f"{spec.release}: cannot execute {spec.argv[0]!r}: {exc.strerror}")


if __name__ == "__main__":
    main()
