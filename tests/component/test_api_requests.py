"""Hostile and malformed requests against swapctld's control API, over a real Unix socket.

Two halves. (1) The daemon's own handler (`Daemon.handle`, built from a written
configuration, no relay started) behind a real `ApiServer`: each request from the
reliability run that used to get no answer at all (issue 16) now gets exactly one typed
error line naming the op and the field. (2) The server's bounds with a small fake
handler: request size, read deadline, idle peers (no thread each), too many connections
(`busy`), too many requests in flight (`busy`), and peers that go away (one debug line,
never a traceback).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapctl.config.load import load_config
from swapctl.daemon.api import ApiClient, ApiError, ApiServer, Limits
from swapctl.daemon.daemon import Daemon
from swapctl.daemon.requests_model import MAX_SOAK_S
from swapctl.demo import configs

pytestmark = pytest.mark.timeout(60)
LINE_TIMEOUT = 5.0


def exchange(path: Path, payload: bytes, *, half_close: bool = True) -> list[dict[str, Any]]:
    """Send bytes as they are (then, by default, end our side); every answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(LINE_TIMEOUT)
        s.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(payload)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                data += chunk
    return [json.loads(line) for line in data.splitlines()]


def one_error(path: Path, payload: bytes) -> dict[str, Any]:
    answers = exchange(path, payload)
    assert len(answers) == 1, answers
    answer = answers[0]
    assert answer["type"] == "error" and answer["code"] and answer["message"], answer
    return answer


# ----- (1) the daemon's handler ---------------------------------------------------------

@pytest.fixture
def daemon_api(sockdir: Path) -> Iterator[ApiServer]:
    config = load_config(configs.write(sockdir))
    api = ApiServer(sockdir / "control.sock", Daemon(config).handle)
    api.start()
    try:
        yield api
    finally:
        api.close()


NESTED = b"[" * 50_000


@pytest.mark.parametrize(("payload", "code", "says"), [
    (b'{"op":"status","service":["x"]}', "invalid", "service: must be a string"),
    (b'{"op":"history","limit":"abc"}', "invalid", "limit: must be a whole number"),
    (b'{"op":"history","limit":1e400}', "invalid", "limit: must be a whole number, not inf"),
    (b'{"op":"history","limit":0}', "invalid", "limit:"),
    (b'{"op":"logs","service":"market_data","lines":"x"}', "invalid", "lines:"),
    (b'{"op":"lease","service":"market_data","holder":"h","ttl_s":"abc","restore_to":"v1"}',
     "invalid", "ttl_s: must be a number"),
    (b'{"op":"lease","service":"market_data","holder":"h","ttl_s":NaN,"restore_to":"v1"}',
     "invalid", "ttl_s:"),
    (b'{"op":"swap","service":"market_data","soak":"abc","dry_run":true}', "invalid",
     "soak: must be seconds or a duration"),
    (b'{"op":"swap","service":"market_data","soak":[1],"dry_run":true}', "invalid",
     "soak: must be seconds or a duration"),
    (b'{"op":"swap","service":"market_data","soak":NaN}', "invalid", "soak: must be from 0"),
    (b'{"op":"swap","service":"market_data","soak":-5}', "invalid", "soak: must be from 0"),
    (b'{"op":"swap","service":"market_data","soak":1e308}', "invalid", "soak: must be from 0"),
    (b'{"op":"swap","service":"market_data","soak":true}', "invalid", "soak:"),
    (b'{"op":"swap","service":"market_data","strategy":"fast"}', "invalid", "strategy:"),
    (b'{"op":"swap","service":"market_data","wait":"yes"}', "invalid", "wait:"),
    (b'{"op":"swap","service":"market_data","tO":"v2"}', "invalid", "tO: unknown key"),
    (b'{"op":"request","service":"market_data","request":"undo"}', "invalid", "request:"),
    (b'{"op":"report","swap_id":"../../etc/passwd"}', "invalid", "swap_id:"),
    (b'{"op":"report"}', "invalid", "swap_id: required"),
    (b'{"op":"stats"}', "usage", "unknown op 'stats' (did you mean status?)"),
    (b'{"op":null}', "usage", "expected a JSON object with an op"),
    (b'{"op":"ping","service":{"a":[1]}}', "invalid", "service: unknown key"),
    (b"[1, 2]", "usage", "expected a JSON object with an op"),
    (b'"status"', "usage", "expected a JSON object with an op"),
    (b"{not json", "usage", "bad request"),
    (b"\xff\xfe\x00garbage", "usage", "bad request"),
    (b"", "usage", "bad request"),
    (b"1" * 5000, "usage", "bad request"),  # an int past Python's digit limit
    (NESTED, "usage", "nested too deeply"),
    (b'{"op":"status","service":' + NESTED[:40_000], "usage", "bad request"),
])
def test_every_malformed_request_gets_one_typed_error(daemon_api: ApiServer, payload: bytes,
                                                      code: str, says: str) -> None:
    answer = one_error(daemon_api.path, payload + b"\n")
    assert answer["code"] == code, answer
    assert says in answer["message"], answer["message"]
    assert len(answer["message"]) < 1000, "the answer never echoes the whole request"


