"""What the operations subcommands share: errors, the root's settings, the pid file, the server URL.

The operations commands must keep working when the deployment is broken (that is when they are
needed), so settings are read leniently here: an unreadable `config.json` falls back to the defaults
and the problem is reported by the caller, instead of stopping a backup or a rollback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psutil

from etlplus_reference.root import DeploymentRoot, default_config

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "EXIT_FAIL",
    "EXIT_OK",
    "EXIT_USAGE",
    "OpsError",
    "PidInfo",
    "RootSettings",
    "deep_merge",
    "is_server_process",
    "open_root",
    "pid_alive",
    "read_pid_file",
    "read_settings",
    "server_url",
    "stop_process",
    "utc_now",
    "utc_stamp",
]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2  # bad arguments, missing root, invalid config, port in use


class OpsError(Exception):
    """A failure meant for a person: `message` is printed as one line, `exit_code` is returned."""

    def __init__(self, message: str, exit_code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def utc_stamp(when: datetime | None = None) -> str:
    """`2026-11-29T17:04:07Z`: the timestamp format of alert lines and pid files."""
    return (when or utc_now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def open_root(path: Path) -> DeploymentRoot:
    """The deployment root at `path`, or an `OpsError` (exit 2) saying what is missing."""
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise OpsError(f"deployment root {path} does not exist (create it with `init`)", EXIT_USAGE)
    root = DeploymentRoot(path)
    if not root.config_file.is_file():
        raise OpsError(
            f"{path} is not a deployment root: {root.config_file} is missing", EXIT_USAGE
        )
    return root


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `base` with `override` merged in recursively (override wins on leaves)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class RootSettings:
    """`config.json` merged over the defaults; `error` says why the file could not be used."""

    data: dict[str, Any]
    error: str | None = None

    def get(self, dotted: str, default: Any = None) -> Any:
        """A value by dotted path (`monitoring.cpu_warning`), or `default` when absent."""
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def number(self, dotted: str, default: float) -> float:
        """A numeric setting; a missing or non-numeric value gives `default`."""
        value = self.get(dotted, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return default
        return float(value)

    def text(self, dotted: str, default: str = "") -> str:
        """A string setting; a missing or non-string value gives `default`."""
        value = self.get(dotted, default)
        return value if isinstance(value, str) else default


def read_settings(root: DeploymentRoot) -> RootSettings:
    """The root's settings, leniently: a broken file gives the defaults plus an `error`."""
    try:
        raw = json.loads(root.config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return RootSettings(default_config(), f"cannot read {root.config_file}: {exc}")
    if not isinstance(raw, dict):
        return RootSettings(default_config(), f"{root.config_file} is not a JSON object")
    return RootSettings(deep_merge(default_config(), raw))


@dataclass(frozen=True)
class PidInfo:
    """The content of run/etlplus.pid, written by `serve`."""

    pid: int
    host: str | None = None
    port: int | None = None
    argv: list[str] = field(default_factory=list)
    cwd: str | None = None
    started_at: str | None = None


def read_pid_file(path: Path) -> PidInfo | None:
    """The pid file's content, or None when it is absent or unreadable (a stale half-write)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        pid = int(raw["pid"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(raw, dict) or pid <= 0:
        return None
    host = raw.get("host")
    port = raw.get("port")
    argv = raw.get("argv")
    cwd = raw.get("cwd")
    started = raw.get("started_at")
    return PidInfo(
        pid=pid,
        host=host if isinstance(host, str) else None,
        port=port if isinstance(port, int) and not isinstance(port, bool) else None,
        argv=[str(a) for a in argv] if isinstance(argv, list) else [],
        cwd=cwd if isinstance(cwd, str) else None,
        started_at=started if isinstance(started, str) else None,
    )


def pid_alive(pid: int) -> bool:
    """True when `pid` runs; a zombie (exited, not yet reaped by its parent) counts as dead.

    The suite's EmbeddedTarget is the parent of the first server and reaps it only when it stops,
    so after a SIGTERM the old server lingers as a zombie that `kill(pid, 0)` still reports.
    """
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def is_server_process(pid: int) -> bool:
    """True when `pid` is an `etlplus_reference serve` process (guards against a reused pid)."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False
    joined = " ".join(cmdline)
    return "serve" in cmdline and ("etlplus_reference" in joined or "etlplus-reference" in joined)


def stop_process(pid: int, timeout: float = 15.0) -> bool:
    """SIGTERM `pid`, wait up to `timeout`, then SIGKILL; True when it ended gracefully."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return False


def _client_host(host: str) -> str:
    # A server bound to a wildcard address is reached on loopback.
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def server_url(root: DeploymentRoot, settings: RootSettings, override: str | None = None) -> str:
    """The server's base URL: `override`, else the pid file's host/port, else config `server.*`."""
    if override:
        return override.rstrip("/")
    info = read_pid_file(root.pid_file)
    if info is not None and info.host is not None and info.port is not None:
        return f"http://{_client_host(info.host)}:{info.port}"
    host = settings.text("server.host", "127.0.0.1")
    port = int(settings.number("server.port", 8080))
    return f"http://{_client_host(host)}:{port}"
