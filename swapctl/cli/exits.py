"""Exit codes of every swapctl command (README.md lists them for operators)."""

EXIT_OK = 0
EXIT_FAILED = 1  # the check failed: loss, difference; a swap failed or was rolled back
EXIT_USAGE = 2  # bad option, bad config, bad path
EXIT_UNHEALTHY = 3  # a service is unhealthy, or a relay or socket could not be reached
EXIT_RUNTIME = EXIT_UNHEALTHY
EXIT_UNKNOWN_SERVICE = 4  # no such service in the configuration
EXIT_TIMEOUT = 5  # --timeout passed before the swap ended (it goes on in swapctld)
EXIT_ROLLBACK_FAILED = 6  # a rollback itself failed: operator action needed
EXIT_UNREACHABLE = 7  # swapctld does not answer on its control socket
