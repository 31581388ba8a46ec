"""Issue 15, item 2: run from a folder that holds a directory named `swapctl/` (an
operator in `~` with a clone in `~/swapctl`), swapctl's own Python children must still
import the installed package, not that folder.

A standalone handoff swap starts the children that matter here: the canary child
(`python -m swapctl.swap.canary_child`) and whatever relay commands it is given. The
folder's `swapctl/__init__.py` raises, so any child that imports it fails the swap.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

# The entry point operators run: a console script does not put the cwd on sys.path, so
# only a child that does (`python -m`, `python -c`) can be shadowed.
_ENTRY = Path(sys.executable).parent / "swapctl"
SWAPCTL = [str(_ENTRY)] if _ENTRY.exists() else [sys.executable, "-P", "-m", "swapctl"]
RELAY = f"{shlex.quote(sys.executable)} -P -m swapctl.relay --log-level warning"
TRAP = "raise ImportError('shadowed: imported the cwd swapctl/ folder, not the package')\n"


def test_swap_from_a_folder_holding_a_swapctl_directory(sockdir: Path) -> None:
    home = sockdir / "home"
    (home / "swapctl").mkdir(parents=True)
    (home / "swapctl" / "__init__.py").write_text(TRAP)
    public, state = sockdir / "md.sock", sockdir / "state"
    done = subprocess.run(
        [*SWAPCTL, "swap", "--socket", str(public), "--state-dir", str(state),
         "--from", RELAY, "--to", RELAY, "--soak", "1s", "--pause-budget-ms", "10000",
         "-o", "json"],
        cwd=home, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
        start_new_session=True, check=False)
    assert "shadowed" not in done.stderr + done.stdout, done.stderr[-3000:]
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-3000:]}"
    report = json.loads(done.stdout)
    assert report, done.stdout
