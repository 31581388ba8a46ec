"""The swap journal on disk, the private directories it lives in and the request inbox.

Real files, directories and Unix sockets under the test's own tmp dir; os.write and
os.fsync are wrapped (never replaced) to force short writes and to count fsyncs.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swapctl.daemon.paths import Paths
from swapctl.errors import UsageError
from swapctl.fsutil import ensure_private_dir
from swapctl.swap.journal import Journal, JournalError, read, scan, stream
from swapctl.swap.requests import RequestInbox, send_request

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


class _Keep(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.seen: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record)


@pytest.fixture
def warnings() -> Iterator[list[logging.LogRecord]]:
    """Records logged on swapctl.journal (a handler of our own: works whether or not
    swapctl.logs.setup stopped propagation to the root logger)."""
    handler = _Keep(logging.WARNING)
    logger = logging.getLogger("swapctl.journal")
    logger.addHandler(handler)
    try:
        yield handler.seen
    finally:
        logger.removeHandler(handler)


def _records(n: int, swap: str = "s1") -> list[dict[str, Any]]:
    return [{"swap": swap, "at": float(i), "event": f"e{i}", "to": "starting"}
            for i in range(n)]


def _journal_with(path: Path, records: list[dict[str, Any]]) -> None:
    journal = Journal(path)
    for record in records:
        journal.write(record)
    journal.close()


# ----- torn tail ----------------------------------------------------------------------


def test_torn_tail_is_cut_reported_and_the_next_record_starts_a_line(
        state: Path, warnings: list[logging.LogRecord]) -> None:
    path = state / "journal.jsonl"
    earlier = _records(3)
    _journal_with(path, earlier)
    whole = path.stat().st_size
    torn = b'{"swap": "s1", "at": 9.0, "from": "relea'
    with path.open("ab") as f:
        f.write(torn)

    journal = Journal(path)
    assert journal.repaired is not None
    assert journal.repaired["bytes"] == len(torn) and journal.repaired["offset"] == whole
    assert journal.repaired["head"] == torn.decode()
    assert journal.repaired["action"].startswith("cut")
    assert path.stat().st_size == whole, "the torn bytes are gone before anything is appended"
    assert [r.msg for r in warnings] == ["journal.repaired"]

    later = _records(2, swap="s2")
    for record in later:
        journal.write(record)
    journal.close()
    found = scan(path)
    assert found.records == earlier + later and found.bad_lines == []
    assert Journal(path).repaired is None, "a clean journal is not touched"


def test_a_whole_record_missing_only_its_newline_is_kept(state: Path) -> None:
    path = state / "journal.jsonl"
    earlier = _records(2)
    _journal_with(path, earlier)
    last = {"swap": "s1", "at": 5.0, "event": "commit", "to": "committed"}
    with path.open("ab") as f:
        f.write(json.dumps(last).encode())  # the newline never made it

    journal = Journal(path)
    assert journal.repaired is not None and journal.repaired["action"].startswith("completed")
    journal.write(_records(1, swap="s2")[0])
    journal.close()
    assert read(path) == [*earlier, last, _records(1, swap="s2")[0]]


def test_torn_tail_of_only_garbage_and_no_newline_at_all(state: Path) -> None:
    path = state / "journal.jsonl"
    path.write_bytes(b"\x00\x00\x00\x00")  # a file extended by a crash, never written
    journal = Journal(path)
    assert journal.repaired is not None and journal.repaired["bytes"] == 4
    journal.write({"swap": "s1"})
    journal.close()
    assert path.read_bytes() == b'{"swap": "s1"}\n'


# ----- read ---------------------------------------------------------------------------


def test_read_skips_and_counts_bad_lines_and_never_stops_at_them(state: Path) -> None:
    path = state / "journal.jsonl"
    good = _records(4)
    lines = [json.dumps(good[0]), "not json", json.dumps(good[1]), "[1, 2]",
             json.dumps(good[2]), "\x00\x00\xff", json.dumps(good[3]), ""]
    path.write_bytes("\n".join(lines).encode("latin-1"))
    found = scan(path)
    assert found.records == good
    assert found.bad_lines == [2, 4, 6] and found.salvaged == 0
    assert read(path) == good


def test_read_recovers_a_record_glued_behind_a_torn_one(state: Path) -> None:
    """What journals written before the repair look like: the record after a crash was
    appended onto the torn line. The whole record behind it is recovered."""
    path = state / "journal.jsonl"
    first, glued, after = _records(3)
    torn = '{"swap": "s1", "at": 1.5, "details": {"x": 1'
    path.write_text(f"{json.dumps(first)}\n{torn}{json.dumps(glued)}\n{json.dumps(after)}\n")
    found = scan(path)
    assert found.records == [first, glued, after]
    assert found.bad_lines == [2] and found.salvaged == 1


# ----- writes -------------------------------------------------------------------------


def _wrap(monkeypatch: pytest.MonkeyPatch, name: str,
          wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    monkeypatch.setattr(os, name, wrapper(getattr(os, name)))


def test_short_writes_are_continued_until_the_record_is_whole(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = state / "journal.jsonl"
    journal = Journal(path)
    calls: list[int] = []

    def short(real: Callable[[int, Any], int]) -> Callable[[int, Any], int]:
        def write(fd: int, data: Any) -> int:
            if fd != journal._fd:
                return real(fd, data)
            calls.append(len(data))
            return real(fd, bytes(data[:7]))  # never more than 7 bytes per call
        return write

    _wrap(monkeypatch, "write", short)
    records = _records(3)
    for record in records:
        journal.write(record)
    journal.close()
    monkeypatch.undo()
    assert read(path) == records
    assert len(calls) > len(records), "the writes really were short"


def test_a_failed_write_leaves_no_torn_line(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = state / "journal.jsonl"
    journal = Journal(path)
    journal.write(_records(1)[0])
    calls = [0]

    def failing(real: Callable[[int, Any], int]) -> Callable[[int, Any], int]:
        def write(fd: int, data: Any) -> int:
            if fd != journal._fd:
                return real(fd, data)
            calls[0] += 1
            if calls[0] == 1:
                return real(fd, bytes(data[:10]))  # part of the record, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write

    _wrap(monkeypatch, "write", failing)
    with pytest.raises(JournalError, match="No space left"):
        journal.write({"swap": "s1", "event": "lost"})
    monkeypatch.undo()
    journal.write({"swap": "s1", "event": "next"})
    journal.close()
    assert scan(path).bad_lines == []
    assert [r["event"] for r in read(path)] == ["e0", "next"]


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kind ("file" or "dir") of every fsync from now on."""
    seen: list[str] = []

    def counting(real: Callable[[int], None]) -> Callable[[int], None]:
        def fsync(fd: int) -> None:
            seen.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
            real(fd)
        return fsync

    _wrap(monkeypatch, "fsync", counting)
    return seen


