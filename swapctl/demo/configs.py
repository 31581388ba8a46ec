"""An embedded configuration for the demo and the tests: the three services on the
reference relay, every path under one private directory (never /tmp/torq)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

SERVICES = ("market_data", "signal", "execution")


def relay_command(domain: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "swapctl.relay", "--log-level", "warning", "--domain", domain,
            "--profile", "alphapulse", *extra]


def write(root: Path, services: tuple[str, ...] = SERVICES, *, soak: str = "2s",
          canary_rate: float = 2000, metrics: str | None = None,
          extra_releases: dict[str, list[str]] | None = None,
          service_overrides: dict[str, Any] | None = None) -> Path:
    """Write swapctld.yaml and one SERVICE.yaml per service under ROOT/configs; returns
    that directory. State in ROOT/state, logs in ROOT/logs, sockets in ROOT/run and
    ROOT/sockets. `extra_releases`: more releases (name -> extra relay arguments)."""
    configs = root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    daemon = {
        "state_dir": str(root / "state"), "log_dir": str(root / "logs"),
        "control": {"socket": str(root / "run" / "control.sock"), "mode": "0600"},
        "supervisord": {"start": "swapctl", "config": str(root / "state" / "supervisord.conf"),
                        "socket": str(root / "run" / "supervisord.sock")},
        "metrics": {"listen": metrics},
    }
    (configs / "swapctld.yaml").write_text(yaml.safe_dump(daemon, sort_keys=False))
    for name in services:
        releases: dict[str, Any] = {
            "v1": {"command": relay_command(name), "handoff": True},
            "v2": {"command": relay_command(name), "handoff": True},
        }
        for release, args in (extra_releases or {}).items():
            releases[release] = {"command": relay_command(name, *args), "handoff": True}
        service = {
            "socket": str(root / "sockets" / f"{name}.sock"), "domain": name,
            "profile": "alphapulse", "releases": releases, "active": "v1",
            "start_timeout": "10s", "soak": soak, "pause_budget": "250ms",
            "canary": {"rate": canary_rate, "consumers": ["strategy", "dashboard"]},
            **(service_overrides or {}),
        }
        (configs / f"{name}.yaml").write_text(yaml.safe_dump(service, sort_keys=False))
    return configs
