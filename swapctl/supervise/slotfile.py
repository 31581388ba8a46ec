"""The slot file: which release a supervisord slot runs next (`SLOT_DIR/release.json`).

swapctl writes it before each `startProcess`; the slot's launcher reads it and execs the
release, so a swap changes a file, never supervisord's configuration. Standard library
only: the launcher imports this module on every relay start.

    {"format": 1, "release": "v2", "argv": ["/opt/relay/v2/relay", "--flag"],
     "env": {"SWAPCTL_HANDOFF": "...", "SWAPCTL_TOKEN": "...",
             "SWAPCTL_SOCKET": "...", "SWAPCTL_RELEASE": "v2"},
     "cwd": "/srv"}                                   (cwd optional)

Beside it, `SLOT_DIR/pid.json` names the process that runs the slot now, written by the
launcher just before its exec (so the pid is the relay's): {"pid", "token", "start"},
`start` being the kernel's start time of that process (/proc/PID/stat, clock ticks since
boot), so a reused pid is never taken for it. supervisord forgets its children when it
dies, and they keep running: this file is how swapctl finds them again (`live_pid`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

FORMAT = 1
FILENAME = "release.json"
PID_FILENAME = "pid.json"
REQUIRED_ENV = ("SWAPCTL_HANDOFF", "SWAPCTL_TOKEN", "SWAPCTL_SOCKET", "SWAPCTL_RELEASE")


class SlotFileError(Exception):
    """The slot file is missing or not what swapctl writes (message names file and key)."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class SlotSpec(NamedTuple):  # (not a dataclass: importing dataclasses costs ~10 ms a start)
    release: str
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": FORMAT, "release": self.release,
                                "argv": list(self.argv), "env": dict(self.env)}
        if self.cwd is not None:
            data["cwd"] = self.cwd
        return data


def path_in(slot_dir: Path) -> Path:
    return slot_dir / FILENAME


def write(slot_dir: Path, spec: SlotSpec) -> Path:
    """Atomically replace the slot file (owner-only: it carries the relay's token)."""
    slot_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    final = path_in(slot_dir)
    tmp = slot_dir / f".{FILENAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(spec.to_json(), out, indent=1)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, final)
    return final


def read(slot_dir: Path) -> SlotSpec:
    """The slot's release, or SlotFileError saying what is wrong and where."""
    path = path_in(slot_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SlotFileError(f"{path}: no slot file: swapctl writes it before starting "
                            "this slot; start the slot through swapctl, not supervisorctl",
                            missing=True) from None
    except OSError as exc:
        raise SlotFileError(f"{path}: cannot read the slot file: {exc.strerror}",
                            missing=True) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SlotFileError(f"{path}: line {exc.lineno}: not JSON ({exc.msg})") from None
    return parse(data, str(path))


def parse(data: object, where: str) -> SlotSpec:
    if not isinstance(data, dict):
        raise SlotFileError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise SlotFileError(f"{where}: format: expected {FORMAT}, got {data.get('format')!r} "
                            "(written by another swapctl version?)")
    release = data.get("release")
    if not isinstance(release, str) or not release:
        raise SlotFileError(f"{where}: release: expected a non-empty string")
    argv = data.get("argv")
    if (not isinstance(argv, list) or not argv
            or not all(isinstance(a, str) and a for a in argv)):
        raise SlotFileError(f"{where}: argv: expected a non-empty list of non-empty strings, "
                            f"got {argv!r}")
    env = data.get("env")
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise SlotFileError(f"{where}: env: expected an object of strings")
    missing = [k for k in REQUIRED_ENV if k not in env]
    if missing:
        raise SlotFileError(f"{where}: env: missing {', '.join(missing)}")
    cwd = data.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise SlotFileError(f"{where}: cwd: expected a path string")
    return SlotSpec(release, tuple(argv), dict(env), cwd)


class PidRecord(NamedTuple):
    pid: int
    token: str
    start: int  # clock ticks after boot (/proc/PID/stat field 22)


def proc_start(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks after boot, state letter) of a process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode(errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) ": state is field 3
    try:
        return int(fields[19]), fields[0]
    except (IndexError, ValueError):
        return None


def write_pid(slot_dir: Path, pid: int, token: str) -> Path:
    """Record that `pid` runs the slot now (the launcher, before its exec)."""
    started = proc_start(pid)
    record = {"pid": pid, "token": token, "start": started[0] if started else 0}
    final = slot_dir / PID_FILENAME
    tmp = slot_dir / f".{PID_FILENAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out)
    os.replace(tmp, final)
    return final


def read_pid(slot_dir: Path) -> PidRecord | None:
    """The slot's last pid record, or None (none written, or not one swapctl writes)."""
    try:
        data = json.loads((slot_dir / PID_FILENAME).read_text())
        record = PidRecord(int(data["pid"]), str(data["token"]), int(data["start"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if record.pid > 0 else None


def live_pid(slot_dir: Path) -> PidRecord | None:
    """The slot's pid record if that very process still runs (not a zombie, not a reused
    pid): a relay that may have outlived the supervisord that started it."""
    record = read_pid(slot_dir)
    return record if record is not None and live_pid_is(record) else None


def live_pid_is(record: PidRecord) -> bool:
    """The recorded process still runs (same start time, not a zombie)."""
    now = proc_start(record.pid)
    return now is not None and now[1] not in ("Z", "X") and now[0] == record.start
