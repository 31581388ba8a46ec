"""swapctld: the long-running control plane (control API, recovery, metrics, sd_notify)."""
