"""`swapctl bench codec`: the Python codec against the relays' published codec baselines.

How it works: everything runs in this process, one thread, with the garbage
collector off inside each timed section (as `timeit` does). Inputs are built before
the clock starts. Parsing feeds a stream of 74-byte Trade messages, cut into 64 KiB
chunks, through `Framer(domain=1)`: once with checksum 0 (framing and header checks)
and once with the CRC filled in and `verify_checksum=True`. Construction builds
whole messages with unique sequences: through `encode_message` (with a new Trade
TLV per message, and with one prebuilt TLV) and through the template path of
`swapctl.probes.traffic.MessageFactory` (per message: sequence, timestamp and CRC
patched into a copied template), built 885 messages (one 64 KiB write) per call.
Each measurement is repeated; the best repeat is the figure, all repeats are shown.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from swapctl.bench.cpu import CpuWindow
from swapctl.bench.report import Goal, Report, conditions
from swapctl.gcquiet import no_gc
from swapctl.probes.bulk.stream import DOMAIN, MESSAGE_SIZE, SOURCE
from swapctl.probes.traffic import Kind, MessageFactory, Mix
from swapctl.protocol import Framer, Trade, encode_message

REFERENCE_PARSE = 1_643_779  # msg/s, the relays' codec, published (protocol-v2.md section 6)
REFERENCE_CONSTRUCT = 1_097_624  # msg/s, same source
REFERENCE_NOTE = ("published constants of the relays' own codec (in-process, one thread, "
                  "58-byte messages); not measured in this run")
TEMPLATE_BATCH = 885  # messages per factory call: 885 x 74 bytes fill one 64 KiB write


@dataclass(frozen=True, slots=True)
class CodecSettings:
    messages: int = 100_000
    repeats: int = 5
    chunk: int = 65_536


def _trade(i: int) -> Trade:
    return Trade(asset_id=7, price=6_500_000_000_000 + i, volume=100_000_000,
                 exec_ts_ns=1_700_000_000_000_000_000 + i, venue=1, asset_type=1)


def _stream(count: int, checksum: bool) -> bytes:
    tlvs = [_trade(0).to_tlv()]
    return b"".join(encode_message(DOMAIN, SOURCE, tlvs, sequence=i + 1, checksum=checksum)
                    for i in range(count))


def _timed(work: Callable[[], int], expected: int) -> float:
    """Messages per second of one run of `work`, which returns how many it handled."""
    with no_gc(collect_first=True):
        start = time.perf_counter_ns()
        done = work()
        elapsed = time.perf_counter_ns() - start
    if done != expected:
        raise RuntimeError(f"benchmark handled {done} messages, expected {expected}")
    return done / (elapsed / 1e9)


def _measure(work: Callable[[], int], expected: int, repeats: int,
             reference: int) -> dict[str, Any]:
    runs = [_timed(work, expected) for _ in range(repeats)]
    best = max(runs)
    return {"best_msgs_per_s": round(best), "repeats_msgs_per_s": [round(r) for r in runs],
            "vs_reference": round(best / reference, 3)}


def _parser(stream: bytes, chunk: int, verify: bool) -> Callable[[], int]:
    chunks = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]

    def parse() -> int:
        framer = Framer(domain=DOMAIN, verify_checksum=verify)
        for data in chunks:
            framer.feed(data)
        return framer.frames if not framer.rejected and not framer.buffered else -1

    return parse


def _encode_new_tlv(count: int) -> Callable[[], int]:
    def build() -> int:
        out = [encode_message(DOMAIN, SOURCE, [_trade(i).to_tlv()], sequence=i + 1)
               for i in range(count)]
        return len(out)

    return build


def _encode_prebuilt_tlv(count: int) -> Callable[[], int]:
    tlvs = [_trade(0).to_tlv()]

    def build() -> int:
        out = [encode_message(DOMAIN, SOURCE, tlvs, sequence=i + 1) for i in range(count)]
        return len(out)

    return build


def _template(count: int) -> Callable[[], int]:
    def build() -> int:
        factory = MessageFactory(domain=DOMAIN, source=SOURCE, publisher=0, run_tag=0x8001,
                                 mix=Mix(((Kind.TRADE, 1),)))
        built = 0
        while built < count:
            batch = factory.build(min(TEMPLATE_BATCH, count - built), time.time_ns())
            built += batch.count
        return built if factory.built_bytes == count * MESSAGE_SIZE else -1

    return build


def run_codec(settings: CodecSettings) -> Report:
    n, reps, chunk = settings.messages, settings.repeats, settings.chunk
    window = CpuWindow({"bench": os.getpid()})
    parsing = {
        "checksum_0": _measure(_parser(_stream(n, False), chunk, False), n, reps,
                               REFERENCE_PARSE),
        "crc_verified": _measure(_parser(_stream(n, True), chunk, True), n, reps,
                                 REFERENCE_PARSE),
    }
    builders = {"encode_message_new_trade": _encode_new_tlv(n),
                "encode_message_prebuilt_tlv": _encode_prebuilt_tlv(n),
                "template": _template(n)}
    construction = {name: _measure(build, n, reps, REFERENCE_CONSTRUCT)
                    for name, build in builders.items()}
    cpu = window.close({})
    return {
        "conditions": _conditions(settings),
        "machine_during_run": {"background_cpu_percent": cpu["background_percent"],
                               "steal_percent": cpu["steal_percent"],
                               "note": "% of one core used by other processes / the "
                                       "hypervisor while this ran; high values depress "
                                       "the figures"},
        "parsing": parsing,
        "construction": construction,
        "reference": {"parse_msgs_per_s": REFERENCE_PARSE,
                      "construct_msgs_per_s": REFERENCE_CONSTRUCT, "note": REFERENCE_NOTE},
        "goals": [g.to_dict() for g in _goals(parsing, construction)],
    }


def _conditions(s: CodecSettings) -> dict[str, Any]:
    return conditions(
        message_bytes=74,
        message="header + one Trade TLV (40-byte value), domain 1, unique sequences",
        messages_per_repeat=s.messages,
        repeats=s.repeats,
        figure="best repeat",
        chunk_bytes=s.chunk,
        threads=1,
        gc="disabled inside timed sections",
        parsing="Framer(domain=1).feed per chunk: framing, magic, size, domain (and CRC)",
        construction_paths={
            "encode_message_new_trade": "encode_message(1, 2, [Trade(...).to_tlv()], "
                                        "sequence=i), a new Trade per message",
            "encode_message_prebuilt_tlv": "encode_message(1, 2, tlvs, sequence=i), "
                                           "one TLV built beforehand",
            "template": "probes.traffic.MessageFactory.build: template copy + sequence, "
                        f"timestamp and CRC patched, {TEMPLATE_BATCH} messages per call",
        },
    )


def _goals(parsing: dict[str, Any], construction: dict[str, Any]) -> list[Goal]:
    goals = [Goal.at_least(f"parse {name} vs reference", p["vs_reference"], 1.0, "x")
             for name, p in parsing.items()]
    goals += [Goal.at_least(f"construct {name} vs reference", c["vs_reference"], 1.0, "x")
              for name, c in construction.items()]
    return goals
