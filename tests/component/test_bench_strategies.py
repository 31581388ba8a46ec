"""`swapctl bench strategies` end to end, small: the JSON's shape, and figures that come
from measurements (the checker's sent/received counts, the pause samples, restart's
disconnects counted by the clients themselves)."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

import swapctl.cli.bench_strategies  # noqa: F401  (attaches `strategies` to `bench`)
from swapctl.cli import main

pytestmark = pytest.mark.timeout(240)


def test_bench_strategies_json_small() -> None:
    result = CliRunner().invoke(main, ["bench", "strategies", "--swaps", "2", "--rates",
                                       "2000", "--clients", "10", "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["benchmark"] == "strategies"
    c = report["conditions"]
    assert c["connected_clients"] == 10 and c["rates_asked"] == [2000]
    assert c["rates_used"] == [2000] and "Every rate asked for was used" in c["note"]
    assert c["message_sizes_bytes"]["trade"] == 32 + 2 + 40
    rows = {r["strategy"]: r for r in report["results"]}
    assert set(rows) | {k.split("@")[0] for k in report["skipped"]} == {
        "handoff", "takeover", "bridge", "restart"}
    for name, row in rows.items():
        assert row["swaps"] == 2, (name, row.get("errors"))
        assert row["rate_used"] == 2000
        pause = row["pause_ms"]
        assert pause["n"] == 2 and 0 < pause["p50"] <= pause["p99"] <= pause["max"]
        checker = row["checker"]
        assert checker["sent"] > 1000  # ~2000 msg/s over the swaps
        assert checker["received"] + checker["lost"] <= checker["deliveries_expected"]
        assert set(row["disconnects"]) >= {"report", "checker", "crowd"}
    # the reference: a restart cuts every client, and the clients themselves count it
    restart = rows["restart"]
    assert restart["disconnects"]["crowd"] >= 2 * (10 - 3)
    assert restart["disconnects"]["report"] >= restart["disconnects"]["checker"] > 0
    assert rows["bridge"]["disconnects"]["checker"] == 0 and rows["bridge"]["lost"] == 0
    takeover = rows["takeover"]["lost_equals_checker"]  # per swap, against the canary
    assert takeover["swaps_checked"] == 2 and takeover["verdict"] is True
    assert takeover["report_lost"] == takeover["checker_lost"]
    assert {"stop", "refresh", "adopt", "resume"} <= set(rows["takeover"]["stages_ms"])
    assert len(rows["takeover"]["per_swap"]) == 2
    latency = report["bridge_latency"]
    assert latency["messages"] > 0 and latency["lost"] == 0
    assert latency["bridged_ms"]["p50"] > 0 and latency["direct_ms"]["p50"] > 0
    names = [g["name"] for g in report["goals"]]
    assert any("bridge" in n and "lost" in n for n in names)
    assert any("report's lost = the checker's" in n for n in names)
    assert all(isinstance(g["met"], bool) for g in report["goals"])


def test_strategies_option_takes_a_list_and_the_rate_note_says_why_it_is_capped() -> None:
    from swapctl.bench.strategies import StrategiesBenchSettings, rate_note  # noqa: PLC0415
    from swapctl.cli.bench_strategies import _names  # noqa: PLC0415
    assert _names(("takeover,restart", "takeover")) == ("takeover", "restart")
    assert _names(()) == ()
    with pytest.raises(click.BadParameter, match="unknown nope"):
        _names(("takeover,nope",))
    note = rate_note(StrategiesBenchSettings(rates=(10_000, 100_000), clients=100))
    assert "100,000 msg/s asked -> 14,563 used" in note and "10,000 msg/s" not in note
    assert "10,300,000 deliveries/s" in note and "9.5M" in note
