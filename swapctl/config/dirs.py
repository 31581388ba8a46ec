"""Whether swapctld could own its state and log directories, checked without changing
anything (`swapctl config check` only checks; swapctld creates them at start).

The rules are `swapctl.fsutil.ensure_private_dir`'s: an existing directory must be a real
directory (not a symbolic link, not a file), writable by nobody but its owner, and owned
by the user checking (or root); a missing one must be creatable, that is, its nearest
existing ancestor is a directory. Two differences, because the check often runs as
another user than the daemon: when root checks, any owner is accepted (systemd's
StateDirectory= gives the directory to the unit's User=; swapctld checks the owner
again at start), and a missing directory under an ancestor the checker cannot write is
accepted (systemd creates it).
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path


def dir_problem(path: Path) -> str | None:
    """What keeps swapctl from owning `path` as a private directory, or None."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return _missing(path)
    except OSError as exc:
        return f"cannot inspect {path}: {exc.strerror}: check its parent's permissions"
    if stat.S_ISLNK(st.st_mode):
        return (f"{path} is a symbolic link (to {os.readlink(path)}): swapctl keeps its "
                "files only in a real directory; point this key at the directory itself")
    if not stat.S_ISDIR(st.st_mode):
        return (f"{path} is not a directory ({_kind(st.st_mode)}): point this key at "
                "a directory swapctl owns (e.g. /var/lib/swapctl, /var/log/swapctl)")
    if st.st_mode & 0o022:
        return (f"{path} is writable by its group or by everyone (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): another user could replace swapctl's "
                f"files there; point this key at a private directory (or `chmod go-w {path}` "
                "if the directory is swapctl's own)")
    me = os.geteuid()
    if me != 0 and st.st_uid not in (me, 0):
        return (f"{path} belongs to {_user(st.st_uid)}, not to {_user(me)} who "
                f"checks it: swapctld refuses a directory another user can change; `chown "
                f"{_user(me)} {path}`, or check as the user swapctld runs as")
    return None


def _missing(path: Path) -> str | None:
    for ancestor in path.parents:
        try:
            st = os.stat(ancestor)  # links followed, as mkdir does
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            return f"cannot inspect {ancestor}: {exc.strerror}: check its permissions"
        if not stat.S_ISDIR(st.st_mode):
            return (f"cannot be created: {ancestor} is not a directory "
                    f"({_kind(st.st_mode)}); point this key at a directory swapctl "
                    "owns (e.g. /var/lib/swapctl)")
        return None
    return None


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISREG, "a regular file"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a directory")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
