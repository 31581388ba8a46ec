"""The slot launcher owns the relay's log (--log): the relay's output goes to the file
itself, never through supervisord's pipes (which die with supervisord), and the file is
rotated at a start once it is too big. Also the slot's pid record."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from swapctl.supervise import slotfile
from swapctl.supervise.layout import Layout, byte_size

ENV = {"SWAPCTL_HANDOFF": "/run/c.sock", "SWAPCTL_TOKEN": "v2-7",
       "SWAPCTL_SOCKET": "/tmp/md.sock", "SWAPCTL_RELEASE": "v2"}
SPEAK = ("import os, sys; print('out', os.getpid(), flush=True); "
         "print('err', file=sys.stderr, flush=True)")


def launch(slot: Path, log: Path, *extra: str) -> tuple[int, int, str, str]:
    proc = subprocess.Popen([sys.executable, "-m", "swapctl.supervise.launcher", "--slot",
                             str(slot), "--log", str(log), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=20)
    return proc.returncode, proc.pid, out, err


def test_the_relay_writes_its_own_log_and_its_pid_is_recorded(tmp_path: Path) -> None:
    slot, log = tmp_path / "md-blue", tmp_path / "md-blue.log"
    slotfile.write(slot, slotfile.SlotSpec("v2", (sys.executable, "-c", SPEAK), dict(ENV)))
    log.write_text("an earlier run\n")
    code, pid, out, err = launch(slot, log)
    assert code == 0 and out == "" and err == "", "nothing through the parent's pipes"
    lines = log.read_text().splitlines()
    assert lines[0] == "an earlier run"  # appended
    assert lines[1].startswith(f"swapctl launcher: slot md-blue: release v2 (token v2-7, "
                               f"pid {pid})")
    assert lines[2:] == [f"out {pid}", "err"]
    record = slotfile.read_pid(slot)
    assert record is not None and (record.pid, record.token) == (pid, "v2-7")
    assert slotfile.live_pid(slot) is None, "it has exited: not live"
    assert slotfile.live_pid_is(record._replace(pid=os.getpid())) is False, \
        "a pid whose start time differs is not the recorded process"


def test_the_log_is_rotated_at_a_start_once_too_big(tmp_path: Path) -> None:
    slot, log = tmp_path / "md-green", tmp_path / "md-green.log"
    slotfile.write(slot, slotfile.SlotSpec("v2", (sys.executable, "-c", SPEAK), dict(ENV)))
    log.write_text("x" * 2000)
    (tmp_path / "md-green.log.1").write_text("older")
    code, _pid, _out, _err = launch(slot, log, "--log-max-bytes", "1000", "--log-backups",
                                    "2")
    assert code == 0
    assert (tmp_path / "md-green.log.1").read_text() == "x" * 2000
    assert (tmp_path / "md-green.log.2").read_text() == "older"
    assert log.read_text().startswith("swapctl launcher: slot md-green")
    assert log.stat().st_mode & 0o777 == 0o600, "created owner-only"
    code, *_ = launch(slot, log, "--log-max-bytes", "1000", "--log-backups", "2")
    assert code == 0 and not (tmp_path / "md-green.log.3").exists(), "2 backups, no more"


def test_a_log_that_cannot_be_opened_keeps_the_pipes(tmp_path: Path) -> None:
    slot = tmp_path / "md-blue"
    slotfile.write(slot, slotfile.SlotSpec("v2", (sys.executable, "-c", SPEAK), dict(ENV)))
    code, pid, out, err = launch(slot, tmp_path / "no-such-dir" / "md.log")
    assert code == 0 and out == f"out {pid}\n"
    assert "cannot open the relay's log" in err and err.rstrip().endswith("err")


def test_the_generated_command_passes_the_log_and_its_bounds(tmp_path: Path) -> None:
    layout = Layout(tmp_path, ("md",), log_maxbytes="50MB", log_backups=3)
    command = layout.launcher_command("md-blue")
    assert command[command.index("--log") + 1] == str(layout.program_log("md-blue"))
    assert command[command.index("--log-max-bytes") + 1] == str(50 * 1024 * 1024)
    assert command[command.index("--log-backups") + 1] == "3"
    assert (byte_size("1KB"), byte_size("2048"), byte_size("1GB")) == (1024, 2048, 1024 ** 3)
