"""A small XML-RPC client for supervisord over its Unix socket, every call bounded in time.

Only per-process calls: supervisord's group calls (`stopProcessGroup`, `stopAllProcesses`)
cost about a second each, a single call about 0.6 ms. Several calls in one round trip
go through `system.multicall` directly (the stdlib `MultiCall` does not work with
supervisord). Faults and socket errors become `SupervisorError`s that say which call on
which socket failed; `fault` keeps supervisord's fault name (e.g. "NOT_RUNNING").
"""

from __future__ import annotations

import http.client
import socket
import threading
import xmlrpc.client
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swapctl.errors import SwapctlError

RUNNING_STATES = frozenset({"STARTING", "RUNNING", "BACKOFF", "STOPPING"})
STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL"})


class SupervisorError(SwapctlError):
    """supervisord refused a call, failed it, or could not be reached."""

    def __init__(self, message: str, fault: str = "") -> None:
        super().__init__(message)
        self.fault = fault


class SupervisorUnreachable(SupervisorError):
    """Nothing answers on supervisord's socket (not running, or not ours)."""


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    name: str
    state: str        # supervisord's statename: STOPPED, STARTING, RUNNING, EXITED, ...
    pid: int          # 0 when not running
    exitstatus: int   # of the last exit; -1 when killed by a signal
    spawnerr: str
    logfile: str
    description: str

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    @classmethod
    def from_rpc(cls, info: dict[str, Any]) -> ProcessInfo:
        return cls(str(info["name"]), str(info["statename"]), int(info["pid"]),
                   int(info["exitstatus"]), str(info["spawnerr"]),
                   str(info["stdout_logfile"]), str(info["description"]))


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        cached_host, conn = self._connection
        if conn is None or cached_host != host:
            conn = _UnixConnection(self._path, self._timeout)
            self._connection = host, conn
        return conn


class SupervisorClient:
    """One persistent connection to supervisord's socket; safe to share between threads."""

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self._transport = _UnixTransport(str(socket_path), timeout)
        self._proxy = xmlrpc.client.ServerProxy("http://localhost/RPC2",
                                                transport=self._transport, allow_none=False)
        self._lock = threading.Lock()

    def call(self, method: str, *args: Any) -> Any:
        where = f"supervisord at {self.socket_path}: {method}{args!r}"
        with self._lock:
            try:
                return getattr(self._proxy, method)(*args)
            except xmlrpc.client.Fault as exc:
                name = exc.faultString.split(":", 1)[0]
                raise SupervisorError(f"{where}: {exc.faultString}", name) from None
            except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as exc:
                self._transport.close()
                raise SupervisorUnreachable(
                    f"{where}: {exc or type(exc).__name__}: is supervisord running on this "
                    f"socket? (its log is next to the socket; `supervisorctl -s "
                    f"unix://{self.socket_path} status` checks)") from None

    def multicall(self, calls: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Several calls in one round trip; each result is a value or a SupervisorError.

        (supervisord returns plain values, not the single-item arrays of the multicall spec.)
        """
        results = self.call("system.multicall",
                            [{"methodName": m, "params": list(p)} for m, p in calls])
        out: list[Any] = []
        for (method, params), result in zip(calls, results, strict=True):
            if isinstance(result, dict) and "faultString" in result:
                text = str(result["faultString"])
                out.append(SupervisorError(
                    f"supervisord at {self.socket_path}: {method}{tuple(params)!r}: {text}",
                    text.split(":", 1)[0]))
            else:
                out.append(result)
        return out

    def state(self) -> str:
        return str(self.call("supervisor.getState")["statename"])

    def pid(self) -> int:
        return int(self.call("supervisor.getPID"))

    def start(self, name: str) -> None:
        """startProcess without waiting: readiness is swapctl's probe, not RUNNING."""
        self.call("supervisor.startProcess", name, False)

    def stop(self, name: str) -> None:
        """stopProcess without waiting (poll `info` for the outcome)."""
        self.call("supervisor.stopProcess", name, False)

    def info(self, name: str) -> ProcessInfo:
        return ProcessInfo.from_rpc(self.call("supervisor.getProcessInfo", name))

    def infos(self, names: Sequence[str]) -> list[ProcessInfo]:
        """Several programs' info in one round trip."""
        results = self.multicall([("supervisor.getProcessInfo", (n,)) for n in names])
        for result in results:
            if isinstance(result, SupervisorError):
                raise result
        return [ProcessInfo.from_rpc(r) for r in results]

    def tail(self, name: str, length: int) -> tuple[str, int, bool]:
        """The last `length` bytes of a program's log: (text, log size, overflowed)."""
        text, offset, overflow = self.call("supervisor.tailProcessStdoutLog", name, 0, length)
        return str(text), int(offset), bool(overflow)

    def read(self, name: str, offset: int, length: int) -> str:
        """`length` bytes of a program's log from `offset`."""
        return str(self.call("supervisor.readProcessStdoutLog", name, offset, length))

    def main_log(self, length: int) -> str:
        """The end of supervisord's own log (starts, exits and the signals that ended them)."""
        return str(self.call("supervisor.readLog", -length, 0))

    def shutdown(self) -> None:
        self.call("supervisor.shutdown")

    def close(self) -> None:
        with self._lock:
            self._transport.close()
