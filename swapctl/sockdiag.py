"""What the kernel says of Unix sockets (netlink sock_diag): accept queues, dead peers.

`accept_queues()`: a client's connect() returns as soon as the kernel queues it, before
the relay has accepted it, so traffic sent right after a connect can race the relay's
accept. The
kernel reports each listening Unix socket's queue (what `ss -xl` shows as Recv-Q);
a listener is found by the inode of its socket file, which also works when the relay
bound it inside a private mount namespace under another name.

`peer_gone(inodes)`: the connected sockets among `inodes` whose peer has closed. A relay
keeps such a socket open until it reads the EOF, and /proc/net/unix still shows it
connected; sock_diag reports its peer's inode as 0 once the peer is released. Counting
a relay's clients without these keeps a probe that just closed, or a client that just
left, out of the count. `peer_of(inode)`: one socket's peer, by an exact query (a
relay's own socketpair has its peer among the relay's sockets).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_ESTABLISHED = 1
TCP_LISTEN = 10
UDIAG_SHOW_VFS = 0x2
UDIAG_SHOW_PEER = 0x4
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_VFS = 1
UNIX_DIAG_PEER = 2
UNIX_DIAG_RQLEN = 4

_NLMSG = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBHIII8s")
_MSG = struct.Struct("=BBBBI8s")
_RTA = struct.Struct("=HH")
_PAIR = struct.Struct("=II")


def socket_inode(path: Path) -> int:
    return os.stat(path).st_ino


def accept_queues() -> dict[int, int]:
    """Socket-file inode -> connections waiting to be accepted, for every Unix listener."""
    out: dict[int, int] = {}
    _dump(1 << TCP_LISTEN, UDIAG_SHOW_VFS | UDIAG_SHOW_RQLEN, lambda data: _parse(data, out))
    return out


def peer_gone(inodes: set[int] | frozenset[int]) -> set[int]:
    """The sockets among `inodes` (connected Unix sockets) whose peer has closed."""
    peers: dict[int, int] = {}
    _dump(1 << TCP_ESTABLISHED, UDIAG_SHOW_PEER, lambda data: _parse_peers(data, peers))
    return {ino for ino in inodes if peers.get(ino, -1) == 0}


def peer_of(inode: int) -> int | None:
    """The peer's socket inode of the one Unix socket `inode` (an exact query, not a
    dump: cheap enough while a relay is stopped); 0 if its peer has closed, None if the
    kernel knows no such socket or it has no peer (a listener)."""
    found: dict[int, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2.0)
        nl.send(request(0xFFFFFFFF, UDIAG_SHOW_PEER, inode=inode, dump=False))
        try:
            _parse_peers(nl.recv(1 << 16), found)
        except FileNotFoundError:  # ENOENT: no socket by that inode
            return None
    return found.get(inode)


def listener_files() -> dict[int, tuple[int, int]]:
    """Every listening Unix socket of this network namespace -> the file it is bound to,
    (kernel device, file inode): which socket a path reaches, even beside a stale one of
    the same name."""
    out: dict[int, tuple[int, int]] = {}
    _dump(1 << TCP_LISTEN, UDIAG_SHOW_VFS, lambda data: parse_listener_files(data, out))
    return out


def parse_listener_files(data: bytes, out: dict[int, tuple[int, int]]) -> bool:
    """Add one datagram's listeners to `out` (socket inode -> (device, file inode));
    True when the dump is done."""
    for ino, attrs in _messages(data):
        if UNIX_DIAG_VFS in attrs:
            vfs_ino, dev = _PAIR.unpack_from(data, attrs[UNIX_DIAG_VFS])  # unix_diag_vfs
            out[ino] = (dev, vfs_ino)
    return _done(data)


def request(states: int, show: int, *, inode: int = 0, dump: bool = True) -> bytes:
    """A dump request for every Unix socket in `states` with the `show` attributes, or
    (`dump` False) a request for the one socket `inode`."""
    req = _REQ.pack(socket.AF_UNIX, 0, 0, states, inode, show, b"\xff" * 8)
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    return _NLMSG.pack(_NLMSG.size + len(req), SOCK_DIAG_BY_FAMILY, flags, 1, 0) + req


def _dump(states: int, show: int, parse: Callable[[bytes], bool]) -> None:
    """Ask for every Unix socket in `states` with the `show` attributes; `parse` each
    datagram until it says the dump is done."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2.0)
        nl.send(request(states, show))
        while not parse(nl.recv(1 << 16)):
            pass


def _messages(data: bytes) -> Iterator[tuple[int, dict[int, int]]]:
    """Each answer in one datagram: (socket inode, {attribute type: offset of its value});
    whether the dump ended with it is `_done`'s to say."""
    pos = 0
    while pos + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, pos)
        if kind == NLMSG_DONE:
            return
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", data, pos + _NLMSG.size)
            raise OSError(-errno, f"sock_diag: {os.strerror(-errno)}")
        body = pos + _NLMSG.size
        ino = _MSG.unpack_from(data, body)[4]
        attrs: dict[int, int] = {}
        attr = body + _MSG.size
        while attr + _RTA.size <= pos + length:
            alen, atype = _RTA.unpack_from(data, attr)
            if alen < _RTA.size:
                break
            attrs[atype] = attr + _RTA.size
            attr += (alen + 3) & ~3
        yield ino, attrs
        pos += max((length + 3) & ~3, _NLMSG.size)


def _done(data: bytes) -> bool:
    pos = 0
    while pos + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, pos)
        if kind == NLMSG_DONE:
            return True
        pos += max((length + 3) & ~3, _NLMSG.size)
    return False


def _parse_peers(data: bytes, out: dict[int, int]) -> bool:
    for ino, attrs in _messages(data):
        if UNIX_DIAG_PEER in attrs:
            out[ino] = struct.unpack_from("=I", data, attrs[UNIX_DIAG_PEER])[0]
    return _done(data)


def _parse(data: bytes, out: dict[int, int]) -> bool:
    """Add one datagram's listeners to `out` (socket-file inode -> queued); True when
    the dump is done."""
    for _ino, attrs in _messages(data):
        if UNIX_DIAG_VFS in attrs and UNIX_DIAG_RQLEN in attrs:
            vfs_ino, _dev = _PAIR.unpack_from(data, attrs[UNIX_DIAG_VFS])
            out[vfs_ino] = _PAIR.unpack_from(data, attrs[UNIX_DIAG_RQLEN])[0]
    return _done(data)
