"""The Rust crate's own unit tests (`cargo test`), part of the suite like everything else:
the shedding of owed units, the backlog memfd, the binary table, the framer."""

from __future__ import annotations

import subprocess

import pytest

from tests.rust import SDK, cargo, example_relay


@pytest.mark.timeout(900)
def test_the_crates_unit_tests_pass() -> None:
    example_relay()  # the release build's dependencies, which the tests reuse
    done = subprocess.run([cargo(), "test", "--release", "--offline", "--quiet"],
                          check=False, cwd=SDK,
                          capture_output=True, text=True, timeout=850, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    ran = sum(int(line.split()[1]) for line in done.stdout.splitlines()
              if line.startswith("running "))
    assert ran >= 10, f"cargo test ran only {ran} tests:\n{done.stdout[-2000:]}"
    assert "test result: FAILED" not in done.stdout
