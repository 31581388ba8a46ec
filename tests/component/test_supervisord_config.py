"""`swapctl supervisord-config`: the file systemd's supervisord reads is exactly the one
swapctld writes when it starts supervisord itself, and --check refuses a stale one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from swapctl.cli import main
from swapctl.config import load_config
from swapctl.daemon.paths import Paths, layout_of
from swapctl.demo import configs as demo_configs
from swapctl.supervise.supervisord import Supervisord


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return demo_configs.write(tmp_path, ("market_data", "signal"))


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["supervisord-config", *args])
    return result.exit_code, result.stdout, result.stderr


def test_it_is_the_file_swapctld_writes_and_supervisord_runs(config_dir: Path) -> None:
    code, printed, _ = run("--config-dir", str(config_dir))
    assert code == 0
    config = load_config(config_dir)
    layout = layout_of(config, Paths.of(config))
    with Supervisord(layout) as sup:  # swapctld's own start (supervisord.start: swapctl)
        client = sup.start()
        assert layout.config.read_text() == printed
        names = sorted(info.name for info in client.infos(layout.programs()))
    assert names == ["market_data-blue", "market_data-green", "signal-blue", "signal-green"]
    assert f"file={config.daemon.supervisord.socket}\n" in printed
    assert "autostart=false" in printed and "swapctl.supervise.launcher" in printed


def test_check_refuses_a_missing_or_stale_file_and_write_fixes_it(config_dir: Path) -> None:
    conf = Path(yaml.safe_load((config_dir / "swapctld.yaml").read_text())
                ["supervisord"]["config"])
    code, _, said = run("--config-dir", str(config_dir), "--check")
    assert code == 1 and f"{conf}: cannot be read" in said and "--write" in said
    code, _, said = run("--config-dir", str(config_dir), "--write")
    assert code == 0 and f"wrote {conf}" in said
    assert run("--config-dir", str(config_dir), "--check") == (0, "", "")
    # a service added after the file was written: its programs are missing
    shutil.copy(config_dir / "signal.yaml", config_dir / "execution.yaml")
    text = (config_dir / "execution.yaml").read_text().replace("signal.sock", "execution.sock")
    (config_dir / "execution.yaml").write_text(text)
    code, _, said = run("--config-dir", str(config_dir), "--check")
    assert code == 1 and "it lacks execution-blue, execution-green" in said
    code, _, said = run("--config-dir", str(config_dir), "--write", "--check")
    assert code == 2 and "exclude each other" in said


def test_make_dirs_creates_what_supervisord_needs(config_dir: Path) -> None:
    config = load_config(config_dir)
    layout = layout_of(config, Paths.of(config))
    assert not layout.state_dir.exists()
    code, printed, _ = run("--config-dir", str(config_dir), "--make-dirs")
    assert code == 0 and printed
    for program in layout.programs():
        assert layout.slot_dir(program).is_dir()
    assert layout.log_dir.is_dir() and layout.socket.parent.is_dir()
    assert (layout.state_dir.stat().st_mode & 0o777) == 0o700
