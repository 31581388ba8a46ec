"""Finding, reading and checking the configuration directory.

    DIR/swapctld.yaml       the daemon (DaemonConfig)
    DIR/SERVICE.yaml        one per relay service (ServiceConfig), named by the file

DIR is --config-dir, else $SWAPCTL_CONFIG_DIR, else ./configs when it holds a
swapctld.yaml (a checkout of the repository), else /etc/swapctl. `check_config`
collects every problem in every file (syntax, duplicate keys, each field, then the
checks across files) instead of stopping at the first.

`load_config` isolates a broken service file: a problem in SERVICE.yaml (its syntax, a
key, its socket taken by another service) leaves that one service out of
`Config.services` and puts it, with its problems, in `Config.broken`; the other services
load. swapctld serves them, `status` shows the broken one with its error, and
`Config.service` refuses it (`BrokenService`, exit 2). A file that cannot be a service
(a .yml, a name that is not usable) is carried in `broken` under its file name. Only a
problem of the whole (no directory, no service file, swapctld.yaml) raises
`ConfigError`, listing every problem in every file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from swapctl.config.dirs import dir_problem
from swapctl.config.errors import (
    BrokenService,
    ConfigError,
    Problem,
    UnknownService,
    did_you_mean,
    translate,
)
from swapctl.config.model import DaemonConfig, ServiceConfig, unknown_release
from swapctl.config.paths import daemon_problems
from swapctl.config.yamlfile import Lines, read_yaml

DAEMON_FILE = "swapctld.yaml"
ENV_DIR = "SWAPCTL_CONFIG_DIR"
REPO_DIR = Path("configs")
SYSTEM_DIR = Path("/etc/swapctl")
_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
MAX_PROBLEMS = 50  # per file; a list of 100,000 wrong items is one mistake

M = TypeVar("M", bound=BaseModel)


def default_config_dir() -> Path:
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    if (REPO_DIR / DAEMON_FILE).is_file():
        return REPO_DIR
    return SYSTEM_DIR


@dataclass(frozen=True, slots=True)
class Config:
    directory: Path
    daemon: DaemonConfig
    services: dict[str, ServiceConfig]
    # a service file with problems -> its problems (the file name when not a usable name)
    broken: dict[str, tuple[Problem, ...]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Every service: those that loaded and those whose file is broken."""
        return sorted({*self.services, *(n for n in self.broken if _SERVICE_NAME.fullmatch(n))})

    def service(self, name: str) -> ServiceConfig:
        """The service, or BrokenService (its file has problems) or UnknownService."""
        if name in self.services:
            return self.services[name]
        if name in self.broken:
            raise BrokenService(name, self.broken[name])
        names = self.names
        raise UnknownService(f"unknown service {name!r}{did_you_mean(name, names)}: "
                             f"{self.directory} has {', '.join(names) or 'none'}")


@dataclass(frozen=True, slots=True)
class CheckResult:
    directory: Path
    files: tuple[Path, ...] = ()
    problems: tuple[Problem, ...] = ()
    config: Config | None = None  # set only when there is no problem
    services: dict[str, ServiceConfig] = field(default_factory=dict)  # those that validated
    daemon: DaemonConfig | None = None  # when swapctld.yaml validated

    @property
    def ok(self) -> bool:
        return not self.problems


def load_config(directory: Path | None = None, services: Sequence[str] = ()) -> Config:
    """The configuration (or the named services), a broken service file set aside in
    `Config.broken`; ConfigError, listing every problem, when the whole is unusable."""
    result = check_config(directory, services)
    if result.config is not None:
        return result.config
    broken, whole = by_service(result)
    if whole or result.daemon is None:
        raise ConfigError(result.problems)
    good = {n: s for n, s in result.services.items() if n not in broken}
    return Config(result.directory, result.daemon, good, broken)


def by_service(result: CheckResult) -> tuple[dict[str, tuple[Problem, ...]], list[Problem]]:
    """`result`'s problems split: those of each service file (by service name, else file
    name), and those of the whole configuration (the directory, swapctld.yaml)."""
    broken: dict[str, list[Problem]] = {}
    whole = []
    for problem in result.problems:
        path = problem.file
        if path.parent != result.directory or path.name == DAEMON_FILE:
            whole.append(problem)
            continue
        usable = path.suffix == ".yaml" and _SERVICE_NAME.fullmatch(path.stem)
        broken.setdefault(path.stem if usable else path.name, []).append(problem)
    return {name: tuple(found) for name, found in broken.items()}, whole


