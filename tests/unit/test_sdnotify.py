"""sd_notify against real AF_UNIX datagram sockets; listen_fds in a child process.

The receiving sockets stand in for the service manager: bound under a private temp dir, or
in the abstract namespace under a unique name. listen_fds runs in a child so that dup'ing
fds onto 3, 4, ... never disturbs the test process's own descriptors.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swapctl.daemon.sdnotify import Notifier, listen_fds, watchdog_interval

RECV_TIMEOUT_S = 5.0
ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
            "LISTEN_FDNAMES", "LISTEN_PIDFDID")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(RECV_TIMEOUT_S)
    return sock


@pytest.fixture
def manager(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound notify socket, named in NOTIFY_SOCKET."""
    path = sockdir / "notify.sock"
    with _receiver(str(path)) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


@pytest.fixture
def notifier(manager: socket.socket) -> Iterator[Notifier]:
    found = Notifier.from_env()
    assert found is not None
    yield found
    found.close()


def test_ready_sends_one_datagram_of_lines(manager: socket.socket, notifier: Notifier) -> None:
    assert notifier.ready("serving 3 services")
    assert manager.recv(4096) == b"READY=1\nSTATUS=serving 3 services"


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda n: n.ready(), b"READY=1"),
        (lambda n: n.status("swapping market_data v1 -> v2"),
         b"STATUS=swapping market_data v1 -> v2"),
        (lambda n: n.watchdog(), b"WATCHDOG=1"),
        (lambda n: n.stopping("draining"), b"STOPPING=1\nSTATUS=draining"),
        (lambda n: n.fdstore_remove("relay-v1"), b"FDSTOREREMOVE=1\nFDNAME=relay-v1"),
        (lambda n: n.notify("MAINPID=42", "EXTEND_TIMEOUT_USEC=5000000"),
         b"MAINPID=42\nEXTEND_TIMEOUT_USEC=5000000"),
    ],
)
def test_helpers_send_exact_bytes(manager: socket.socket, notifier: Notifier,
                                  call: Callable[[Notifier], bool], expected: bytes) -> None:
    assert call(notifier) is True
    assert manager.recv(4096) == expected


def test_reloading_carries_monotonic_usec(manager: socket.socket, notifier: Notifier) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    lines = manager.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert int(value) >= before


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"swapctl-test-{uuid.uuid4().hex}"
    with _receiver(b"\0" + name.encode()) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        found = Notifier.from_env()
        assert found is not None
        assert found.address == b"\0" + name.encode()
        assert found.status("abstract")
        assert sock.recv(4096) == b"STATUS=abstract"
        found.close()


