"""A local configuration: the three services on the reference relay, every path under one
private directory ROOT (never /tmp/torq, /opt or /run). `swapctl init DIR`, `swapctl demo`
and the tests write it with `write`.

    ROOT/configs/swapctld.yaml, SERVICE.yaml   what `--config-dir ROOT/configs` reads
    ROOT/state/                                journal, reports, supervisord.conf, drills
    ROOT/logs/                                 swapctld's and the relays' logs
    ROOT/run/control.sock, supervisord.sock    control API; supervisord (started by swapctl)
    ROOT/run/SERVICE.handoff.sock              derived by swapctld (swapctl/daemon/paths.py)
    ROOT/sockets/SERVICE.sock                  each service's public socket

Each service has releases v1 and v2, both the reference relay with the handoff protocol
(or, with `rust_relay`, both the Rust example relay of sdk/rust), v1 active: enough for a
swap, a rollback and the standard drill.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from swapctl.protocol.profiles import Profile, domain_byte, parse_domain

SERVICES = ("market_data", "signal", "execution")
DAEMON_FILE = "swapctld.yaml"
MAX_UNIX_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


def relay_command(domain: str, *extra: str) -> list[str]:
    # -P: the current directory (say, the folder holding a clone named swapctl) never
    # shadows the package in the relay
    return [sys.executable, "-P", "-m", "swapctl.relay", "--log-level", "warning",
            "--domain", domain, "--profile", "alphapulse", *extra]


def rust_relay_command(binary: Path, domain: str) -> list[str]:
    """The Rust example relay (handoff mode) forwarding `domain`'s header byte."""
    byte = domain_byte(parse_domain(domain), Profile.ALPHAPULSE)
    return [str(binary), "--domain-byte", str(byte)]


def write(root: Path, services: tuple[str, ...] = SERVICES, *, soak: str = "2s",
          canary_rate: float = 2000, metrics: str | None = None,
          extra_releases: dict[str, list[str]] | None = None,
          service_overrides: dict[str, Any] | None = None,
          rust_relay: Path | None = None) -> Path:
    """Write swapctld.yaml and one SERVICE.yaml per service under ROOT/configs; returns
    that directory (the `--config-dir` to give every command). Overwrites the files it
    writes; `existing` says whether ROOT already holds a configuration. `soak`: each
    swap's soak window; `metrics`: HOST:PORT of swapctld's metrics, or none;
    `extra_releases`: more releases (name -> extra arguments of the reference relay);
    `rust_relay`: v1 and v2 are this Rust example relay binary, not the reference relay."""
    configs = root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    daemon = {
        "state_dir": str(root / "state"), "log_dir": str(root / "logs"),
        "control": {"socket": str(root / "run" / "control.sock"), "mode": "0600"},
        "supervisord": {"start": "swapctl", "config": str(root / "state" / "supervisord.conf"),
                        "socket": str(root / "run" / "supervisord.sock")},
        "metrics": {"listen": metrics},
    }
    (configs / DAEMON_FILE).write_text(yaml.safe_dump(daemon, sort_keys=False))
    for name in services:
        command = relay_command(name) if rust_relay is None else rust_relay_command(
            rust_relay, name)
        releases: dict[str, Any] = {
            "v1": {"command": command, "handoff": True},
            "v2": {"command": command, "handoff": True},
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


def socket_paths(root: Path, services: tuple[str, ...] = SERVICES) -> list[Path]:
    """Every AF_UNIX socket `write(root)` names or swapctld derives from it."""
    run = root / "run"
    return [run / "control.sock", run / "supervisord.sock",
            *(root / "sockets" / f"{name}.sock" for name in services),
            *(run / f"{name}.handoff.sock" for name in services)]


def too_long(root: Path, services: tuple[str, ...] = SERVICES) -> list[Path]:
    """The socket paths under ROOT longer than AF_UNIX allows (107 bytes)."""
    return [p for p in socket_paths(root, services) if len(bytes(p)) > MAX_UNIX_PATH]


def existing(root: Path) -> list[Path]:
    """The configuration files already under ROOT/configs (none: ROOT is free)."""
    configs = root / "configs"
    return sorted(configs.glob("*.yaml")) if configs.is_dir() else []


def program() -> str:
    """How the operator runs this swapctl: `swapctl` when that is what PATH finds, else
    the full path of the one next to this interpreter (a venv not activated)."""
    here = Path(sys.executable).parent / "swapctl"
    found = shutil.which("swapctl")
    if found and here.is_file() and Path(found).resolve() == here.resolve():
        return "swapctl"
    return str(here) if here.is_file() else f"{sys.executable} -m swapctl"


def next_commands(config_dir: Path, service: str = "market_data",
                  up: bool = True) -> list[tuple[str, str]]:
    """(command, what it does) to drive the stack configured in CONFIG_DIR."""
    run, at = program(), f"--config-dir {config_dir}"
    steps = [(f"{run} up {at}", "start supervisord, swapctld and v1 of every service")] \
        if up else []
    return [
        *steps,
        (f"{run} status {at}", "each service's release, pid and health"),
        (f"{run} swap {service} --to v2 {at}", f"hot-swap {service} to v2, with its report"),
        (f"{run} rollback {service} {at}", "swap back to the release the last swap replaced"),
        (f"{run} drill {service} {at}", "the standard rollback drill, with its evidence"),
        (f"{run} down {at}", "stop every relay, supervisord and swapctld"),
    ]
