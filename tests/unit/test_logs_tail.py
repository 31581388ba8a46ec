"""`swapctl logs -n N` (swapctl.logs.tail): exactly the last N whole lines of a log, never a
first line cut mid-JSON, however long the lines are (issue 15)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from swapctl import logs


def _log(path: Path, count: int, width: int, final_newline: bool = True) -> list[str]:
    lines = [json.dumps({"n": n, "event": "relay.tick", "pad": "x" * width}) for n in
             range(count)]
    path.write_text("\n".join(lines) + ("\n" if final_newline else ""))
    return lines


def test_exactly_the_last_n_whole_lines_of_long_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "relay.log"
    lines = _log(path, 500, 900)  # ~930-byte lines: the old 200 bytes/line guess cut them
    for n in (1, 10, 77, 499):
        got = logs.tail(path, n).split("\n")
        assert got == lines[-n:], n
        assert all(json.loads(line)["event"] == "relay.tick" for line in got)


def test_lines_longer_than_a_read_block_and_no_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "relay.log"
    lines = _log(path, 40, logs.TAIL_BLOCK + 10, final_newline=False)
    assert logs.tail(path, 10).split("\n") == lines[-10:]


def test_fewer_lines_than_asked_missing_file_and_byte_limit(tmp_path: Path) -> None:
    path = tmp_path / "relay.log"
    lines = _log(path, 3, 10)
    assert logs.tail(path, 10).split("\n") == lines
    assert logs.tail(tmp_path / "none.log", 10) == ""
    (tmp_path / "empty.log").write_bytes(b"")
    assert logs.tail(tmp_path / "empty.log", 10) == ""
    # past the byte limit: whole lines only (the one that began before it is dropped)
    lines = _log(path, 100, 100)
    got = logs.tail(path, 50, limit=1000).split("\n")
    assert got == lines[-len(got):] and 1 <= len(got) < 50


def test_a_logged_exception_keeps_its_traceback_in_the_json_line() -> None:
    """`log.exception` in swapctld (a swap that crashed) must say where: the JSON line
    carries the error and its traceback, not only the message."""
    root = logging.getLogger("swapctl")
    saved = root.handlers[:], root.level, root.propagate
    stream = io.StringIO()
    logs.setup("info", stream)
    try:
        raise KeyError("restart")
    except KeyError:
        logging.getLogger("swapctl.test").exception("swap %s crashed", "s-1")
    finally:
        root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]
    entry = json.loads(stream.getvalue().splitlines()[-1])
    assert entry["event"] == "swap s-1 crashed"
    assert entry["error"] == "KeyError('restart')"
    assert "raise KeyError" in entry["traceback"]
