"""From a service's configuration to the swap engine's own types.

The engine (`swapctl.swap`) knows nothing of files: it takes a `Release`, `SwapSettings`
and a `Canary`. These converters are the only place where configuration keys meet
engine fields, so a daemon builds a swap from a `ServiceConfig` with three calls.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from swapctl.config.errors import did_you_mean
from swapctl.config.model import ServiceConfig, Trigger
from swapctl.errors import UsageError
from swapctl.protocol.profiles import domain_byte
from swapctl.swap.canary import Canary
from swapctl.swap.executor import SwapSettings
from swapctl.swap.spawner import Release


def to_release(service: ServiceConfig, name: str | None = None) -> Release:
    """The release `name` of the service (its active release when None).

    Its `env` goes to whichever spawner runs it, below swapctl's own SWAPCTL_* variables.
    """
    name = service.active if name is None else name
    release = service.releases.get(name)
    if release is None:
        names = sorted(service.releases)
        raise UsageError(f"{service.name or 'this service'} has no release {name!r}"
                         f"{did_you_mean(name, names)}: use one of {', '.join(names)} "
                         f"(releases in {service.source or 'its configuration'})")
    compiled = str(release.compiled_socket) if release.legacy and release.compiled_socket \
        else None
    return Release(name, tuple(release.command), release.handoff,
                   tuple(sorted(release.env.items())), compiled)


def to_swap_settings(service: ServiceConfig) -> SwapSettings:
    """Deadlines, pause budget, probe and rollback triggers; the rest as the engine has it.

    Leaving pause_budget or error_counters out of rollback.auto_on means no limit on
    the pause, and no error counter watched; the report still shows both figures.
    """
    defaults = SwapSettings()
    auto = set(service.rollback.auto_on)
    deadlines = dataclasses.replace(
        defaults.deadlines, starting=service.start_timeout, probing=service.probe.timeout,
        soaking=service.soak, rolling_back=service.rollback.deadline)
    return dataclasses.replace(
        defaults, deadlines=deadlines, probe_echo=service.probe.echo,
        pause_budget_ms=(service.pause_budget * 1000 if Trigger.PAUSE_BUDGET in auto
                         else math.inf),
        error_counters=defaults.error_counters if Trigger.ERROR_COUNTERS in auto else (),
        pause_priority=service.pause_priority)


def service_domain_byte(service: ServiceConfig) -> int:
    """Header byte 4 of this service's messages (domain under its numbering profile)."""
    return domain_byte(service.domain, service.profile)


def to_canary(service: ServiceConfig, socket_path: Path | None = None) -> Canary | None:
    """The service's canary (not started), on its socket unless told another; None at rate 0."""
    if service.canary.rate <= 0:
        return None
    return Canary(socket_path or service.socket, service.canary.rate,
                  tuple(service.canary.consumers), service_domain_byte(service))
