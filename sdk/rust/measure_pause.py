"""Server-side pause of a handoff between two processes of one relay command, by number
of idle clients, for any relay command: the protocol alone, with no canary, load or
never-reading publisher (`swapctl bench handoff` measures the Python and the Rust relay
with all of those; this script is for a relay of your own).

    .venv/bin/python sdk/rust/measure_pause.py --clients 10,1000 --swaps 20 \
        --relay "sdk/rust/target/release/swapctl-example-relay" \
        --relay ".venv/bin/python -m swapctl.relay --log-level warning"

Each swap is swapctl's own pipelined hand-over (controller.hand_over: RELEASE, each
manifest part forwarded as an ADOPT part, RESUME, CLOSE), alternating between the two
processes (the previous one stays warm in standby). When both were granted the
`precopy` extension (docs/handoff-protocol.md section 10) and `--v1` is not given,
PRECOPY/PREADOPT come first, outside the pause, the RELEASE names it, and OWED/BACKLOG
follow the RESUME, as in a real swap. Server pause = resumed_ns - stopped_reading_ns
(CLOCK_MONOTONIC in both relays); handover = the orchestrator's wall time from RELEASE
sent to RESUME answered; release = the old relay's share (released_ns -
stopped_reading_ns: stop, flush or freeze, describe).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from swapctl.handoff.controller import (
    ControlServer,
    RelayLink,
    forward_backlog,
    hand_over,
    pre_copy,
)
from swapctl.handoff.manifest import Transfer
from swapctl.process import stop_group
from swapctl.unixsock import open_listener


def start(command: list[str], control: ControlServer, public: Path, token: str,
          logs: Path) -> tuple[subprocess.Popen[bytes], RelayLink]:
    env = dict(os.environ, SWAPCTL_HANDOFF=str(control.path), SWAPCTL_TOKEN=token,
               SWAPCTL_SOCKET=str(public), SWAPCTL_RELEASE=token)
    with (logs / f"{token}.log").open("ab") as log:
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)
    link = control.accept(token, 10, pid=proc.pid)
    link.wait_ready(10)
    return proc, link


def measure(command: list[str], clients: int, swaps: int,
            v1: bool = False) -> tuple[list[float], list[float], list[float], str]:
    root = Path(tempfile.mkdtemp(prefix="swp-"))
    public = root / "r.sock"
    control = ControlServer(root / "ctl.sock")
    listener = open_listener(public)
    procs: list[subprocess.Popen[bytes]] = []
    held: list[socket.socket] = []
    try:
        links = []
        for token in ("a", "b"):
            proc, link = start(command, control, public, token, root)
            procs.append(proc)
            links.append(link)
        links[0].adopt(Transfer(listener.fileno(), []), 5)
        links[0].resume(5)
        for _ in range(clients):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(public))
            held.append(sock)
        deadline = time.monotonic() + 30
        while links[0].stats(5)["connections_open"] < clients:
            if time.monotonic() > deadline:
                raise TimeoutError("the relay did not accept every client")
            time.sleep(0.01)
        pauses, handovers, releases = [], [], []
        precopy = not v1 and all(link.precopy for link in links)
        for i in range(swaps):
            old, new = links[i % 2], links[(i + 1) % 2]
            base = pre_copy(old, new, lambda: 5.0) if precopy else None
            generation = None if base is None else int(base.meta["generation"])
            began = time.monotonic()
            transfer = hand_over(old, new, 10.0, lambda: 5.0, lambda _: None,
                                 precopy=generation)
            resumed = new.resume(5)
            handovers.append((time.monotonic() - began) * 1000)
            forward_backlog(old, new, 5)
            old.close_held(5)
            for fd in transfer.fds + ([] if base is None else base.fds):
                os.close(fd)
            stopped = int(transfer.meta["stopped_reading_ns"])
            pauses.append((resumed - stopped) / 1e6)
            releases.append((int(transfer.meta["released_ns"]) - stopped) / 1e6)
        return pauses, handovers, releases, "precopy" if precopy else "v1"
    finally:
        for sock in held:
            sock.close()
        for proc in procs:
            stop_group(proc, 3)
        control.close()
        listener.close()
        shutil.rmtree(root, ignore_errors=True)


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (f"p50 {statistics.median(ordered):8.3f}  p99 {p99:8.3f}  "
            f"max {ordered[-1]:8.3f}  mean {statistics.fmean(ordered):8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--relay", action="append", required=True, help="relay command")
    parser.add_argument("--clients", default="10,1000")
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--v1", action="store_true",
                        help="version 1 only, even if both relays offer pre-copy")
    args = parser.parse_args()
    for count in (int(c) for c in args.clients.split(",")):
        for relay in args.relay:
            pauses, handovers, releases, mode = measure(shlex.split(relay), count, args.swaps,
                                                        args.v1)
            name = Path(shlex.split(relay)[0]).name + (" -m swapctl.relay"
                                                       if "swapctl.relay" in relay else "")
            name += f" ({mode})"
            print(f"{count:5d} clients  {name:28s} server pause ms: {summary(pauses)}")
            print(f"{'':5s}          {'':28s} handover ms:     {summary(handovers)}")
            print(f"{'':5s}          {'':28s} of which release: {summary(releases)}")


if __name__ == "__main__":
    main()
