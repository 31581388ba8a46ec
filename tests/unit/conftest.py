"""Fixtures the unit tests of the configuration share: a private copy of the shipped
configs/ and an edit that fails loudly when the shipped text it expects has changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    target = tmp_path / "configs"
    shutil.copytree(CONFIGS, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}: the shipped config changed, update the test"
    path.write_text(text.replace(old, new, 1))
