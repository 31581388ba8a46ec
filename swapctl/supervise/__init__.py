"""supervisord owns the relays: a blue and a green program per service, each a slot launcher.

- `layout`: where everything lives in the state dir, and the generated supervisord.conf.
- `supervisord`: start our private supervisord and stop it (shutdown, then its process group).
- `client`: per-process XML-RPC calls over supervisord's Unix socket, each bounded in time.
- `slotfile` + `launcher`: the release a slot runs, written by swapctl and exec'd by the slot.
- `spawner`: `SupervisorSpawner`, the swap engine's `Spawner` backed by supervisord.

Nothing is imported here, so `python -m swapctl.supervise.launcher` stays cheap to start.
See docs/supervise.md.
"""
