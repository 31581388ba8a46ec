"""Private directories: where swapctl keeps state that other users must not be able to
change (journal, reports, control and request sockets).

`ensure_private_dir` creates a missing directory with a private mode, and accepts an
existing one only if it is a real directory (not a symbolic link), owned by us or root,
and writable by nobody else. Anything else is refused with what is wrong and what to do,
instead of writing a journal or binding a socket where another user could swap it.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from swapctl.errors import UsageError


def ensure_private_dir(path: Path, mode: int = 0o700) -> Path:
    """Create `path` (and missing parents) with `mode`, or check the existing one."""
    missing: list[Path] = []
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    for create in reversed(missing):
        try:
            os.mkdir(create, mode)
        except FileExistsError:
            pass  # created meanwhile: checked below
        except OSError as exc:
            raise UsageError(f"cannot create directory {create}: {exc.strerror}; create it "
                             "(mode 0700, owned by the user swapctl runs as) or pick "
                             "another directory") from None
    check_private_dir(path)
    return path


def check_private_dir(path: Path) -> None:
    """Raise UsageError unless `path` is a directory only we (or root) can change."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise UsageError(f"cannot inspect directory {path}: {exc.strerror}") from None
    fix = "or pick another directory (state_dir / control.socket in swapctld.yaml, " \
          "--state-dir for a standalone swap)"
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{path} is a symbolic link (to {os.readlink(path)}): swapctl keeps "
                         f"its state only in a real directory; replace the link by the "
                         f"directory {fix}")
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path} is not a directory ({_kind(st.st_mode)}): move it away "
                         f"{fix}")
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise UsageError(f"{path} belongs to {_user(st.st_uid)}, not to {_user(me)} who runs "
                         f"swapctl: another user could change its state; `chown "
                         f"{_name(me)} {path}` {fix}")
    if st.st_mode & 0o022:
        raise UsageError(f"{path} is writable by its group or by everyone (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}): another user could replace its "
                         f"journal or sockets; `chmod go-w {path}` {fix}")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISREG, "a regular file"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a directory")


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _user(uid: int) -> str:
    name = _name(uid)
    return f"uid {uid}" if name == str(uid) else f"{name} (uid {uid})"
