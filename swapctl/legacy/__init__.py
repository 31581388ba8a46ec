"""Swapping relays that do not speak the handoff protocol (the legacy Rust relays).

layout:   slots in private mount namespaces and the public symlink swapctl owns
sockets:  a process's listener and accepted connections, duplicated with pidfd_getfd
takeover: freeze a legacy relay and hand its sockets to a handoff-capable candidate
restart:  today's practice (stop, start), validated first and measured
bridge:   path flip plus a frame-exact bridge between the two relays (bridge.py)
report:   the report shape every strategy fills
run:      `run_strategy(...)`, the library entry point
See docs/legacy.md.
"""
