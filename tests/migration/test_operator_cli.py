"""The operator's view of a swap through swapctld (issue 15), on one real stack: the soak
is not silent (a countdown with the canary's counts, in place on a terminal, plain lines
otherwise), `rollback` with no swap running says what it does and how long it takes
before it starts, `logs -n N` gives whole lines, and -o json keeps stdout one JSON
document whatever stderr shows."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack, make_stack, teardown

pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("operator_cli")]
SOAK = re.compile(r"  soaking: (\d+)s of 2s left; canary ([\d,]+) sent, ([\d,]+) seen, "
                  r"([\d,]+) lost")


@pytest.fixture(scope="module")
def s() -> Iterator[Stack]:
    stack = make_stack(prefix="swo-", soak="2s")
    try:
        yield stack
    finally:
        left = teardown(stack)
        assert not left, f"processes left running: {left}"


def _with_tty_stderr(argv: list[str]) -> tuple[int, str, str]:
    """Run argv with stderr on a terminal (a pty) and stdout a pipe, as an operator who
    pipes -o json somewhere sees it."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        reader.join(10)
        os.close(master)
    return proc.returncode, out, b"".join(chunks).decode()


def test_soak_countdown_rollback_plan_and_pure_json(s: Stack) -> None:
    code, up = s.json("up")
    assert code == 0 and up["started"] and [x["service"] for x in up["status"]["services"]]

    done = s.cli("swap", "market_data", "--to", "v2", "--yes")  # stderr not a terminal
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    soaking = next(n for n, line in enumerate(lines) if "verifying -> soaking" in line)
    ticks = [SOAK.fullmatch(line) for line in lines[soaking + 1:]]
    assert ticks[0] is not None, lines  # a plain line as the soak begins, nothing in place
    assert int(ticks[0][2].replace(",", "")) > 0 and ticks[0][4] == "0"
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    assert "soaking -> committing" in lines[soaking + 2], "one line per 10 s, not per tick"

    # no swap running: a whole swap back, said before it starts; a countdown on a
    # terminal; stdout stays the one JSON report
    code, out, err = _with_tty_stderr(s.argv("rollback", "market_data", "--yes", "-o", "json"))
    assert code == 0, err
    report = json.loads(out)
    assert (report["kind"], report["from"], report["to"]) == ("rollback", "v2", "v1")
    first, accepted = err.splitlines()[:2]
    assert re.fullmatch(r"rollback market_data: no swap is running, so this is a whole swap "
                        r"back from v2 to v1 \(the release the last committed swap "
                        r"replaced\), strategy handoff; soak window 2s, so about 2s \(at "
                        r"most \d+s\); `swapctl commit market_data` ends the soak early",
                        first), first
    assert accepted.startswith(f"rollback {report['swap_id']}: v2 -> v1")
    counts = [SOAK.fullmatch(piece) for piece in err.split("\r\x1b[K")
              if piece.startswith("  soaking")]
    assert len(counts) >= 2 and all(counts), err  # rewritten in place, each second
    left = [int(m[1]) for m in counts if m]
    assert left == sorted(left, reverse=True) and left[0] in (1, 2)  # of 2s, counting down
    assert all(m[4] == "0" for m in counts if m)

    code, logs = s.json("logs", "market_data", "-n", "3")
    assert code == 0 and len(logs) == 2  # blue and green
    for entry in logs:
        whole = Path(entry["path"]).read_text().splitlines()
        assert entry["text"].splitlines() == whole[-3:], entry

    code, down = s.json("down")
    assert code == 0 and down["stopped"]
