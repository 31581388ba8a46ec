"""A crowd of idle clients: N connections that read and discard what a relay sends.

Run as `python -m swapctl.bench.crowd --socket PATH --clients N`; prints one JSON line
when every connection is up, then reads until stdin closes, and prints how many
connections were lost (EOF) on the way out. Used by `bench handoff` so that a swap
moves N real client connections that are being served.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m swapctl.bench.crowd")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--clients", type=int, required=True)
    args = parser.parse_args()
    sel = selectors.DefaultSelector()
    for _ in range(args.clients):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args.socket)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    print(json.dumps({"ready": args.clients}), flush=True)
    lost = received = 0
    buf = bytearray(262144)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                print(json.dumps({"lost": lost, "received_bytes": received}), flush=True)
                return
            conn = key.fileobj
            if not isinstance(conn, socket.socket):
                continue
            try:
                n = conn.recv_into(buf)
            except BlockingIOError:
                continue
            if n == 0:
                lost += 1
                sel.unregister(conn)
                conn.close()
            received += n


if __name__ == "__main__":
    main()
