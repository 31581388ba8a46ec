"""swapctl's configuration: the model, loading with operator-worded errors, converters.

    from swapctl.config import load_config, to_release, to_swap_settings
    config = load_config()                     # ConfigError lists every mistake
    config.broken                              # service files with mistakes, set aside
    service = config.service("market_data")
    run = SwapRun(..., to_release(service, "v2"), to_swap_settings(service), ...)

The keys are documented in docs/config.md.
"""

from swapctl.config.convert import (
    service_domain_byte,
    to_canary,
    to_release,
    to_swap_settings,
)
from swapctl.config.errors import BrokenService, ConfigError, Problem, UnknownService
from swapctl.config.load import (
    DAEMON_FILE,
    CheckResult,
    Config,
    check_config,
    default_config_dir,
    load_config,
)
from swapctl.config.model import (
    CanaryConfig,
    DaemonConfig,
    ReleaseConfig,
    RollbackConfig,
    ServiceConfig,
    Trigger,
)

__all__ = [
    "DAEMON_FILE",
    "BrokenService",
    "CanaryConfig",
    "CheckResult",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "Problem",
    "ReleaseConfig",
    "RollbackConfig",
    "ServiceConfig",
    "Trigger",
    "UnknownService",
    "check_config",
    "default_config_dir",
    "load_config",
    "service_domain_byte",
    "to_canary",
    "to_release",
    "to_swap_settings",
]