def test_the_soak_bound_is_a_day_and_zero_is_allowed(daemon_api: ApiServer) -> None:
    """In range, the request gets past validation (to the unknown service here)."""
    for soak in (0, 0.5, "250ms", "2m", MAX_SOAK_S):
        answer = one_error(daemon_api.path, json.dumps(
            {"op": "swap", "service": "nope", "soak": soak, "dry_run": True}).encode() + b"\n")
        assert answer["code"] == "unknown_service", (soak, answer)
    answer = one_error(daemon_api.path, json.dumps(
        {"op": "swap", "service": "nope", "soak": MAX_SOAK_S + 1}).encode() + b"\n")
    assert answer["code"] == "invalid"


def test_validation_errors_name_every_field_for_scripts(daemon_api: ApiServer) -> None:
    client = ApiClient(daemon_api.path, LINE_TIMEOUT)
    with pytest.raises(ApiError) as info:
        client.call("lease", service=["x"], holder="", ttl_s=-1, restore_to=None)
    assert info.value.code == "invalid"
    fields = {e["field"] for e in info.value.details["errors"]}
    assert fields == {"service", "holder", "ttl_s", "restore_to"}


def test_good_requests_still_answer(daemon_api: ApiServer) -> None:
    client = ApiClient(daemon_api.path, LINE_TIMEOUT)
    assert client.call("ping")["type"] == "result"
    assert client.call("status")["services"] == []
    assert client.call("history", limit=5)["swaps"] == []
    with pytest.raises(ApiError) as info:
        client.call("status", service="market_dta")
    assert info.value.code == "unknown_service"


# ----- (2) the server's bounds ----------------------------------------------------------

