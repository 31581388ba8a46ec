"""`python -m swapctl.probes.bulk.loadgen publish|consume`: one side of a bulk run.

The parent (`swapctl bench relay`) talks to each process with JSON lines: the process
prints {"event": "ready"} once its traffic is built and (consumer) its socket is
connected or listening; the publisher then waits for a `go` line on stdin; each
prints one {"event": "result", ...} (or {"event": "error", ...}) and exits. If the
parent goes away, stdin closes and a waiting publisher exits; timeouts bound the rest.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

from swapctl.probes.bulk.consumer import Consumer, Received, latency_summary
from swapctl.probes.bulk.publisher import (
    Echo,
    Lane,
    Publisher,
    Sent,
    Stalled,
    paced,
    tighten_timer_slack,
)
from swapctl.probes.bulk.stream import Classifier, StreamCheck, build_stream, end_message
from swapctl.probes.tracker import PublisherAudit
from swapctl.unixsock import connect


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def publish(args: argparse.Namespace) -> None:
    targets = dict(t.split("=", 1) for t in args.target)
    latency = args.mode == "latency"
    if not latency and len(targets) != 1:
        raise SystemExit("throughput mode publishes to exactly one --target")
    streams = {name: build_stream(args.count) for name in targets}
    slack = tighten_timer_slack() if latency else None
    emit(event="ready")
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(2)
    pubs: dict[str, Publisher] = {}
    for name, path in targets.items():
        sock = connect(path, args.connect_timeout)
        echo = Echo(sock, streams[name]) if name in args.echo else None
        pubs[name] = Publisher(sock, echo, args.stall_timeout)
    cpu0 = time.process_time()
    rate = None
    if latency:  # timestamps are written into the streams as each message is sent
        lanes = {name: Lane(pubs[name], streams[name]) for name in targets}
        rate = paced(list(lanes.values()), args.rate, args.block)
        sent = {name: lane.result() for name, lane in lanes.items()}
    else:
        sent = {name: pubs[name].throughput(streams[name], args.batch, args.duration)
                for name in targets}
    cpu = time.process_time() - cpu0
    results = {name: _finish(pubs[name], sent[name], args.idle_timeout) for name in targets}
    emit(event="result", targets=results, cpu_s=round(cpu, 4), achieved_rate=rate,
         timer_slack_ns=slack, cpu_total_s=time.process_time())


def _finish(pub: Publisher, sent: Sent, idle: float) -> dict[str, Any]:
    end = end_message(sent.messages)
    pub.finish(sent, end, idle)
    out: dict[str, Any] = {"sent": sent.messages, "bytes": sent.bytes, "t_start": sent.t_start,
                           "t_end": sent.t_end, "ended_by": sent.ended_by}
    echo = pub.echo
    if echo is not None:
        out["echo"] = {"bytes": echo.received, "complete": echo.received >= sent.bytes,
                       "exact": echo.exact and echo.tail == end}
    pub.sock.close()
    return out


def consume(args: argparse.Namespace) -> None:
    latency = args.mode == "latency"
    check = None if latency else StreamCheck(build_stream(args.count))
    if args.listen:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(args.socket)
            listener.listen(1)
            emit(event="ready")
            listener.settimeout(args.start_timeout)
            sock, _ = listener.accept()
    else:
        sock = connect(args.socket, args.connect_timeout)
        emit(event="ready")
    consumer = Consumer(sock, args.start_timeout, args.idle_timeout)
    if check is None:
        classifier = Classifier()
        got = consumer.latency(classifier)
        audit = classifier.audit()
    else:
        classifier = check.classifier
        got = consumer.throughput(check)
        audit = check.audit()
    sock.close()
    emit(event="result", cpu_total_s=time.process_time(),
         **_consumed(got, classifier, audit, args.warmup if latency else 0, latency))


def _consumed(got: Received, c: Classifier, audit: PublisherAudit, warmup: int,
              latency: bool) -> dict[str, Any]:
    """The run as this consumer saw it; lost/duplicated/reordered are the tracker's,
    judged against `audited_against` (END's count, else the highest number seen)."""
    out: dict[str, Any] = {
        "ended": got.ended, "bytes": got.bytes, "t_first": got.t_first, "t_last": got.t_last,
        "cpu_s": round(got.cpu_s, 4), "delivered": audit.received, "lost": audit.lost,
        "duplicated": audit.duplicated, "reordered": audit.reordered,
        "damaged": audit.damaged, "unexpected": audit.unexpected, "corrupted": c.corrupted,
        "end_count": c.end, "audited_against": audit.sent,
        "lost_samples": list(audit.lost_samples),
    }
    if latency:
        out["latency"] = latency_summary(got.latency_ns, warmup)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m swapctl.probes.bulk.loadgen")
    sub = p.add_subparsers(dest="role", required=True)
    for role in ("publish", "consume"):
        s = sub.add_parser(role)
        s.add_argument("--mode", choices=("throughput", "latency"), required=True)
        s.add_argument("--count", type=int, required=True, help="messages to prebuild")
        s.add_argument("--connect-timeout", type=float, default=10.0)
    pub, con = sub.choices["publish"], sub.choices["consume"]
    pub.add_argument("--target", action="append", required=True, metavar="NAME=PATH",
                     help="a socket to publish to (latency mode: several, interleaved)")
    pub.add_argument("--echo", action="append", default=[], metavar="NAME",
                     help="this target echoes: drain and check it")
    pub.add_argument("--duration", type=float, default=1.0)
    pub.add_argument("--batch", type=int, default=65_536)
    pub.add_argument("--rate", type=float, default=10_000.0)
    pub.add_argument("--block", type=int, default=500,
                     help="latency mode: messages to one target before the next")
    con.add_argument("--socket", required=True)
    pub.add_argument("--stall-timeout", type=float, default=10.0,
                     help="give up when the socket accepts nothing for this long")
    con.add_argument("--listen", action="store_true", help="own the socket (direct reference)")
    con.add_argument("--warmup", type=int, default=0)
    con.add_argument("--start-timeout", type=float, default=60.0)
    for s in (pub, con):
        s.add_argument("--idle-timeout", type=float, default=2.0,
                       help="the stream (consumer) or echo (publisher) is over after this "
                            "long without data")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        publish(args) if args.role == "publish" else consume(args)
    except (OSError, Stalled) as exc:
        emit(event="error", role=args.role, error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