def test_unsynced_writes_reach_the_file_and_are_fsynced_by_sync(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = state / "journal.jsonl"
    told: list[dict[str, Any]] = []
    journal = Journal(path, [told.append])
    fsyncs = _fsyncs(monkeypatch)
    first, second, third = _records(3)
    journal.write(first, sync=False)
    journal.write(second, sync=False)
    assert fsyncs == [], "nothing fsync'd by an unsynced write"
    assert read(path) == [first, second], "in the kernel already: a killed process keeps it"
    assert told == [first, second]
    journal.sync()
    assert fsyncs == ["file"]
    journal.sync()
    assert fsyncs == ["file"], "nothing left to sync"
    journal.write(third)
    assert fsyncs == ["file", "file"], "the default write is fsync'd"
    journal.close()


def test_the_directory_is_fsynced_when_the_journal_is_created(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fsyncs = _fsyncs(monkeypatch)
    Journal(state / "journal.jsonl").close()
    assert fsyncs == ["dir"]
    fsyncs.clear()
    Journal(state / "journal.jsonl").close()
    assert fsyncs == [], "an existing journal: nothing to fsync"


def test_a_symlinked_journal_is_refused_and_its_target_untouched(
        state: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    (state / "journal.jsonl").symlink_to(target)
    with pytest.raises(UsageError, match="symbolic link"):
        Journal(state / "journal.jsonl")
    (state / "journal.jsonl").unlink()
    (state / "journal.jsonl").symlink_to(tmp_path / "missing")  # dangling: not created
    with pytest.raises(UsageError, match="symbolic link"):
        Journal(state / "journal.jsonl")
    assert target.read_text() == "precious\n" and not (tmp_path / "missing").exists()


def test_a_fifo_in_place_of_the_journal_is_refused_without_hanging(state: Path) -> None:
    os.mkfifo(state / "journal.jsonl")
    with pytest.raises(UsageError, match="not a regular file"):
        Journal(state / "journal.jsonl")


def test_a_journal_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UsageError, match="chmod go-w"):
        Journal(shared / "journal.jsonl")
    assert not (shared / "journal.jsonl").exists()


# ----- private directories ------------------------------------------------------------


def test_private_dir_is_created_with_its_mode_parents_included(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state"
    assert ensure_private_dir(path) == path
    for made in (path, path.parent, path.parent.parent):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700
    ensure_private_dir(path)  # an existing good one is accepted as it is
    readable = tmp_path / "readable"
    readable.mkdir(mode=0o755)
    ensure_private_dir(readable)
    assert stat.S_IMODE(readable.stat().st_mode) == 0o755, "an existing mode is not changed"


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777])
def test_private_dir_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "state"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(UsageError) as err:
        ensure_private_dir(path)
    assert str(path) in str(err.value) and f"{stat.S_IMODE(mode):04o}" in str(err.value)
    assert "chmod go-w" in str(err.value)


def test_private_dir_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "state").symlink_to(real)
    with pytest.raises(UsageError, match="symbolic link"):
        ensure_private_dir(tmp_path / "state")


