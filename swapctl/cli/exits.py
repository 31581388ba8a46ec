"""Exit codes of every swapctl command (README.md lists them for operators)."""

EXIT_OK = 0
EXIT_FAILED = 1  # the check failed: loss, difference, failed swap
EXIT_USAGE = 2  # bad option, bad config, bad path
EXIT_RUNTIME = 3  # something could not be reached or started
