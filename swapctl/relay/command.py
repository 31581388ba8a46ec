"""The click commands `swapctl relay` (run the reference relay) and `relay-stats`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from swapctl import logs
from swapctl.errors import SwapctlError, UsageError
from swapctl.protocol.profiles import Domain, Profile
from swapctl.relay import Faults, Forwarding, RelayConfig, run
from swapctl.relay.config import DEFAULT_MAX_BACKLOG, DEFAULT_MAX_PARTIAL_TOTAL, SlowConsumer
from swapctl.relay.stats import read_stats

_domains = click.Choice([d.value for d in Domain])
_profiles = click.Choice([p.value for p in Profile])


@click.command("relay")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), required=True,
              envvar="SWAPCTL_SOCKET", help="Unix socket path to serve [env SWAPCTL_SOCKET].")
@click.option("--domain", type=_domains, default="market_data", show_default=True)
@click.option("--profile", type=_profiles, default="alphapulse", show_default=True,
              help="Numbering of header byte 4: alphapulse (1,2,3) or torq (0,1,2).")
@click.option("--framing", type=click.Choice(["frame", "chunk"]), default="frame",
              show_default=True,
              help="frame: forward whole frames only. chunk: forward each read as one unit, "
                   "checking only its start (like the generic Rust relay).")
@click.option("--no-validate", is_flag=True,
              help="Forward every read as is, checking nothing (like the old market-data relay).")
@click.option("--sink", is_flag=True,
              help="Read and count, forward nothing (like the old signal/execution relays).")
@click.option("--no-echo", is_flag=True, help="Do not send a publisher its own messages.")
@click.option("--max-backlog", type=click.IntRange(min=65536), default=DEFAULT_MAX_BACKLOG,
              show_default=True, help="Bytes queued for one client before --on-slow-consumer "
                                      "applies.")
@click.option("--on-slow-consumer", type=click.Choice([p.value for p in SlowConsumer]),
              default=SlowConsumer.DROP_OLDEST.value, show_default=True,
              help="A consumer whose backlog passes --max-backlog: drop-oldest sheds its "
                   "oldest whole frames (counted: lag_drops_frames; the real relays' way); "
                   "disconnect cuts it (slow_disconnects); block stops reading the "
                   "publishers until it is back under half the bound (lossless; "
                   "block_episodes, blocked_s). A client that has sent anything is a "
                   "publisher: never waited for nor cut, its unread echo past the bound is "
                   "shed (echo_shed_frames), never what it sends to others.")
@click.option("--max-partial-total", type=click.IntRange(min=1 << 20),
              default=DEFAULT_MAX_PARTIAL_TOTAL, show_default=True,
              help="Bytes of partial frames held for all clients together; the client whose "
                   "read takes the total past it is disconnected (partial_refused).")
@click.option("--stats", "stats_path", type=click.Path(path_type=Path),
              help="Serve counters as one JSON line to whoever connects to this socket.")
@click.option("--listen-fd", type=int, help="Serve an inherited listening socket instead.")
@click.option("--handoff", "handoff_path", type=click.Path(path_type=Path),
              envvar="SWAPCTL_HANDOFF",
              help="Speak the handoff protocol: get the listener and clients from the "
                   "orchestrator at this control socket, and hand them on when asked "
                   "[env SWAPCTL_HANDOFF].")
@click.option("--token", default="", envvar="SWAPCTL_TOKEN",
              help="Name this relay gives the orchestrator [env SWAPCTL_TOKEN].")
@click.option("--release-name", default="", envvar="SWAPCTL_RELEASE",
              help="Release name reported to the orchestrator [env SWAPCTL_RELEASE].")
@click.option("--drop-every", type=click.IntRange(min=0), default=0, help="Fault: drop every Nth.")
@click.option("--corrupt-every", type=click.IntRange(min=0), default=0,
              help="Fault: flip the last byte of every Nth.")
@click.option("--stall-after", type=click.IntRange(min=0), help="Fault: stop reading after N.")
@click.option("--crash-after", type=click.IntRange(min=0), help="Fault: exit abruptly after N.")
@click.option("--crash-after-seconds", type=click.FloatRange(min=0),
              help="Fault: exit abruptly after T seconds.")
@click.option("--slow-start", type=click.FloatRange(min=0), default=0.0,
              help="Fault: wait T seconds before listening.")
@click.option("--never-ready", is_flag=True,
              help="Fault: never listen (with --handoff: never say ready).")
@click.option("--crash-at", type=click.Choice(["ready", "probe", "adopt", "resume"]),
              help="Fault (handoff): exit abruptly on reaching this phase.")
@click.option("--no-reply-at", type=click.Choice(["adopt"]),
              help="Fault (handoff): do what this request asks (an adopt that asks to "
                   "resume starts reading) but never answer it, as if the reply were lost.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def relay_command(**opts: Any) -> None:
    """Run the reference relay (Protocol V2 broadcast with echo, correct framing).

    Units counted by the fault options are frames, or reads in chunk/raw modes.
    """
    config = _config(opts)
    logs.setup(opts["log_level"])
    try:
        run(config)
    except UsageError as exc:
        click.echo(f"swapctl relay: error: {exc}", err=True)
        sys.exit(2)
    except SwapctlError as exc:
        click.echo(f"swapctl relay: {exc}", err=True)
        sys.exit(3)


def _config(o: dict[str, Any]) -> RelayConfig:
    if sum((o["no_validate"], o["sink"], o["framing"] == "chunk")) > 1:
        raise click.UsageError("choose one of --framing chunk, --no-validate, --sink")
    if o["no_reply_at"] and o["handoff_path"] is None:
        raise click.UsageError("--no-reply-at is a handoff fault: it needs --handoff "
                               "(or SWAPCTL_HANDOFF)")
    forwarding = Forwarding(o["framing"])
    if o["no_validate"]:
        forwarding = Forwarding.RAW
    elif o["sink"]:
        forwarding = Forwarding.SINK
    faults = Faults(
        drop_every=o["drop_every"],
        corrupt_every=o["corrupt_every"],
        stall_after=o["stall_after"],
        crash_after=o["crash_after"],
        crash_after_seconds=o["crash_after_seconds"],
        slow_start=o["slow_start"],
        never_ready=o["never_ready"],
        crash_at=o["crash_at"],
        no_reply_at=o["no_reply_at"],
    )
    return RelayConfig(
        o["socket_path"],
        Domain(o["domain"]),
        Profile(o["profile"]),
        forwarding,
        echo=not o["no_echo"],
        max_backlog=o["max_backlog"],
        on_slow_consumer=SlowConsumer(o["on_slow_consumer"]),
        max_partial_total=o["max_partial_total"],
        stats_socket=o["stats_path"],
        listen_fd=o["listen_fd"],
        handoff=o["handoff_path"],
        token=o["token"],
        release=o["release_name"],
        faults=faults,
    )


@click.command("relay-stats")
@click.argument("stats_socket", type=click.Path(path_type=Path))
def relay_stats_command(stats_socket: Path) -> None:
    """Print a running relay's counters (JSON) from its --stats socket."""
    click.echo(json.dumps(read_stats(stats_socket), indent=2))
