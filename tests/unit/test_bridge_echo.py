"""EchoFilter: the bridge's own echoes are dropped, real traffic (even identical) is not."""

from __future__ import annotations

from swapctl.legacy.bridge_echo import EchoFilter, frame_ends
from swapctl.protocol import encode_message


def msg(n: int, size: int = 0) -> bytes:
    return encode_message(1, 7, b"\x01" * size, sequence=n, timestamp=n)


def test_whole_run_echo_is_dropped_at_once() -> None:
    f = EchoFilter()
    out = msg(1) + msg(2, 40)
    f.wrote(out, 0.0)
    assert f.filter(out, 2, 0.001) == b""
    assert (f.counts.frames, f.counts.bytes, f.pending) == (2, len(out), 0)


def test_echo_interleaved_with_real_frames_keeps_real_ones_in_order() -> None:
    f = EchoFilter()
    f.wrote(msg(1) + msg(2), 0.0)
    run = msg(100) + msg(1) + msg(101) + msg(2) + msg(102)
    assert f.filter(run, 5, 0.001) == msg(100) + msg(101) + msg(102)
    assert f.counts.frames == 2 and f.pending == 0


def test_echo_split_over_runs() -> None:
    f = EchoFilter()
    f.wrote(msg(1) + msg(2) + msg(3), 0.0)
    assert f.filter(msg(1), 1, 0.0) == b""
    assert f.filter(msg(9) + msg(2), 2, 0.0) == msg(9)
    assert f.filter(msg(3) + msg(4), 2, 0.0) == msg(4)
    assert f.pending == 0


def test_identical_real_frame_is_forwarded_once_not_lost() -> None:
    """A publisher sends the very bytes the bridge wrote: one copy is taken as the echo,
    the other is forwarded; exactly one crosses, whichever arrives first."""
    f = EchoFilter()
    same = msg(0)  # e.g. an identification header: identical from every publisher
    f.wrote(same, 0.0)
    forwarded = f.filter(same, 1, 0.0) + f.filter(msg(5), 1, 0.0) + f.filter(same, 1, 0.0)
    assert frame_ends(forwarded) == [32, 64]
    assert sorted([forwarded[:32], forwarded[32:]]) == sorted([same, msg(5)])
    assert f.pending == 0


def test_no_echo_side_forwards_everything() -> None:
    f = EchoFilter(echo=False)
    f.wrote(msg(1), 0.0)
    assert f.filter(msg(1), 1, 0.0) == msg(1)
    assert f.pending == 0


def test_missing_echo_resyncs_after_grace_only() -> None:
    f = EchoFilter(grace=0.5)
    f.wrote(msg(1), 0.0)
    f.wrote(msg(2), 0.0)
    # within the grace period a non-head frame is real traffic, even if pending deeper
    assert f.filter(msg(2), 1, 0.1) == msg(2)
    assert f.counts.missing == 0
    # the relay lost msg(1): after the grace period msg(2)'s echo resynchronises
    f.wrote(msg(3), 0.2)
    assert f.filter(msg(3), 1, 1.0) == b""
    assert (f.counts.missing, f.counts.resyncs, f.pending) == (2, 1, 0)


def test_echo_that_never_comes_expires() -> None:
    f = EchoFilter(timeout=2.0)
    f.wrote(msg(1), 0.0)
    f.wrote(msg(2), 1.5)
    f.expire(1.0)
    assert f.counts.missing == 0
    f.expire(2.5)
    assert f.counts.missing == 1 and f.pending == 32
    assert f.filter(msg(2), 1, 2.6) == b""


def test_pending_is_bounded() -> None:
    f = EchoFilter(max_pending=100)
    for n in range(10):
        f.wrote(msg(n), 0.0)
    assert f.pending <= 100
    assert f.counts.missing == 10 - f.pending // 32
