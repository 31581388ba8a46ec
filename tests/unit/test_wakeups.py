"""legacy/wakeups.py: telling a parked thread from one woken with work, from its
syscall file, a futex word, a poll's timeout and an eventfd's count (pure parts)."""

from __future__ import annotations

import struct

from swapctl.legacy import wakeups

PARKED_FUTEX = "202 0x55ed13f3ed50 0x89 0x1 0x0 0x0 0x0 0x7f0dffffffff 0x7ffc36e94ec8\n"
PARKED_EPOLL = "232 0x3 0x55ed13f3f000 0x400 0xffffffff 0x0 0x0 0x7f0da0ae6790 0x7f0d\n"
POLLING_EPOLL = "232 0x3 0x55ed13f3f000 0x400 0x0 0x0 0x0 0x7f0da0ae6790 0x7f0d\n"


def test_syscall_file_gives_number_and_arguments() -> None:
    assert wakeups.parse_syscall_args(PARKED_FUTEX) == (
        202, (0x55ed13f3ed50, 0x89, 1, 0, 0, 0))
    assert wakeups.parse_syscall_args("-1 0x7ffcefbbcf90 0x7f830271c954\n") == (-1, ())
    assert wakeups.parse_syscall_args("running\n") == (None, ())


def test_futex_waits_are_recognised_with_their_word_and_value() -> None:
    number, args = wakeups.parse_syscall_args(PARKED_FUTEX)
    assert wakeups.futex_wait(number, args, "x86_64") == (0x55ed13f3ed50, 1)
    wake = (202, (0x1000, 0x81, 1, 0, 0, 0))  # FUTEX_WAKE_PRIVATE: not a wait
    assert wakeups.futex_wait(*wake, "x86_64") is None
    assert wakeups.futex_wait(98, args, "aarch64") == (0x55ed13f3ed50, 1)
    assert wakeups.futex_wait(232, args, "x86_64") is None
    # a timed wait resumed after a stop is restart_syscall, with the first call's
    # arguments: a futex wait is still read as one
    assert wakeups.futex_wait(219, args, "x86_64") == (0x55ed13f3ed50, 1)
    assert wakeups.futex_wait(128, args, "aarch64") == (0x55ed13f3ed50, 1)
    assert wakeups.futex_wait(219, (0x2000, 0x7ffc0000, 0, 0, 0, 0), "x86_64") is None


def test_a_poll_that_does_not_wait_is_work_queued() -> None:
    def never(address: int, size: int) -> bytes:
        raise AssertionError("an int timeout needs no memory read")

    parked = wakeups.poll_timeout(*wakeups.parse_syscall_args(PARKED_EPOLL), "x86_64")
    polling = wakeups.poll_timeout(*wakeups.parse_syscall_args(POLLING_EPOLL), "x86_64")
    assert parked == (0xFFFFFFFF, False) and not wakeups.zero_wait(parked, never)
    assert polling == (0, False) and wakeups.zero_wait(polling, never)
    memory = {0x2000: struct.pack("=qq", 0, 0), 0x3000: struct.pack("=qq", 0, 500)}
    ppoll_now = wakeups.poll_timeout(271, (0x10, 2, 0x2000, 0, 8, 0), "x86_64")
    ppoll_later = wakeups.poll_timeout(271, (0x10, 2, 0x3000, 0, 8, 0), "x86_64")
    ppoll_ever = wakeups.poll_timeout(271, (0x10, 2, 0, 0, 8, 0), "x86_64")
    assert ppoll_now is not None and wakeups.zero_wait(ppoll_now, lambda a, n: memory[a])
    assert ppoll_later is not None and not wakeups.zero_wait(ppoll_later,
                                                             lambda a, n: memory[a])
    assert ppoll_ever is not None and not wakeups.zero_wait(ppoll_ever, never)
    assert wakeups.poll_timeout(232, (3, 0, 1024, 0), "aarch64") is None


def test_eventfd_count_is_read_from_fdinfo_in_hex() -> None:
    fdinfo = "pos:\t0\nflags:\t02004002\nmnt_id:\t17\nino:\t1036\n" \
             "eventfd-count:               1a\neventfd-id: 1\n"
    assert wakeups.parse_eventfd_count(fdinfo) == 26
    assert wakeups.parse_eventfd_count("pos:\t0\nflags:\t02\n") is None
    links = {3: "anon_inode:[eventpoll]", 4: "anon_inode:[eventfd]", 6: "socket:[1]"}
    assert wakeups.eventfds(links) == [4]


def test_context_switches_are_read_from_the_status_file() -> None:
    status = ("Name:\trelay\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t40\n"
              "nonvoluntary_ctxt_switches:\t2\n")
    assert wakeups.parse_switches(status) == 42
    assert wakeups.parse_switches("Name:\trelay\n") is None


def test_a_thread_ran_between_the_look_and_the_stop_if_it_switched_more_than_once() -> None:
    before = {10: 5, 11: 7, 12: 1}
    assert wakeups.ran_since(before, {10: 6, 11: 8, 12: 2}) == []  # the stop's switch alone
    found = wakeups.ran_since(before, {10: 8, 11: 8, 13: 1})
    assert found == ["thread 10: 2 switch(es) between the look and the stop",
                     "thread 13: born since the look", "thread 12: ended since the look"]
