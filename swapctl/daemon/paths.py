"""Where swapctld keeps its files, derived from `swapctld.yaml` once.

    STATE/journal.jsonl            every swap transition of every service (fsync'd)
    STATE/reports/SWAP_ID.json     each finished swap's report
    STATE/services/SERVICE.json    the release that serves the service now (last good)
    STATE/supervisord/...          the relays' owner: config, logs, slot files (layout)
    LOG/swapctld.log               the daemon's own log (`swapctl up` starts it there)
    RUN/control.sock               the control API (CLI), mode from control.mode
    RUN/SERVICE.handoff.sock       the handoff control socket the service's relays join
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swapctl.config.load import Config
from swapctl.fsutil import ensure_private_dir
from swapctl.supervise.layout import Layout


@dataclass(frozen=True, slots=True)
class Paths:
    state: Path
    logs: Path
    control: Path

    @classmethod
    def of(cls, config: Config) -> Paths:
        d = config.daemon
        return cls(Path(d.state_dir), Path(d.log_dir), Path(d.control.socket))

    @property
    def journal(self) -> Path:
        return self.state / "journal.jsonl"

    @property
    def reports(self) -> Path:
        return self.state / "reports"

    def report(self, swap_id: str) -> Path:
        return self.reports / f"{swap_id}.json"

    def service_state(self, service: str) -> Path:
        return self.state / "services" / f"{service}.json"

    def handoff(self, service: str) -> Path:
        return self.control.parent / f"{service}.handoff.sock"

    @property
    def daemon_log(self) -> Path:
        return self.logs / "swapctld.log"

    def make(self) -> None:
        """Create the directories, or refuse (UsageError) state and run directories that
        are links, not ours or writable by others (swapctl.fsutil)."""
        for path in (self.state, self.reports, self.state / "services", self.control.parent):
            ensure_private_dir(path)
        self.logs.mkdir(mode=0o700, parents=True, exist_ok=True)


def layout_of(config: Config, paths: Paths) -> Layout:
    sup = config.daemon.supervisord
    # a broken service keeps its programs: its relays (if any run) stay supervisord's
    return Layout(paths.state / "supervisord", tuple(config.names),
                  socket_path=Path(sup.socket), config_path=Path(sup.config))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (temp file, fsync, rename): a crash leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as out:
        json.dump(data, out, indent=2, default=str)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