class Handler:
    """ping answers; slow streams lines until `release` (or its client is gone)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if request["op"] == "slow":
            self.entered.release()
            while not self.release.wait(0.01):
                yield {"type": "progress", "record": {"pad": "x" * 4096}}
        yield {"type": "result", "op": request["op"]}


@pytest.fixture
def handler() -> Iterator[Handler]:
    h = Handler()
    yield h
    h.release.set()


def serve(sockdir: Path, handler: Handler, **limits: Any) -> ApiServer:
    api = ApiServer(sockdir / "control.sock", handler, limits=Limits(**limits))
    api.start()
    return api


def test_a_request_too_large_is_refused(sockdir: Path, handler: Handler) -> None:
    api = serve(sockdir, handler, max_request=1024)
    try:
        answer = one_error(api.path, b'{"op": "ping", "pad": "' + b"x" * 4096 + b'"}\n')
        assert answer["code"] == "too_large" and "1024 bytes" in answer["message"]
        with pytest.raises(ApiError) as info:  # the client reads it even if its send broke
            ApiClient(api.path, LINE_TIMEOUT).call("ping", pad="x" * 200_000)
        assert info.value.code == "too_large"
        assert ApiClient(api.path, LINE_TIMEOUT).call("ping")["type"] == "result"
    finally:
        api.close()


def test_a_peer_that_never_ends_its_line_is_let_go(sockdir: Path, handler: Handler) -> None:
    api = serve(sockdir, handler, read_deadline=0.3)
    try:
        answers = exchange(api.path, b'{"op": "pi', half_close=False)
        assert [a["code"] for a in answers] == ["timeout"]
        assert "0.3 s" in answers[0]["message"]
    finally:
        api.close()


def test_idle_peers_cost_no_thread_and_extra_ones_are_busy(sockdir: Path,
                                                           handler: Handler) -> None:
    api = serve(sockdir, handler, max_pending=50, read_deadline=30)
    idle: list[socket.socket] = []
    try:
        threads = threading.active_count()
        for _ in range(50):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(api.path))
            idle.append(s)
        deadline = time.monotonic() + LINE_TIMEOUT
        while len(api.pending) < 50:
            assert time.monotonic() < deadline, f"{len(api.pending)} of 50 seen"
            time.sleep(0.01)
        assert threading.active_count() == threads, "an idle peer must not hold a thread"
        answer = one_error(api.path, b'{"op": "ping"}\n')  # the 51st
        assert answer["code"] == "busy" and "50 connections" in answer["message"]
        idle.pop().close()
        deadline = time.monotonic() + LINE_TIMEOUT
        while True:  # one slot free again once the loop saw the hang-up
            answers = exchange(api.path, b'{"op": "ping"}\n')
            if answers[0]["type"] == "result":
                break
            assert time.monotonic() < deadline, answers
            time.sleep(0.01)
    finally:
        for s in idle:
            s.close()
        api.close()


def test_requests_in_flight_are_bounded(sockdir: Path, handler: Handler) -> None:
    api = serve(sockdir, handler, max_active=2)
    streams = []
    try:
        for _ in range(2):
            stream = ApiClient(api.path, LINE_TIMEOUT).stream("slow")
            assert next(stream)["type"] == "progress"
            streams.append(stream)
        with pytest.raises(ApiError, match="answers 2 requests already") as info:
            ApiClient(api.path, LINE_TIMEOUT).call("ping")
        assert info.value.code == "busy"
        handler.release.set()
        for stream in streams:
            assert list(stream)[-1]["type"] == "result"
        deadline = time.monotonic() + LINE_TIMEOUT
        while api.active:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert ApiClient(api.path, LINE_TIMEOUT).call("ping")["type"] == "result"
    finally:
        api.close()


def test_peers_that_go_away_leave_no_traceback(sockdir: Path, handler: Handler,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """500 idle connects (the reliability run: 484 BrokenPipe tracebacks), clients that
    vanish mid-answer, and ones that send half a line and leave."""
    caplog.set_level(logging.DEBUG, logger="swapctl.daemon.api")
    api = serve(sockdir, handler)
    try:
        for i in range(500):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(api.path))
                if i % 5 == 1:
                    s.sendall(b'{"op": "pi')
                elif i % 5 == 2:
                    s.sendall(b'{"op": "ping"}\n')  # and never read the answer
        for _ in range(5):  # gone while the answer streams
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(api.path))
                s.sendall(b'{"op": "slow"}\n')
                assert handler.entered.acquire(timeout=LINE_TIMEOUT)
                s.recv(100)
        assert ApiClient(api.path, LINE_TIMEOUT).call("ping")["type"] == "result"
        deadline = time.monotonic() + LINE_TIMEOUT
        while api.active or api.pending:
            assert time.monotonic() < deadline, (api.active, len(api.pending))
            time.sleep(0.01)
    finally:
        api.close()
    loud = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
    assert "Traceback" not in caplog.text
