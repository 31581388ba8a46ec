"""The slot launcher: a valid slot file is exec'd in place; anything else is a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from swapctl.supervise import slotfile
from swapctl.supervise.launcher import (
    EXIT_BAD_FILE,
    EXIT_CANNOT_RUN,
    EXIT_NO_FILE,
    EXIT_NOT_FOUND,
    EXIT_OS,
    EXIT_USAGE,
)

ENV = {"SWAPCTL_HANDOFF": "/run/c.sock", "SWAPCTL_TOKEN": "v2-7",
       "SWAPCTL_SOCKET": "/tmp/md.sock", "SWAPCTL_RELEASE": "v2"}
SHOW = ("import json, os; print(json.dumps({'pid': os.getpid(), 'cwd': os.getcwd(), "
        "'env': {k: v for k, v in os.environ.items() if k.startswith('SWAPCTL_')}}))")


def launch(*args: str) -> tuple[int, int, str, str]:
    proc = subprocess.Popen([sys.executable, "-m", "swapctl.supervise.launcher", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=20)
    return proc.returncode, proc.pid, out, err


def write_raw(slot: Path, data: Any) -> None:
    slot.mkdir(exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (slot / slotfile.FILENAME).write_text(text)


def good(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"format": 1, "release": "v2",
                            "argv": [sys.executable, "-c", SHOW], "env": dict(ENV)}
    data.update(changes)
    return data


def test_execs_the_release_in_place_with_its_environment(tmp_path: Path) -> None:
    slotfile.write(tmp_path / "md-blue", slotfile.SlotSpec(
        "v2", (sys.executable, "-c", SHOW), dict(ENV), str(tmp_path)))
    assert (tmp_path / "md-blue" / "release.json").stat().st_mode & 0o777 == 0o600
    code, pid, out, err = launch("--slot", str(tmp_path / "md-blue"))
    assert code == 0, err
    seen = json.loads(out)
    assert seen["pid"] == pid  # exec, not a child: supervisord's pid is the relay's
    assert seen["env"] == ENV and seen["cwd"] == str(tmp_path)
    assert err.startswith("swapctl launcher: slot md-blue: release v2 (token v2-7, pid ")


def test_missing_slot_file(tmp_path: Path) -> None:
    code, _, out, err = launch("--slot", str(tmp_path))
    assert code == EXIT_NO_FILE and out == ""
    assert f"{tmp_path}/release.json: no slot file" in err
    assert "start the slot through swapctl" in err


@pytest.mark.parametrize(("data", "message"), [
    ("{not json", "line 1: not JSON"),
    ([1, 2], "expected a JSON object, got list"),
    (good(format=2), "format: expected 1, got 2"),
    (good(release=""), "release: expected a non-empty string"),
    (good(argv=[]), "argv: expected a non-empty list"),
    (good(argv="relay --flag"), "argv: expected a non-empty list"),
    (good(env={"SWAPCTL_TOKEN": 7}), "env: expected an object of strings"),
    (good(env={"SWAPCTL_TOKEN": "t"}),
     "env: missing SWAPCTL_HANDOFF, SWAPCTL_SOCKET, SWAPCTL_RELEASE"),
    (good(cwd=3), "cwd: expected a path string"),
])
def test_invalid_slot_file(tmp_path: Path, data: Any, message: str) -> None:
    write_raw(tmp_path / "s", data)
    code, _, out, err = launch("--slot", str(tmp_path / "s"))
    assert code == EXIT_BAD_FILE and out == ""
    assert err.startswith(f"swapctl launcher: error: {tmp_path}/s/release.json: ")
    assert message in err, err


def test_release_that_cannot_run(tmp_path: Path) -> None:
    write_raw(tmp_path / "a", good(argv=[str(tmp_path / "nope")]))
    code, _, _, err = launch("--slot", str(tmp_path / "a"))
    assert code == EXIT_NOT_FOUND and f"release v2: '{tmp_path}/nope' not found" in err
    (tmp_path / "plain").write_text("")  # exists, not executable
    write_raw(tmp_path / "b", good(argv=[str(tmp_path / "plain")]))
    code, _, _, err = launch("--slot", str(tmp_path / "b"))
    assert code == EXIT_CANNOT_RUN and "cannot execute" in err and "Permission denied" in err
    write_raw(tmp_path / "c", good(cwd=str(tmp_path / "gone")))
    code, _, _, err = launch("--slot", str(tmp_path / "c"))
    assert code == EXIT_OS and f"cwd: cannot enter {tmp_path}/gone" in err


def test_bad_command_line() -> None:
    code, _, _, err = launch()
    assert code == EXIT_USAGE
    assert "usage: python -m swapctl.supervise.launcher [-h] --slot DIR" in err
    assert "error: the following arguments are required: --slot" in err
