"""The deployment root: its layout and the default files that `etlplus-reference init` writes.

Layout (contract section 11)::

    ROOT/
      bin/etlplus                 the "server binary": a shim that execs `etlplus-reference serve`
      config/config.json          server configuration (see default_config)
      config/feature_flags.json   feature flags, all off
      data/etlplus.db             SQLite database (created by the server)
      logs/etlplus.log            server log (rotated by size)
      backups/                    rollback backups, one folder each
      deployment/rollback.sh      calls `etlplus-reference rollback ... --root ROOT`
      monitoring/monitor.sh       calls `etlplus-reference monitor ... --root ROOT`
      run/etlplus.pid             JSON: pid, host, port, argv, cwd, started_at of the running server
      run/monitor.pid             JSON: pid of a running `monitor start` loop
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COMPONENT_FLAGS",
    "FLAG_NAMES",
    "DeploymentRoot",
    "default_config",
    "default_flags",
    "init_root",
    "write_json_atomic",
]

#: rollback component name -> feature flag name
COMPONENT_FLAGS: dict[str, str] = {
    "logger": "new_logger_system",
    "exception": "new_exception_system",
    "request_handler": "new_request_handler",
    "websocket": "new_websocket_manager",
    "concurrency": "new_concurrency_patterns",
    "types": "new_type_system",
}
FLAG_NAMES: tuple[str, ...] = tuple(COMPONENT_FLAGS.values())

_DEFAULT_CONFIG: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "port": 8080, "max_body_bytes": 1048576},
    "database": {"path": "data/etlplus.db", "pool_size": 4, "timeout_s": 5.0},
    "logging": {
        "level": "INFO",
        "format": "TEXT",
        "log_file": "logs/etlplus.log",
        "max_file_size": 10485760,
        "max_backup_files": 5,
    },
    "websocket": {
        "max_connections": 1000,
        "max_queue": 1000,
        "ping_interval_s": 30.0,
        "ping_misses": 3,
    },
    # Upstream defaults, requests per one-minute window per client and route prefix.
    "rate_limits": {
        "enabled": True,
        "window_s": 60,
        "trusted_proxies": ["127.0.0.1", "::1"],
        "rules": {
            "/api/auth/login": 5,
            "/api/auth/logout": 10,
            "/api/auth/profile": 30,
            "/api/logs": 60,
            "/api/jobs": 30,
            "/api/monitor": 120,
            "/api/health": 300,
        },
    },
    "auth": {
        "enabled": False,
        "token_ttl_s": 3600,
        # username -> {"password": passwords.hash_password(...), "roles": [...]}; `init` adds
        # an admin user.
        "users": {},
    },
    # Jobs running at once; the others wait as "pending" (server-side addition, defaulted).
    "jobs": {"max_concurrent": 8},
    "config": {"reload_interval_s": 5.0},
    "feature_flags": {"reload_interval_s": 5.0},
    "monitoring": {
        "cpu_warning": 80.0,
        "cpu_critical": 95.0,
        "memory_warning": 85.0,
        "memory_critical": 95.0,
        "health_timeout_s": 5.0,
        "interval_s": 60.0,
        "alert_email": "",
        "smtp_host": "",  # "host[:port]": alert emails are sent only when this is set
        "slack_webhook": "",
        "retention_days": 30.0,  # alerts_*.log and monitoring_report_*.txt older than this go
    },
}


def default_config() -> dict[str, Any]:
    """A fresh copy of the default `config/config.json` content."""
    return copy.deepcopy(_DEFAULT_CONFIG)


def default_flags() -> dict[str, Any]:
    """The safe state of `config/feature_flags.json`: every flag off, every rollout at 0."""
    return {
        "flags": dict.fromkeys(FLAG_NAMES, False),
        "rollout_percentages": dict.fromkeys(FLAG_NAMES, 0),
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON (sorted keys, indent 2) via a temp file and a rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class DeploymentRoot:
    """Paths of one deployment folder."""

    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / "config" / "config.json"

    @property
    def flags_file(self) -> Path:
        return self.path / "config" / "feature_flags.json"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def backups_dir(self) -> Path:
        return self.path / "backups"

    @property
    def binary(self) -> Path:
        return self.path / "bin" / "etlplus"

    @property
    def rollback_script(self) -> Path:
        return self.path / "deployment" / "rollback.sh"

    @property
    def monitor_script(self) -> Path:
        return self.path / "monitoring" / "monitor.sh"

    @property
    def run_dir(self) -> Path:
        return self.path / "run"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "etlplus.pid"

    @property
    def monitor_pid_file(self) -> Path:
        return self.run_dir / "monitor.pid"

    @property
    def monitor_state_file(self) -> Path:
        """Where `monitor check` remembers log offsets and counters between passes."""
        return self.logs_dir / ".monitor_state.json"

    @property
    def admin_password_file(self) -> Path:
        """The generated initial admin password (mode 0600), written by `init`."""
        return self.path / "config" / "initial_admin_password"

    @property
    def server_out(self) -> Path:
        """stdout/stderr of a server started by `rollback full` (the same file the suite uses)."""
        return self.logs_dir / "server.out"

    def resolve(self, relative: str) -> Path:
        """A path from the config (relative to the root unless absolute)."""
        p = Path(relative)
        return p if p.is_absolute() else self.path / p


def _script(subcommand: str, root: Path) -> str:
    exe = shlex.quote(sys.executable)
    return (
        "#!/bin/sh\n"
        f"# ETL Plus {subcommand} script (reference target).\n"
        f"# See `etlplus-reference {subcommand} -h`; the exit code is that command's.\n"
        f'exec {exe} -m etlplus_reference {subcommand} "$@" --root {shlex.quote(str(root))}\n'
    )


def init_root(path: Path, *, port: int | None = None, force: bool = False) -> DeploymentRoot:
    """Create a deployment root with default files. Refuses a non-empty folder unless `force`."""
    path = path.resolve()
    if path.exists() and any(path.iterdir()) and not force:
        raise FileExistsError(f"{path} is not empty (use --force to overwrite the default files)")
    root = DeploymentRoot(path)
    for sub in ("config", "logs", "backups", "deployment", "monitoring", "bin", "data", "run"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    cfg = default_config()
    if port is not None:
        cfg["server"]["port"] = port
    write_json_atomic(root.config_file, cfg)
    write_json_atomic(root.flags_file, default_flags())
    exe = shlex.quote(sys.executable)
    scripts = {
        root.rollback_script: _script("rollback", path),
        root.monitor_script: _script("monitor", path),
        root.binary: (
            "#!/bin/sh\n# ETL Plus server binary (reference target)\n"
            f'exec {exe} -m etlplus_reference serve --root {shlex.quote(str(path))} "$@"\n'
        ),
    }
    for script, text in scripts.items():
        script.write_text(text, encoding="utf-8")
        script.chmod(0o755)
    return root
