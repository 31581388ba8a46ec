"""Hostile configurations are refused quickly, the way every config mistake is reported:
`FILE: KEY: what is wrong, what to do`, exit 2, no traceback (issue 16).

Each case used to do worse: 50,000 nested `[` died with a RecursionError (exit 1), a
"billion laughs" alias bomb ran for over a minute with memory growing, and
`soak: 99999999999999999999h` or `state_dir: /etc/passwd` were accepted. Each test has
an anti-hang deadline (pytest-timeout), never a timing assertion.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from swapctl.cli import main
from swapctl.config import check_config
from swapctl.config.model import MAX_CANARY_RATE, MAX_RELEASES
from swapctl.config.types import MAX_COMMAND_WORDS, MAX_DURATION_S, parse_duration
from swapctl.config.yamlfile import MAX_ALIAS_NODES, MAX_DEPTH, MAX_FILE_BYTES
from swapctl.daemon import requests_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

BOMB = """\
a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A short private root instead of pytest's (whose paths run past 60 bytes): the
    production configs' derived socket paths under it must fit AF_UNIX's 107 bytes,
    which `config check` checks too."""
    root = Path(tempfile.mkdtemp(prefix="c", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    """A copy of configs/ whose state and log dirs are private dirs under tmp_path."""
    target = tmp_path / "configs"
    shutil.copytree(CONFIGS, target)
    (tmp_path / "state").mkdir(mode=0o700)
    daemon = target / "swapctld.yaml"
    text = daemon.read_text().replace("/var/lib/swapctl", str(tmp_path / "state"))
    daemon.write_text(text.replace("/var/log/swapctl", str(tmp_path / "logs")))
    return target


def check(confdir: Path) -> list[str]:
    """`swapctl config check` in-process: exit 2, no exception, the problem lines."""
    result = CliRunner().invoke(main, ["config", "check", "--config-dir", str(confdir)])
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output.splitlines()[:-1]  # the last line is the count


def only_line(lines: list[str], file: str) -> str:
    mine = [line for line in lines if line.startswith(file)]
    assert len(mine) == 1, "\n".join(lines)
    return mine[0]


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}: the shipped config changed"
    path.write_text(text.replace(old, new, 1))


def test_the_copy_is_valid(confdir: Path) -> None:
    result = check_config(confdir)
    assert result.ok, "\n".join(map(str, result.problems))


# ----- YAML: depth, aliases, size, values ------------------------------------------


@pytest.mark.timeout(30)
def test_deeply_nested_flow_list_is_refused_with_no_traceback(confdir: Path) -> None:
    (confdir / "signal.yaml").write_text("socket: /tmp/x.sock\nx: " + "[" * 50_000
                                         + "]" * 50_000 + "\n")
    line = only_line(check(confdir), str(confdir / "signal.yaml"))
    assert f"nested deeper than {MAX_DEPTH} levels" in line and "(line 2" in line


@pytest.mark.timeout(30)
def test_deeply_nested_block_mappings_are_refused(confdir: Path) -> None:
    text = "".join("  " * level + f"k{level}:\n" for level in range(MAX_DEPTH + 5)) + \
        "  " * (MAX_DEPTH + 5) + "x: 1\n"
    (confdir / "signal.yaml").write_text(text)
    assert "nested deeper than" in only_line(check(confdir), str(confdir / "signal.yaml"))


@pytest.mark.timeout(30)
def test_billion_laughs_is_refused_before_it_is_built(confdir: Path) -> None:
    (confdir / "signal.yaml").write_text(BOMB)
    line = only_line(check(confdir), str(confdir / "signal.yaml"))
    assert f"aliases expand to more than {MAX_ALIAS_NODES} values" in line
    assert "(line " in line


@pytest.mark.timeout(30)
def test_billion_laughs_in_a_real_process_exits_2(confdir: Path) -> None:
    """The whole CLI in its own process: exit 2, the operator line, no traceback."""
    (confdir / "market_data.yaml").write_text(BOMB)
    done = subprocess.run([sys.executable, "-m", "swapctl", "config", "check", "--config-dir",
                           str(confdir)], capture_output=True, text=True, timeout=25,
                          check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert f"{confdir / 'market_data.yaml'}: aliases expand" in done.stdout


@pytest.mark.timeout(30)
def test_an_alias_cycle_is_refused(confdir: Path) -> None:
    (confdir / "signal.yaml").write_text("a: &a [1, *a]\n")
    assert "(a cycle)" in only_line(check(confdir), str(confdir / "signal.yaml"))


def test_a_small_alias_still_works(confdir: Path) -> None:
    """Anchors and merge keys within the budget are ordinary YAML and stay accepted."""
    path = confdir / "signal.yaml"
    replace(path, "  v2:\n    command: [/opt/relay/v2/bin/swapctl, relay, --domain, signal, "
                  "--profile, alphapulse]\n    handoff: true\n", "  v2: *v1\n")
    replace(path, "  v1:\n", "  v1: &v1\n")
    replace(path, "probe:\n  timeout: 2s\n  echo: true\n", "probe: &probe {timeout: 2s}\n")
    replace(path, "  rate: 500\n", "  <<: {rate: 500}\n")
    result = check_config(confdir)
    assert result.ok, "\n".join(map(str, result.problems))
    assert sorted(result.services["signal"].releases) == ["generic", "v1", "v2"]


@pytest.mark.timeout(30)
def test_a_huge_file_is_not_parsed(confdir: Path) -> None:
    (confdir / "signal.yaml").write_text("# x\n" * (MAX_FILE_BYTES // 4 + 1))
    assert "larger than" in only_line(check(confdir), str(confdir / "signal.yaml"))


@pytest.mark.parametrize(("value", "what"), [
    ("9" * 5000, "a number too long to read"),
    ("2024-02-30", "day is out of range"),
])
def test_values_yaml_cannot_build_are_problems(confdir: Path, value: str, what: str) -> None:
    replace(confdir / "signal.yaml", "active:", f"x: {value}\nactive:")
    line = only_line(check(confdir), str(confdir / "signal.yaml"))
    assert what in line and "quote it" in line and "(line " in line


@pytest.mark.timeout(30)
def test_a_fifo_named_like_a_config_is_refused_not_waited_on(confdir: Path) -> None:
    os.mkfifo(confdir / "pipe.yaml")
    assert "not a regular file" in only_line(check(confdir), str(confdir / "pipe.yaml"))


# ----- ranges: durations and counts --------------------------------------------------


def test_a_huge_soak_is_refused(confdir: Path) -> None:
    path = confdir / "market_data.yaml"
    replace(path, "soak: 60s", "soak: 99999999999999999999h")
    line = only_line(check(confdir), f"{path}: soak:")
    assert "must be at most 24h, not 99999999999999999999h" in line and "(line " in line


def test_one_duration_bound_for_config_cli_and_api() -> None:
    """The CLI's options parse with parse_duration; the API's soak bound is the same one."""
    assert requests_model.MAX_SOAK_S == MAX_DURATION_S
    assert parse_duration("24h") == MAX_DURATION_S
    with pytest.raises(ValueError, match="at most 24h"):
        parse_duration(MAX_DURATION_S + 1)
    with pytest.raises(ValueError, match="at most 24h"):
        parse_duration(1e300)


def test_the_cli_refuses_a_huge_soak_before_asking_anyone(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["swap", "market_data", "v2", "--soak",
                                       "99999999999999999999h", "--config-dir",
                                       str(tmp_path)])
    assert result.exit_code == 2 and "must be at most 24h" in result.output


def test_canary_rate_has_a_range(confdir: Path) -> None:
    path = confdir / "signal.yaml"
    replace(path, "rate: 500", f"rate: {int(MAX_CANARY_RATE) * 10}")
    line = only_line(check(confdir), f"{path}: canary.rate:")
    assert f"must be at most {MAX_CANARY_RATE:g}" in line


def test_too_many_releases_and_command_words(confdir: Path) -> None:
    path = confdir / "signal.yaml"
    releases = "".join(f"  r{n}: {{command: [/bin/true], handoff: true}}\n"
                       for n in range(MAX_RELEASES + 1))
    words = ", ".join(["x"] * (MAX_COMMAND_WORDS + 1))
    path.write_text(f"socket: /tmp/swt-safety.sock\ndomain: signal\nprofile: torq\n"
                    f"releases:\n{releases}active: r0\n")
    assert f"at most {MAX_RELEASES}" in only_line(check(confdir), f"{path}: releases:")
    path.write_text(f"socket: /tmp/swt-safety.sock\ndomain: signal\nprofile: torq\n"
                    f"releases:\n  v1: {{command: [{words}], handoff: true}}\nactive: v1\n")
    assert f"at most {MAX_COMMAND_WORDS}" in only_line(check(confdir), f"{path}: releases")


# ----- state and log dirs -------------------------------------------------------------


def test_state_dir_that_is_a_file_is_refused(confdir: Path) -> None:
    daemon = confdir / "swapctld.yaml"
    state = next(line for line in daemon.read_text().splitlines()
                 if line.startswith("state_dir:"))
    replace(daemon, state, "state_dir: /etc/passwd")
    line = only_line(check(confdir), f"{daemon}: state_dir:")
    assert "/etc/passwd is not a directory (a regular file)" in line and "(line " in line


def test_dir_under_a_file_cannot_be_created(confdir: Path) -> None:
    daemon = confdir / "swapctld.yaml"
    log = next(line for line in daemon.read_text().splitlines() if line.startswith("log_dir:"))
    replace(daemon, log, "log_dir: /etc/passwd/logs")
    line = only_line(check(confdir), f"{daemon}: log_dir:")
    assert "cannot be created: /etc/passwd is not a directory" in line


def test_world_writable_and_linked_dirs_are_refused(confdir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "state")
    daemon = confdir / "swapctld.yaml"
    lines = daemon.read_text().splitlines()
    state = next(line for line in lines if line.startswith("state_dir:"))
    log = next(line for line in lines if line.startswith("log_dir:"))
    replace(daemon, state, f"state_dir: {link}")
    replace(daemon, log, f"log_dir: {shared}")
    problems = check(confdir)
    assert "is a symbolic link" in only_line(problems, f"{daemon}: state_dir:")
    assert "writable by its group or by everyone" in only_line(problems, f"{daemon}: log_dir:")


def test_check_only_checks_it_creates_nothing(confdir: Path, tmp_path: Path) -> None:
    """A missing state dir under a directory is fine (swapctld creates it at start), and
    `config check` leaves it missing."""
    daemon = confdir / "swapctld.yaml"
    state = next(line for line in daemon.read_text().splitlines()
                 if line.startswith("state_dir:"))
    replace(daemon, state, f"state_dir: {tmp_path / 'new' / 'state'}")
    result = check_config(confdir)
    assert result.ok, "\n".join(map(str, result.problems))
    assert not (tmp_path / "new").exists()
