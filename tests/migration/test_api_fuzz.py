"""Fuzzing swapctld's control API with the daemon running (a real process, real relays).

hypothesis sends random JSON values, random requests shaped like the real ones (a known
op with random fields), and random bytes; every one must be answered with exactly one
line that parses as JSON: a typed error (a known code), or the result of a harmless
request that happened to be valid. Afterwards the daemon still answers `status`, the
service is still healthy, and swapctld.log holds no traceback. Then 500 idle connects
(the reliability run wrote 484 BrokenPipe tracebacks for them) leave the log clean too.

No generated request can do harm: `down` is never sent and no generated service name is
a real one, so a request that passes validation stops at "unknown service".
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swapctl.daemon.requests_model import MODELS
from tests.stack import Stack, make_stack, teardown

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow, pytest.mark.xdist_group("api_fuzz")]
CODES = {"usage", "invalid", "busy", "too_late", "refused", "too_large", "timeout",
         "unknown_service", "unhealthy", "permission", "internal"}
LINE_TIMEOUT = 15.0
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def daemon() -> Iterator[Stack]:
    s = make_stack(prefix="swf-")
    try:
        s.up()
        yield s
    finally:
        left = teardown(s)
        assert not left, f"processes left running: {left}"


def answers(s: Stack, payload: bytes) -> list[dict[str, Any]]:
    path = str(s.root / "run" / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(LINE_TIMEOUT)
        sock.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    return [json.loads(line) for line in data.splitlines()]


def check(s: Stack, payload: bytes) -> None:
    got = answers(s, payload)
    assert len(got) >= 1, f"no answer to {payload[:200]!r}"
    last = got[-1]
    assert last["type"] in ("error", "result"), got
    if last["type"] == "error":
        assert last["code"] in CODES and last["message"], last


def _not_a_service(text: str) -> bool:
    return text not in ("market_data", "signals")


scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.text(max_size=20).filter(_not_a_service))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
fields = st.sampled_from([*sorted({name for m in MODELS.values() for name in m.model_fields}
                                  - {"op"}), "x", "Service"])
requests = st.builds(
    lambda op, extra: {**{k: v for k, v in extra.items() if k != "op"}, "op": op},
    st.sampled_from([*sorted(set(MODELS) - {"down"}), "stats", ""]),  # never down
    st.dictionaries(fields, values, max_size=5))


@FUZZ
@given(value=values)
def test_random_json_values(daemon: Stack, value: Any) -> None:
    if isinstance(value, dict) and value.get("op") == "down":
        return
    check(daemon, json.dumps(value).encode() + b"\n")


@FUZZ
@given(request=requests)
def test_random_requests_shaped_like_real_ones(daemon: Stack, request: dict[str, Any]) -> None:
    check(daemon, json.dumps(request).encode() + b"\n")


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes(daemon: Stack, data: bytes) -> None:
    check(daemon, data)


def test_still_serving_and_no_traceback(daemon: Stack) -> None:
    """Runs after the fuzz (file order): the daemon answers and logged nothing loud."""
    for _ in range(500):  # idle connects: connect, say nothing, leave
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(daemon.root / "run" / "control.sock"))
    status = daemon.status()
    assert status["health"]["healthy"] and status["active"]["release"] == "v1"
    log = (daemon.root / "logs" / "swapctld.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "BrokenPipe" not in log and "ConnectionReset" not in log
