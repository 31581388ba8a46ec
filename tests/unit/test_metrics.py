"""DaemonMetrics through its real HTTP endpoint, parsed by prometheus_client's own parser.

Every test makes its own DaemonMetrics (a private registry each) and a fixed clock.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from swapctl.daemon.metrics import DaemonMetrics, parse_listen
from swapctl.errors import UsageError

NOW = 1_700_000_000.0
Labels = frozenset[tuple[str, str]]


@pytest.fixture
def metrics() -> Iterator[DaemonMetrics]:
    m = DaemonMetrics(clock=lambda: NOW)
    yield m
    m.close()


def scrape(m: DaemonMetrics) -> dict[str, dict[Labels, float]]:
    """GET /metrics from the running endpoint: sample name -> labels -> value."""
    address = m.address
    assert address is not None
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(sample.labels.items())
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def lab(**labels: str) -> Labels:
    return frozenset(labels.items())


@pytest.fixture
def served(metrics: DaemonMetrics) -> DaemonMetrics:
    address = metrics.serve("127.0.0.1:0")
    assert address is not None
    assert address[0] == "127.0.0.1"
    assert address[1] > 0
    return metrics


def test_swap_finished_committed(served: DaemonMetrics) -> None:
    served.swap_finished("market_data", "committed", pause_ms=0.4, rollback_ms=None,
                         duration_s=12.5)
    s = scrape(served)
    svc = lab(service="market_data")
    assert s["swapctl_swaps_total"] == {lab(service="market_data", decision="committed"): 1.0}
    assert "swapctl_rollbacks_total" not in s
    assert s["swapctl_swap_pause_seconds_count"][svc] == 1.0
    assert s["swapctl_swap_pause_seconds_sum"][svc] == pytest.approx(0.0004)
    assert s["swapctl_swap_pause_seconds_bucket"][lab(service="market_data", le="0.00025")] == 0
    assert s["swapctl_swap_pause_seconds_bucket"][lab(service="market_data", le="0.0005")] == 1
    assert s["swapctl_swap_duration_seconds_sum"][svc] == 12.5
    assert "swapctl_rollback_duration_seconds_count" not in s
    assert s["swapctl_last_swap_timestamp_seconds"][svc] == NOW


def test_rollbacks_counted_once_with_their_duration(served: DaemonMetrics) -> None:
    served.swap_finished("signal", "rolled_back", pause_ms=0.3, rollback_ms=850.0,
                         duration_s=4.0)
    served.swap_finished("signal", "rolled_back", pause_ms=None, rollback_ms=None,
                         duration_s=1.0)
    served.swap_finished("signal", "failed", pause_ms=None, rollback_ms=20.0, duration_s=2.0)
    s = scrape(served)
    svc = lab(service="signal")
    assert s["swapctl_swaps_total"] == {
        lab(service="signal", decision="rolled_back"): 2.0,
        lab(service="signal", decision="failed"): 1.0,
    }
    assert s["swapctl_rollbacks_total"][svc] == 3.0
    assert s["swapctl_rollback_duration_seconds_count"][svc] == 2.0
    assert s["swapctl_rollback_duration_seconds_sum"][svc] == pytest.approx(0.87)
    assert s["swapctl_rollback_duration_seconds_bucket"][lab(service="signal", le="1.0")] == 2
    assert s["swapctl_swap_pause_seconds_count"][svc] == 1.0
    assert s["swapctl_swap_duration_seconds_count"][svc] == 3.0


def test_unknown_decision_is_refused(metrics: DaemonMetrics) -> None:
    with pytest.raises(ValueError, match="committed"):
        metrics.swap_finished("signal", "maybe", pause_ms=None,  # type: ignore[arg-type]
                              rollback_ms=None, duration_s=1.0)


def test_in_progress_and_recoveries(served: DaemonMetrics) -> None:
    served.swap_started("execution")
    assert scrape(served)["swapctl_swap_in_progress"] == {lab(service="execution"): 1.0}
    served.swap_ended("execution")
    served.recovered("execution", "rolled_back")
    served.recovered("execution", "rolled_back")
    served.recovered("execution", "committed")
    s = scrape(served)
    assert s["swapctl_swap_in_progress"] == {lab(service="execution"): 0.0}
    assert s["swapctl_recoveries_total"] == {
        lab(service="execution", outcome="rolled_back"): 2.0,
        lab(service="execution", outcome="committed"): 1.0,
    }


def test_relay_series_follow_the_slot(served: DaemonMetrics) -> None:
    served.relay_seen("market_data", "blue", "v1", healthy=True, connections=40)
    served.relay_seen("market_data", "green", "v2", healthy=False, connections=None)
    s = scrape(served)
    blue = lab(service="market_data", slot="blue", release="v1")
    green = lab(service="market_data", slot="green", release="v2")
    assert s["swapctl_relay_up"] == {blue: 1.0, green: 0.0}
    assert s["swapctl_relay_connections"] == {blue: 40.0}

    served.relay_seen("market_data", "blue", "v3", healthy=True, connections=7)
    served.relay_gone("market_data", "green")
    served.relay_gone("market_data", "green")  # twice is harmless
    s = scrape(served)
    blue3 = lab(service="market_data", slot="blue", release="v3")
    assert s["swapctl_relay_up"] == {blue3: 1.0}
    assert s["swapctl_relay_connections"] == {blue3: 7.0}

    served.relay_gone("market_data", "blue")
    s = scrape(served)
    assert "swapctl_relay_up" not in s
    assert "swapctl_relay_connections" not in s


def test_daemon_info(served: DaemonMetrics) -> None:
    served.daemon_info("0.1.0")
    served.daemon_info("0.1.1", started_at=NOW - 60)
    s = scrape(served)
    assert s["swapctl_daemon_info"] == {lab(version="0.1.1"): 1.0}
    assert s["swapctl_daemon_start_time_seconds"] == {lab(): NOW - 60}


def test_render_matches_the_registry(metrics: DaemonMetrics) -> None:
    metrics.recovered("signal", "committed")
    text = metrics.render().decode()
    assert 'swapctl_recoveries_total{outcome="committed",service="signal"} 1.0' in text
    assert metrics.address is None


def test_serve_none_is_off(metrics: DaemonMetrics) -> None:
    assert metrics.serve(None) is None
    assert metrics.address is None


def test_close_stops_the_endpoint(metrics: DaemonMetrics) -> None:
    address = metrics.serve("127.0.0.1:0")
    assert address is not None
    metrics.close()
    assert metrics.address is None
    with socket.socket() as probe:
        probe.settimeout(5)
        assert probe.connect_ex(address) != 0
    metrics.close()  # twice is harmless


def test_used_address_names_it(served: DaemonMetrics) -> None:
    address = served.address
    assert address is not None
    listen = f"{address[0]}:{address[1]}"
    other = DaemonMetrics()
    with pytest.raises(UsageError, match=rf"'{listen}'.*cannot listen.*pick a free port"):
        other.serve(listen)
    assert other.address is None


@pytest.mark.parametrize("bad", ["9108", "localhost", "127.0.0.1:http", "127.0.0.1:70000",
                                 "127.0.0.1:"])
def test_malformed_address(bad: str) -> None:
    with pytest.raises(UsageError, match=r"expected HOST:PORT, such as 127\.0\.0\.1:9108"):
        DaemonMetrics().serve(bad)


def test_address_not_on_this_host(metrics: DaemonMetrics) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never a local address, and no name lookup is involved.
    with pytest.raises(UsageError, match=r"'192\.0\.2\.1:0'.*cannot listen"):
        metrics.serve("192.0.2.1:0")


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9108", ("127.0.0.1", 9108)), (":9108", ("0.0.0.0", 9108)),
     ("[::1]:0", ("::1", 0)), ("localhost:1", ("localhost", 1))],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected
