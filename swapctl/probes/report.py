"""What a load run found: per-client reports, totals, verdict, text and JSON renderings."""

from __future__ import annotations

from dataclasses import dataclass

from swapctl.probes.audit import AuditResult, combine

CPU_WARNING = 0.8  # share of wall time a consumer ran or waited to run


@dataclass(frozen=True, slots=True)
class Conditions:
    socket: str
    publishers: int
    consumers: int
    consumer_modes: tuple[str, ...]
    rate_asked: float  # 0 = flat out
    duration_s: float | None
    domain: str
    profile: str
    domain_byte: int
    source: int
    mix: str
    message_sizes: tuple[tuple[str, int], ...]  # kind -> bytes on the wire
    id_header: bool
    publisher_reconnect: bool
    run_tag: int


@dataclass(frozen=True, slots=True)
class PublisherReport:
    index: int
    sent: int  # messages fully written; numbers 1..sent
    bytes_sent: int
    writes: int
    elapsed_s: float  # from the go signal to the last write
    disconnects: int
    reconnects: int
    dead: bool  # gave up reconnecting
    last_error: str = ""
    echo: AuditResult | None = None  # with audit_echo
    busy: float = 0.0  # share of the publishing time it ran on a CPU
    starved: float = 0.0  # share of it spent waiting for a CPU


@dataclass(frozen=True, slots=True)
class ConsumerReport:
    index: int
    mode: str
    audit: AuditResult
    disconnects: int
    reconnects: int
    connect_failures: int
    dead: bool  # a strategy consumer stopped for good on EOF
    last_error: str = ""
    busy: float = 0.0  # share of the time until told to settle it ran on a CPU
    starved: float = 0.0  # share of it spent waiting for a CPU