def test_fdstore_passes_the_same_open_files(manager: socket.socket, notifier: Notifier,
                                            tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text("a")
    second.write_text("b")
    fds = [os.open(first, os.O_RDONLY), os.open(second, os.O_RDONLY)]
    try:
        assert notifier.fdstore("relay-v1", fds)
        msg, received, _, _ = socket.recv_fds(manager, 4096, 8)
        try:
            assert msg == b"FDSTORE=1\nFDNAME=relay-v1"
            assert len(received) == 2
            for sent, got in zip(fds, received, strict=True):
                assert got != sent
                assert (os.fstat(got).st_dev, os.fstat(got).st_ino) == \
                    (os.fstat(sent).st_dev, os.fstat(sent).st_ino)
        finally:
            for fd in received:
                os.close(fd)
    finally:
        for fd in fds:
            os.close(fd)


def test_from_env_can_unset_for_children(manager: socket.socket,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    found = Notifier.from_env(unset_env=True)
    assert found is not None
    assert "NOTIFY_SOCKET" not in os.environ
    assert found.watchdog()
    assert manager.recv(4096) == b"WATCHDOG=1"
    found.close()


def test_unset_env_is_a_no_op() -> None:
    assert Notifier.from_env() is None
    assert watchdog_interval() is None
    assert listen_fds() == {}


def test_unsupported_address_disables_notify(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert Notifier.from_env() is None


def test_dead_socket_returns_false_and_logs_once(sockdir: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(sockdir / "gone.sock"))
    found = Notifier.from_env()
    assert found is not None
    with caplog.at_level(logging.WARNING, logger="swapctl"):
        assert found.ready() is False
        assert found.watchdog() is False
    failures = [r for r in caplog.records if r.getMessage() == "sd_notify_failed"]
    assert len(failures) == 1
    found.close()


def test_recovers_after_the_manager_comes_back(sockdir: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    path = sockdir / "late.sock"
    found = Notifier(str(path))
    with caplog.at_level(logging.WARNING, logger="swapctl"):
        assert found.watchdog() is False
        with _receiver(str(path)) as sock:
            assert found.watchdog() is True
            assert sock.recv(4096) == b"WATCHDOG=1"
        path.unlink()
        assert found.watchdog() is False
    assert [r.getMessage() for r in caplog.records].count("sd_notify_failed") == 2
    found.close()


@pytest.mark.parametrize("bad", ["READY", "=1", "STATUS=two\nlines"])
def test_malformed_assignment_is_our_bug(bad: str) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        Notifier("/nonexistent").notify(bad)


@pytest.mark.parametrize("bad", ["", "a:b", "x" * 256, "tab\there"])
def test_bad_fdstore_name(bad: str) -> None:
    with pytest.raises(ValueError, match="fd store name"):
        Notifier("/nonexistent").fdstore_remove(bad)


def test_fdstore_needs_fds() -> None:
    with pytest.raises(ValueError, match="at least one file descriptor"):
        Notifier("/nonexistent").fdstore("relay-v1", [])


@pytest.mark.parametrize(
    ("pid", "expected"),
    [(None, 3.0), ("self", 3.0), ("other", None), ("junk", None)],
)
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, pid: str | None,
                           expected: float | None) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    if pid is not None:
        value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid)
        monkeypatch.setenv("WATCHDOG_PID", value)
    assert watchdog_interval() == expected


@pytest.mark.parametrize("usec", ["0", "-5", "soon"])
def test_watchdog_interval_rejects_bad_usec(monkeypatch: pytest.MonkeyPatch, usec: str) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert watchdog_interval() is None


def test_watchdog_interval_unset_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "500000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval(unset_env=True) == 0.5
    assert "WATCHDOG_USEC" not in os.environ
    assert "WATCHDOG_PID" not in os.environ
    assert watchdog_interval() is None


def test_listen_fds_for_another_pid_is_ignored_and_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "2")
    monkeypatch.setenv("LISTEN_FDNAMES", "a:b")
    assert listen_fds() == {}
    assert not any(name in os.environ for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))


CHILD = """
import fcntl, json, os, sys
from swapctl.daemon.sdnotify import listen_fds
paths, names, unset = sys.argv[1:-2], sys.argv[-2], sys.argv[-1] == "unset"
high = []
for path in paths:  # park each file well above 3 first, so the dup2 below really moves it
    fd = os.open(path, os.O_RDONLY)
    high.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100))
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)  # as the service manager leaves them: no CLOEXEC
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(len(paths))
if names != "-":
    os.environ["LISTEN_FDNAMES"] = names
before = {3 + i: os.get_inheritable(3 + i) for i in range(len(paths))}
found = listen_fds(unset_env=unset)
print(json.dumps({
    "before": before,
    "found": found,
    "inheritable": {fd: os.get_inheritable(fd) for fds in found.values() for fd in fds},
    "inode": {fd: os.fstat(fd).st_ino for fds in found.values() for fd in fds},
    "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}))
"""


def _run_child(paths: list[Path], names: str, unset: bool) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, paths), names, "unset" if unset else "keep"],
        capture_output=True, text=True, timeout=30, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.fixture
def three_files(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / name for name in ("one", "two", "three")]
    for path in paths:
        path.write_text(path.name)
    return paths


def test_listen_fds_names_and_cloexec(three_files: list[Path]) -> None:
    result = _run_child(three_files, "relay-v1:relay-v1", unset=True)
    assert result["found"] == {"relay-v1": [3, 4], "unknown": [5]}
    assert result["before"] == {"3": True, "4": True, "5": True}
    assert result["inheritable"] == {"3": False, "4": False, "5": False}
    inodes = {str(3 + i): path.stat().st_ino for i, path in enumerate(three_files)}
    assert result["inode"] == inodes
    assert result["env"] == []


def test_listen_fds_without_names_keeps_env(three_files: list[Path]) -> None:
    result = _run_child(three_files[:1], "-", unset=False)
    assert result["found"] == {"unknown": [3]}
    assert result["env"] == ["LISTEN_FDS", "LISTEN_PID"]
