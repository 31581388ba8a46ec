"""The pure core must stay pure: no sockets, processes, threads or event loops."""

from __future__ import annotations

import ast
from pathlib import Path

import swapctl

PURE_PACKAGES = ["protocol", "diff"]
PURE_MODULES = ["probes/audit.py", "swap/machine.py", "handoff/manifest.py",
                "handoff/messages.py"]
FORBIDDEN = {"socket", "subprocess", "asyncio", "selectors", "select", "threading", "os",
             "multiprocessing", "signal"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _pure_files() -> list[Path]:
    root = Path(swapctl.__file__).parent
    files = [p for pkg in PURE_PACKAGES for p in (root / pkg).rglob("*.py")]
    files += [root / m for m in PURE_MODULES if (root / m).exists()]
    return files


def test_pure_modules_do_no_io() -> None:
    files = _pure_files()
    assert files, "no pure modules found: the layering check would pass vacuously"
    for path in files:
        bad = _imports(path) & FORBIDDEN
        assert not bad, f"{path} imports {sorted(bad)}: keep I/O out of the pure core"