@dataclass(frozen=True, slots=True)
class LoadReport:
    conditions: Conditions
    publishers: tuple[PublisherReport, ...]
    consumers: tuple[ConsumerReport, ...]
    settle_s: float
    unsynced: tuple[str, ...] = ()  # clients that never confirmed the start barrier

    @property
    def total(self) -> AuditResult:
        """All consumers' (and audited echoes') verdicts added up."""
        echoes = [p.echo for p in self.publishers if p.echo is not None]
        return combine([*(c.audit for c in self.consumers), *echoes])

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.publishers)

    @property
    def elapsed_s(self) -> float:
        return max((p.elapsed_s for p in self.publishers), default=0.0)

    @property
    def rate_achieved(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def disconnects(self) -> int:
        return (sum(p.disconnects for p in self.publishers)
                + sum(c.disconnects for c in self.consumers))

    def problems(self) -> list[str]:
        """Why the run failed, one line each; empty when clean."""
        t = self.total
        out = [f"{n} {what}" for n, what in (
            (t.lost, "lost"), (t.duplicated, "duplicated"), (t.reordered, "reordered"),
            (t.corrupted, "corrupted"), (t.unexpected, "unexpected (never sent)"),
            (self.disconnects, "unexpected disconnects"),
        ) if n]
        out += [f"publisher {p.index} gave up: {p.last_error}" for p in self.publishers if p.dead]
        out += [f"consumer {c.index} ({c.mode}) dead: {c.last_error}"
                for c in self.consumers if c.dead]
        if self.sent == 0:
            out.append("no message was sent")
        return out

    def warnings(self) -> list[str]:
        """Doubts about the instrument itself (not failures of the relay)."""
        out = [f"consumer {c.index} wanted a CPU {c.busy + c.starved:.0%} of the time "
               f"(ran {c.busy:.0%}, waited for one {c.starved:.0%}): the checker itself may "
               "be the slow consumer a relay sheds; lower --rate or give it more cores"
               for c in self.consumers if c.busy + c.starved >= CPU_WARNING]
        if self.unsynced:
            out.append(f"start not confirmed through the relay for {', '.join(self.unsynced)}: "
                       "they may have missed the first messages (does the relay forward "
                       "and echo?)")
        asked = self.conditions.rate_asked
        if asked and self.rate_achieved < 0.95 * asked:
            busiest = max((p.busy for p in self.publishers), default=0.0)
            out.append(f"achieved {self.rate_achieved:,.0f} msg/s of {asked:,.0f} asked "
                       f"(publishers busy up to {busiest:.0%}): the relay read slowly or "
                       "the publishers ran out of CPU")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    def to_dict(self) -> dict[str, object]:
        c = self.conditions
        return {
            "ok": self.ok,
            "problems": self.problems(),
            "warnings": self.warnings(),
            "conditions": {
                "socket": c.socket, "publishers": c.publishers, "consumers": c.consumers,
                "consumer_modes": list(c.consumer_modes), "rate_asked": c.rate_asked,
                "rate_achieved": round(self.rate_achieved, 1), "duration_s": c.duration_s,
                "elapsed_s": round(self.elapsed_s, 3), "settle_s": round(self.settle_s, 3),
                "domain": c.domain, "profile": c.profile, "domain_byte": c.domain_byte,
                "source": c.source, "mix": c.mix, "message_sizes": dict(c.message_sizes),
                "id_header": c.id_header, "publisher_reconnect": c.publisher_reconnect,
                "run_tag": f"0x{c.run_tag:04X}",
            },
            "sent": self.sent,
            "total": self.total.to_dict(),
            "publishers": [_publisher_dict(p) for p in self.publishers],
            "consumers": [_consumer_dict(x) for x in self.consumers],
        }


def _publisher_dict(p: PublisherReport) -> dict[str, object]:
    return {"index": p.index, "sent": p.sent, "bytes_sent": p.bytes_sent, "writes": p.writes,
            "elapsed_s": round(p.elapsed_s, 3), "disconnects": p.disconnects,
            "reconnects": p.reconnects, "dead": p.dead, "last_error": p.last_error,
            "busy": round(p.busy, 3), "starved": round(p.starved, 3),
            "echo": p.echo.to_dict() if p.echo else None}


def _consumer_dict(c: ConsumerReport) -> dict[str, object]:
    return {"index": c.index, "mode": c.mode, "disconnects": c.disconnects,
            "reconnects": c.reconnects, "connect_failures": c.connect_failures,
            "dead": c.dead, "last_error": c.last_error, "busy": round(c.busy, 3),
            "starved": round(c.starved, 3),
            "audit": c.audit.to_dict()}


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"


def render_text(report: LoadReport) -> str:
    c, t = report.conditions, report.total
    modes = ", ".join(f"{m} x{c.consumer_modes.count(m)}" for m in sorted(set(c.consumer_modes)))
    asked = "flat out" if c.rate_asked == 0 else f"{c.rate_asked:,.0f} msg/s"
    sizes = ", ".join(f"{k} {n} B" for k, n in c.message_sizes)
    lines = [
        f"swapctl load: {'PASS' if report.ok else 'FAIL'}",
        f"  relay      {c.socket} (domain {c.domain}/{c.profile} = byte {c.domain_byte})",
        f"  clients    {c.publishers} publishers, {c.consumers} consumers ({modes or 'none'})",
        f"  rate       asked {asked}, achieved {report.rate_achieved:,.0f} msg/s "
        f"over {report.elapsed_s:.2f} s; settled in {report.settle_s:.2f} s",
        f"  mix        {c.mix} ({sizes})",
        f"  sent       {report.sent:,} messages (run tag 0x{c.run_tag:04X})",
        f"  received   {t.received:,} of {t.expected:,} expected (all consumers)",
        f"  lost {t.lost}  duplicated {t.duplicated}  reordered {t.reordered}  "
        f"corrupted {t.corrupted}  unexpected {t.unexpected}  disconnects {report.disconnects}",
        f"  latency    p50 {_ms(t.latency.p50)}  p99 {_ms(t.latency.p99)}  "
        f"p999 {_ms(t.latency.p999)}  max {_ms(t.latency.max)}",
        f"  max gap    {_ms(t.max_gap_ns)}",
    ]
    if t.foreign or t.id_headers:
        lines.append(f"  not judged {t.id_headers} identification headers, "
                     f"{t.foreign} messages from other clients")
    for x in report.consumers:
        a = x.audit
        state = "DEAD" if x.dead else "ok" if a.clean and not x.disconnects else "FAIL"
        lines.append(
            f"  consumer {x.index} ({x.mode}): {state} received {a.received:,}/{a.expected:,} "
            f"lost {a.lost} dup {a.duplicated} reord {a.reordered} corrupt {a.corrupted} "
            f"disconnects {x.disconnects} reconnects {x.reconnects} gap {_ms(a.max_gap_ns)} "
            f"cpu {x.busy:.0%} (+{x.starved:.0%} waiting)"
        )
    for p in report.publishers:
        state = "DEAD" if p.dead else "ok"
        lines.append(f"  publisher {p.index}: {state} sent {p.sent:,} disconnects "
                     f"{p.disconnects} reconnects {p.reconnects}")
    lines += [f"  problem: {line}" for line in report.problems()]
    lines += [f"  warning: {line}" for line in report.warnings()]
    return "\n".join(lines)
