"""The sock_diag request and reply adopting relies on (swapctl/sockdiag.py, shared with the
legacy strategies' client count) and legacy/adopt.py's device encoding."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest

from swapctl import sockdiag
from swapctl.legacy import adopt


def _reply(entries: list[tuple[int, int, int]], done: bool = True) -> bytes:
    """A netlink datagram as the kernel sends it: one unix_diag_msg per socket with a
    UNIX_DIAG_VFS attribute (file inode, then device), then NLMSG_DONE."""
    out = b""
    for sock_ino, file_ino, dev in entries:
        attr = struct.pack("=HH", 12, sockdiag.UNIX_DIAG_VFS) + struct.pack("=II", file_ino, dev)
        other = struct.pack("=HH", 8, 5) + b"\0\0\0\0"  # an attribute it must skip
        body = struct.pack("=BBBBIII", socket.AF_UNIX, 1, 10, 0, sock_ino, 0, 0) + other + attr
        out += struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body
    if done:
        out += struct.pack("=IHHII", 20, sockdiag.NLMSG_DONE, 2, 1, 0) + b"\0\0\0\0"
    return out


def test_reply_gives_each_listener_its_bound_file() -> None:
    found: dict[int, tuple[int, int]] = {}
    assert sockdiag.parse_listener_files(_reply([(100, 7, 3 << 20), (101, 8, 5)]), found)
    assert found == {100: (3 << 20, 7), 101: (5, 8)}
    found = {}
    assert not sockdiag.parse_listener_files(_reply([(100, 7, 1)], done=False), found)
    assert found == {100: (1, 7)}


def test_an_error_reply_raises_with_the_errno() -> None:
    data = struct.pack("=IHHII", 36, sockdiag.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -2) \
        + b"\0" * 16
    with pytest.raises(OSError, match="No such file"):
        sockdiag.parse_listener_files(data, {})


def test_request_asks_for_listening_unix_sockets_with_their_file() -> None:
    req = sockdiag.request(1 << sockdiag.TCP_LISTEN, sockdiag.UDIAG_SHOW_VFS)
    length, kind, flags = struct.unpack_from("=IHH", req)
    assert length == len(req) == 16 + 24 and kind == 20 and flags == 0x301
    family, _, _, states, _, show = struct.unpack_from("=BBHIII", req, 16)
    assert family == socket.AF_UNIX and states == 1 << 10 and show == sockdiag.UDIAG_SHOW_VFS


def test_kernel_device_encoding() -> None:
    assert adopt.kernel_dev(os.makedev(254, 0)) == 254 << 20
    assert adopt.kernel_dev(os.makedev(8, 300)) == (8 << 20) | 300


def test_the_listener_bound_to_a_file_is_found_and_a_stale_one_is_not(tmp_path: Path) -> None:
    """Two listeners named the same: the one whose file was replaced does not serve it."""
    path = tmp_path / "md.sock"
    with socket.socket(socket.AF_UNIX) as first, socket.socket(socket.AF_UNIX) as second:
        first.bind(str(path))
        first.listen()
        path.unlink()  # stolen: a second relay deletes the path and binds it
        second.bind(str(path))
        second.listen()
        found = adopt.listener_at(path)
        assert found == (os.fstat(second.fileno()).st_ino, str(path))
        assert adopt.holders(found[0]) == [os.getpid()]
    assert adopt.listener_at(tmp_path / "nothing.sock") is None
