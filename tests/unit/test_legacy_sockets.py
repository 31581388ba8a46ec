"""Finding a relay's sockets: parsing /proc text, and one real pidfd_getfd."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from swapctl.legacy import sockets, takeover
from swapctl.legacy.sockets import (
    SocketsError,
    classify,
    parse_fd_link,
    parse_syscall,
    parse_unix_table,
    waiting,
)
from tests.clients import trade

# taken from a real /proc/PID/net/unix: a listener (711501), a client it accepted
# (711504, shown with its listener's path), a socketpair (711502/711503), a stats
# listener elsewhere, a datagram socket at the same path and an abstract name
TABLE = textwrap.dedent("""\
    Num       RefCount Protocol Flags    Type St Inode Path
    00000000afb12034: 00000003 00000000 00000000 0001 03 711503
    0000000035c4c2f7: 00000003 00000000 00000000 0001 03 711502
    0000000062a0f6c2: 00000002 00000000 00010000 0001 01 711501 /tmp/torq/market_data.sock
    00000000938c2fe5: 00000003 00000000 00000000 0001 03 711504 /tmp/torq/market_data.sock
    00000000938c2fe6: 00000003 00000000 00000000 0001 03 711505 /tmp/torq/market_data.sock
    00000000938c2fe7: 00000002 00000000 00010000 0001 01 711600 /tmp/torq/stats sock
    00000000938c2fe8: 00000002 00000000 00000000 0002 01 711601 /tmp/torq/market_data.sock
    00000000938c2fe9: 00000002 00000000 00000000 0001 03 711602 @abstract
    """)


def test_table_parses_every_row_and_paths_with_spaces() -> None:
    table = parse_unix_table(TABLE)
    assert len(table) == 8
    listener = table[711501]
    assert listener.listening and listener.state == 1 and listener.type == 1
    assert listener.path == "/tmp/torq/market_data.sock"
    assert table[711600].path == "/tmp/torq/stats sock"
    assert table[711502].path == "" and not table[711502].listening
    assert table[711601].type == 2


def test_table_tolerates_header_only_and_short_lines() -> None:
    assert parse_unix_table(TABLE.splitlines()[0]) == {}
    assert parse_unix_table(TABLE.splitlines()[0] + "\ngarbage line\n") == {}


def test_fd_links() -> None:
    assert parse_fd_link("socket:[711501]") == 711501
    assert parse_fd_link("pipe:[711828]") is None
    assert parse_fd_link("/dev/null") is None
    assert parse_fd_link("anon_inode:[eventpoll]") is None


FDS = {3: 711501, 4: 711502, 5: 711503, 6: 711504, 9: 711505, 10: 711600, 11: 711601,
       12: 711602, 13: 999}  # 999: a socket of another family (not in the Unix table)


def test_classify_takes_the_listener_and_only_its_accepted_clients() -> None:
    found = classify(FDS, parse_unix_table(TABLE), "/tmp/torq/market_data.sock")
    assert found.listener == 3
    assert found.connections == (6, 9)  # not the socketpair, datagram, abstract or stats
    assert found.path == "/tmp/torq/market_data.sock"


def test_classify_without_a_path_needs_a_single_listener() -> None:
    table = parse_unix_table(TABLE)
    with pytest.raises(SocketsError, match="2 listening sockets"):
        classify(FDS, table, None)
    only = {k: v for k, v in FDS.items() if v != 711600}
    assert classify(only, table, None).listener == 3


def test_classify_finds_nothing_at_another_path() -> None:
    with pytest.raises(SocketsError, match="no listening"):
        classify(FDS, parse_unix_table(TABLE), "/tmp/alphapulse/market_data.sock")


def test_syscall_snapshots() -> None:
    assert parse_syscall("232 0x7 0x7ffcefbbd070 0x0 0x0 0x0 0x0 0x7ffc 0x7f83\n") == 232
    assert parse_syscall("-1 0x7ffcefbbcf90 0x7f830271c954\n") == -1
    assert parse_syscall("running\n") is None
    assert waiting(232, "x86_64") and waiting(202, "x86_64")
    assert not waiting(1, "x86_64")  # write(2): maybe half way through a frame
    assert not waiting(-1, "x86_64") and not waiting(None, "x86_64")
    assert not waiting(232, "riscv64")  # unknown numbering: never claim quiescence


def test_real_process_sockets_are_found_and_duplicated(sockdir: Path) -> None:
    """A child listens and accepts; we find both and our duplicate talks to the client."""
    path = sockdir / "r.sock"
    code = textwrap.dedent(f"""
        import socket, sys
        s = socket.socket(socket.AF_UNIX); s.bind({str(path)!r}); s.listen()
        a, b = socket.socketpair()
        print("up", flush=True)
        c, _ = s.accept()
        print("accepted", flush=True)
        sys.stdin.read()
        """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"up\n"
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(5)
        client.connect(str(path))
        assert child.stdout.readline() == b"accepted\n"
        found = sockets.find(child.pid, str(path))
        assert len(found.connections) == 1
        listener, conns = sockets.duplicate(child.pid, found)
        try:
            client.sendall(b"hello")
            inq, _ = sockets.queued(conns[0])
            assert inq == 5
            with socket.socket(fileno=conns[0]) as ours:
                assert ours.recv(5) == b"hello"
                ours.sendall(b"back")
            assert client.recv(4) == b"back"
            lsock = socket.socket(fileno=listener)
            assert lsock.getsockname() == str(path)
            lsock.close()
        finally:
            for fd in conns:
                with contextlib.suppress(OSError):
                    os.close(fd)
        client.close()
    finally:
        child.kill()
        child.wait(5)


def test_fd_diff_finds_closed_reused_and_new_descriptors() -> None:
    held = {5: True, 6: False, 7: False}  # 6 closed, 7 now another file
    seen = {3: "socket:[10]", 4: "anon_inode:[eventpoll]"}
    current: dict[int, str | None] = {3: "socket:[10]", 4: "anon_inode:[eventpoll]",
                                      5: None, 7: "socket:[99]", 8: "socket:[100]"}
    diff = sockets.diff_fds(held, seen, current)
    assert diff.gone == (6, 7)
    assert diff.new == (7, 8)  # the reused number and the new one; seen ones skipped
    current[3] = "socket:[11]"  # a seen number now names another socket
    assert sockets.diff_fds(held, seen, current).new == (3, 7, 8)


ACCEPTOR = """
import selectors, socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(64)
pair = socket.socketpair()
sel = selectors.DefaultSelector(); sel.register(s, selectors.EVENT_READ)
print("up", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is s:
            c, _ = s.accept(); sel.register(c, selectors.EVENT_READ)
            print("accepted", c.fileno(), flush=True)
        else:
            c = key.fileobj; data = c.recv(100)
            if not data or data == b"bye":
                fd = c.fileno(); sel.unregister(c); c.close()
                print("closed", fd, flush=True)
"""


def test_copies_taken_early_follow_accepts_and_closes_until_the_freeze(sockdir: Path) -> None:
    """Copies taken while the process runs; then it accepts two clients, closes one (its
    number is reused by the next accept); stopped, `refresh` holds exactly its clients."""
    path = sockdir / "r.sock"
    child = subprocess.Popen([sys.executable, "-c", ACCEPTOR, str(path)],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert child.stdout is not None
    out = child.stdout

    def connect() -> tuple[socket.socket, int]:
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(5)
        client.connect(str(path))
        word, fd = out.readline().split()
        assert word == "accepted"
        return client, int(fd)

    copies = None
    try:
        assert out.readline() == "up\n"
        early = [connect() for _ in range(3)]
        copies = sockets.Copies(child.pid, str(path))
        assert len(copies.conns) == 3
        late = [connect() for _ in range(2)]
        leaving, leaving_fd = early[1]
        leaving.sendall(b"bye")
        assert out.readline().split() == ["closed", str(leaving_fd)]
        reused = connect()
        assert reused[1] == leaving_fd  # the lowest free number: same fd, another socket
        os.kill(child.pid, signal.SIGSTOP)
        change = copies.refresh()
        assert (change.added, change.removed) == (3, 1)
        staying = [early[0], early[2], *late, reused]
        assert sorted(copies.conns) == sorted(fd for _, fd in staying)
        for client, _ in staying:
            client.sendall(b"x")  # each copy we hold sees its own client's byte
        assert all(sockets.queued(h.fd)[0] == 1 for h in copies.conns.values())
        assert leaving.recv(1) == b""  # our early copy of it was closed: EOF at last
        assert copies.refresh() == sockets.Refreshed(0, 0)  # nothing changed since
    finally:
        if copies is not None:
            copies.close()
        child.kill()
        child.wait(5)


def test_unread_bytes_that_start_mid_frame_are_seen_without_being_consumed() -> None:
    """The freeze's look at a client's unread bytes (takeover._queues): a queue that
    starts with a frame is fine; one that starts mid-frame means the relay holds the
    frame's head (retry the freeze); the bytes stay for whoever reads next."""
    frame = trade(1)
    for sent, torn in ((b"", False), (frame, False), (frame[:2], False),
                       (frame[40:], True), (frame[3:] + frame, True)):
        ours, relay_side = socket.socketpair()
        with ours, relay_side:
            if sent:
                ours.send(sent)
            held = sockets.Held(relay_side.fileno(), 0,
                                relay_side.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
            inq, _, backed_up, mid_frame = takeover._queues({7: held})[7]
            assert (inq, backed_up, mid_frame) == (len(sent), False, torn), sent[:8]
            relay_side.setblocking(False)
            got = relay_side.recv(len(sent) + 1) if sent else b""
            assert got == sent  # peeked, not read