def test_private_dir_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(UsageError, match=r"not a directory \(a regular file\)"):
        ensure_private_dir(tmp_path / "state")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory away")
def test_private_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(UsageError, match="uid 65534") as err:
        ensure_private_dir(path)
    assert "chown" in str(err.value)


def test_daemon_paths_are_private_and_a_shared_run_dir_is_refused(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "state", tmp_path / "logs", tmp_path / "run" / "control.sock")
    paths.make()
    for made in (paths.state, paths.reports, paths.state / "services", paths.control.parent):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700
    paths.control.parent.chmod(0o777)
    with pytest.raises(UsageError, match=str(paths.control.parent)):
        paths.make()


# ----- request inbox ------------------------------------------------------------------


def test_inbox_refuses_a_regular_file_and_a_symlink_and_leaves_them(state: Path) -> None:
    path = state / "requests.sock"
    path.write_text("not mine")
    with pytest.raises(UsageError, match="not a socket"):
        RequestInbox(path)
    assert path.read_text() == "not mine"
    path.unlink()
    path.symlink_to(state / "elsewhere")
    with pytest.raises(UsageError, match="symbolic link"):
        RequestInbox(path)
    assert path.is_symlink()


def test_inbox_replaces_only_a_stale_socket_of_ours(state: Path) -> None:
    path = state / "requests.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(path))  # a swap killed before it removed its inbox
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    inbox = RequestInbox(path)
    try:
        send_request(path, "rollback")
        assert inbox.poll() == "rollback"
    finally:
        inbox.close()
    assert not path.exists()


def test_inbox_refuses_the_live_inbox_of_a_running_swap(state: Path) -> None:
    path = state / "requests.sock"
    running = RequestInbox(path)
    try:
        with pytest.raises(UsageError, match="another swap is running"):
            RequestInbox(path)
        send_request(path, "commit")
        assert running.poll() == "commit", "the running swap's inbox still works"
    finally:
        running.close()


def test_inbox_close_leaves_a_successors_socket(state: Path) -> None:
    path = state / "requests.sock"
    first = RequestInbox(path)
    path.unlink()  # someone removed it; a new swap bound its own
    second = RequestInbox(path)
    try:
        first.close()
        assert path.exists(), "closing the first inbox must not remove the second's socket"
        send_request(path, "rollback")
        assert second.poll() == "rollback"
    finally:
        second.close()


def test_stream_gives_what_read_gives_one_record_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    glued = b'{"swap": "s1", "to": "verif' + b'{"swap": "s1", "to": "committed"}'
    path.write_bytes(b'{"swap": "s1", "event": "begin"}\n\nnot json\n[1, 2]\n'
                     + glued + b'\n{"event": "note"}')  # (a last line with no newline)
    streamed = stream(path)
    assert next(streamed) == {"swap": "s1", "event": "begin"}  # before the rest is read
    rest = list(streamed)
    assert [{"swap": "s1", "event": "begin"}, *rest] == read(path)
    assert rest == [{"swap": "s1", "to": "committed"}, {"event": "note"}]
    found = scan(path)
    assert found.bad_lines == [3, 4, 5] and found.salvaged == 1