def check_config(directory: Path | None = None, services: Sequence[str] = ()) -> CheckResult:
    directory = directory if directory is not None else default_config_dir()
    if not directory.is_dir():
        return CheckResult(directory, problems=(Problem(
            directory, "", f"no such directory: give --config-dir DIR or set {ENV_DIR} "
                           f"(configs/ in the repository, {SYSTEM_DIR} in production)"),))
    problems: list[Problem] = []
    paths = _service_files(directory, services, problems)
    daemon_path = directory / DAEMON_FILE
    daemon = None
    if daemon_path.is_file():
        daemon, lines = _validate(daemon_path, DaemonConfig, {}, problems)
        if daemon is not None:
            problems += _dir_problems(daemon_path, daemon, lines)
    else:
        problems.append(Problem(daemon_path, "", "missing: the daemon's settings (state_dir, "
                                                 "log_dir, control, supervisord) go here; "
                                                 "see docs/config.md"))
    loaded: dict[str, ServiceConfig] = {}
    for name, path in paths.items():
        model, _ = _validate(path, ServiceConfig, {"service": name}, problems)
        if model is not None:
            loaded[name] = model
    problems += _across_files(directory, daemon, loaded)
    if daemon is not None:  # the sockets swapctld derives fit AF_UNIX (config/paths.py)
        problems += daemon_problems(daemon_path, daemon, loaded, lines)
    files = ((daemon_path,) if daemon_path.is_file() else ()) + tuple(paths.values())
    config = Config(directory, daemon, loaded) if daemon is not None and not problems else None
    return CheckResult(directory, files, tuple(problems), config, loaded, daemon)


def _service_files(directory: Path, wanted: Sequence[str],
                   problems: list[Problem]) -> dict[str, Path]:
    for stray in sorted(directory.glob("*.yml")):
        problems.append(Problem(stray, "", "ignored: configuration files end in .yaml; "
                                           f"rename it to {stray.stem}.yaml"))
    found = {p.stem: p for p in sorted(directory.glob("*.yaml")) if p.name != DAEMON_FILE}
    for name, path in found.items():
        if not _SERVICE_NAME.fullmatch(name):
            problems.append(Problem(path, "", f"{name!r} is not a usable service name: name "
                                              "the file with lower-case letters, digits, '_' "
                                              "and '-' (e.g. market_data.yaml)"))
    if not found:
        problems.append(Problem(directory, "", "no service files: add one SERVICE.yaml per "
                                               "relay service, e.g. market_data.yaml"))
    for name in wanted:
        if name not in found:
            problems.append(Problem(directory / f"{name}.yaml", "", f"no such service"
                                    f"{did_you_mean(name, list(found))}: {directory} has "
                                    f"{', '.join(found) or 'none'}"))
    return {n: p for n, p in found.items()
            if (not wanted or n in wanted) and _SERVICE_NAME.fullmatch(n)}


def _validate(path: Path, model: type[M], names: dict[str, str],
              problems: list[Problem]) -> tuple[M | None, Lines]:
    """The file's model (None if it is not valid: `problems` says why) and its key lines."""
    document, found = read_yaml(path)
    problems += found
    if document is None:
        return None, {}
    data = {} if document.data is None else document.data
    try:
        return model.model_validate(data, context={**names, "source": path}), document.lines
    except ValidationError as exc:
        found = translate(exc, model, path, document.lines, names)
        if model is ServiceConfig:
            found += _active_despite(exc, data, path, document.lines)
        problems += found[:MAX_PROBLEMS]
        if len(found) > MAX_PROBLEMS:
            problems.append(Problem(path, "", f"and {len(found) - MAX_PROBLEMS} more problems "
                                              "like these: fix those first"))
        return None, document.lines


def _dir_problems(path: Path, daemon: DaemonConfig, lines: Lines) -> list[Problem]:
    """state_dir and log_dir: directories swapctld could own (checked, never created)."""
    problems = []
    for key, directory in (("state_dir", daemon.state_dir), ("log_dir", daemon.log_dir)):
        problem = dir_problem(directory)
        if problem is not None:
            problems.append(Problem(path, key, problem, lines.get((key,))))
    return problems


def _active_despite(exc: ValidationError, data: object, path: Path,
                    lines: dict[tuple[str, ...], int]) -> list[Problem]:
    """`active` checked against the release names even though a release was invalid."""
    if any(e["loc"][:1] == ("active",) for e in exc.errors()) or not isinstance(data, dict):
        return []
    active, releases = data.get("active"), data.get("releases")
    if not isinstance(active, str) or not isinstance(releases, dict):
        return []
    problem = unknown_release(active, [str(name) for name in releases])
    return [Problem(path, "active", problem, lines.get(("active",)))] if problem else []


def _across_files(directory: Path, daemon: DaemonConfig | None,
                  services: dict[str, ServiceConfig]) -> list[Problem]:
    """Two services on one socket, or a service on the daemon's own sockets."""
    problems = []
    taken: dict[Path, str] = {}
    if daemon is not None:
        taken[daemon.control.socket] = f"{DAEMON_FILE}: control.socket"
        taken.setdefault(daemon.supervisord.socket, f"{DAEMON_FILE}: supervisord.socket")
        if daemon.supervisord.socket == daemon.control.socket:
            problems.append(Problem(directory / DAEMON_FILE, "supervisord.socket",
                                    "is the same path as control.socket: give each its own"))
    for name, service in services.items():
        other = taken.get(service.socket)
        if other is not None:
            problems.append(Problem(directory / f"{name}.yaml", "socket",
                                    f"{service.socket} is already used by {other}: every "
                                    "service needs its own socket path"))
        taken.setdefault(service.socket, f"{name}.yaml: socket")
    return problems
