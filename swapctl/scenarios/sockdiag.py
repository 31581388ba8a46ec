"""How many connections wait in a Unix listener's accept queue (netlink sock_diag).

A client's connect() returns as soon as the kernel queues it, before the relay has
accepted it, so traffic sent right after a connect can race the relay's accept. The
kernel reports each listening Unix socket's queue (what `ss -xl` shows as Recv-Q);
a listener is found by the inode of its socket file, which also works when the relay
bound it inside a private mount namespace under another name.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10
UDIAG_SHOW_VFS = 0x2
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_VFS = 1
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
    req = _REQ.pack(socket.AF_UNIX, 0, 0, 1 << TCP_LISTEN, 0,
                    UDIAG_SHOW_VFS | UDIAG_SHOW_RQLEN, b"\xff" * 8)
    msg = _NLMSG.pack(_NLMSG.size + len(req), SOCK_DIAG_BY_FAMILY,
                      NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req
    out: dict[int, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2.0)
        nl.send(msg)
        while True:
            data = nl.recv(1 << 16)
            if _parse(data, out):
                return out


def _parse(data: bytes, out: dict[int, int]) -> bool:
    """Add one netlink datagram's answers to `out`; True when the dump is done."""
    pos = 0
    while pos + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, pos)
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", data, pos + _NLMSG.size)
            raise OSError(-errno, f"sock_diag: {os.strerror(-errno)}")
        body = pos + _NLMSG.size
        ino = queued = None
        attr = body + _MSG.size
        while attr + _RTA.size <= pos + length:
            alen, atype = _RTA.unpack_from(data, attr)
            if alen < _RTA.size:
                break
            if atype == UNIX_DIAG_VFS:
                ino, _dev = _PAIR.unpack_from(data, attr + _RTA.size)
            elif atype == UNIX_DIAG_RQLEN:
                queued, _max = _PAIR.unpack_from(data, attr + _RTA.size)
            attr += (alen + 3) & ~3
        if ino is not None and queued is not None:
            out[ino] = queued
        pos += (length + 3) & ~3
    return False
