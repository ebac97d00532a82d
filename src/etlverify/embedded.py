"""Start and stop the embedded reference ETL Plus as a separate process.

The suite never imports `etlplus_reference`: it runs `python -m etlplus_reference init/serve` and
then talks to it over the network and the deployment folder, as it would to a deployed server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from etlverify.errors import in_words

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "SUITE_CONFIG_OVERRIDES",
    "EmbeddedTarget",
    "EmbeddedTargetError",
    "deep_merge",
    "describe_overrides",
    "free_port",
    "overrides_digest",
]

#: Overrides the suite applies to an embedded target's default config: fast hot reload so a run
#: stays short, and the upstream per-minute rate limits raised so that one client (the suite) can
#: create the jobs it needs. Rate limiting itself is tested with its own, low, limits. The run
#: header prints them (`describe_overrides()`); a deployed target keeps its own config, and the
#: performance section says so when its limits rate-limit the load (429s are not a verdict).
SUITE_CONFIG_OVERRIDES: dict[str, Any] = {
    "config": {"reload_interval_s": 1.0},
    "feature_flags": {"reload_interval_s": 1.0},
    "rate_limits": {
        "rules": {
            "/api/auth/login": 10000,
            "/api/auth/logout": 10000,
            "/api/auth/profile": 10000,
            "/api/logs": 10000,
            "/api/jobs": 100000,
            "/api/monitor": 100000,
            "/api/health": 100000,
        }
    },
}


#: The contract's upstream per-minute limits (docs/etlplus-contract.md, section 6), for the header.
CONTRACT_RATE_LIMITS: dict[str, int] = {
    "/api/auth/login": 5,
    "/api/auth/logout": 10,
    "/api/auth/profile": 30,
    "/api/logs": 60,
    "/api/jobs": 30,
    "/api/monitor": 120,
    "/api/health": 300,
}


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for key in sorted(value):
            out += _flatten(f"{prefix}.{key}" if prefix else str(key), value[key])
        return out
    return [(prefix, value)]


def describe_overrides(overrides: dict[str, Any] | None = None) -> list[str]:
    """What the suite changes in the embedded target's default config, for the run header.

    One line for the reload intervals and one for the rate limits (each with the contract's
    default), e.g. ``rate limits raised for the suite's one client: /api/jobs 30 -> 100000/min``.
    """
    data = SUITE_CONFIG_OVERRIDES if overrides is None else overrides
    rules = data.get("rate_limits", {}).get("rules", {})
    rest = {k: v for k, v in data.items() if k != "rate_limits"}
    extra = {k: v for k, v in data.get("rate_limits", {}).items() if k != "rules"}
    if extra:
        rest["rate_limits"] = extra
    lines: list[str] = []
    if rest:
        lines.append(
            "embedded target config overrides: "
            + ", ".join(f"{key} {value!r}" for key, value in _flatten("", rest))
        )
    if rules:
        parts = [
            f"{route} {CONTRACT_RATE_LIMITS.get(route, '?')} -> {limit}/min"
            for route, limit in sorted(rules.items())
        ]
        lines.append(
            "embedded target rate limits raised for the suite (one client creates every job; "
            "rate limiting is checked with its own low limits): " + ", ".join(parts)
        )
    return lines


def overrides_digest(overrides: dict[str, Any] | None = None) -> str:
    """A short digest of the config overrides (part of a machine baseline's target config)."""
    data = SUITE_CONFIG_OVERRIDES if overrides is None else overrides
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class EmbeddedTargetError(RuntimeError):
    """The embedded reference could not be initialised or started; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `base` with `override` merged in recursively (override wins on leaves)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedTarget:
    """One reference ETL Plus server in a deployment root of its own.

    With no `root`, a temporary folder is created (and removed by `stop`). `config_overrides` are
    merged into the default `config/config.json` after `init`.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        port: int | None = None,
        enable_faults: bool = False,
        config_overrides: dict[str, Any] | None = None,
        startup_timeout: float = 30.0,
        python: str = sys.executable,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="etlplus-root-")
            root = Path(self._tmp.name) / "deployment"
        self.root = root
        self.port = port or free_port()
        self.enable_faults = enable_faults
        self.config_overrides = config_overrides or {}
        self.startup_timeout = startup_timeout
        self.python = python
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def server_log(self) -> Path:
        """Where the server process's stdout/stderr go (its own log is logs/etlplus.log)."""
        return self.root / "logs" / "server.out"

    def _run_cli(self, *args: str) -> None:
        cmd = [self.python, "-m", "etlplus_reference", *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedTargetError(f"`{' '.join(cmd)}` did not finish in 60 s") from exc
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise EmbeddedTargetError(
                f"`{' '.join(cmd)}` exited {proc.returncode}: {detail[-1] if detail else ''}"
            )

    def init(self) -> None:
        """`etlplus-reference init` the root (if not done yet) and apply the config overrides."""
        config_file = self.root / "config" / "config.json"
        if not config_file.exists():
            self._run_cli("init", str(self.root), "--port", str(self.port))
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
        cfg = deep_merge(cfg, self.config_overrides)
        cfg.setdefault("server", {})["port"] = self.port
        tmp = config_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, config_file)

    def start(self) -> EmbeddedTarget:
        """Init if needed, start `serve`, and wait until `/api/health` answers."""
        self.init()
        self.root.joinpath("logs").mkdir(parents=True, exist_ok=True)
        cmd = [self.python, "-m", "etlplus_reference", "serve", "--root", str(self.root)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        if self.enable_faults:
            cmd.append("--enable-faults")
        with self.server_log.open("ab") as out:
            self.process = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.wait_healthy(self.startup_timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        """Poll `/api/health` until it answers 200, the process dies, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = self._log_tail()
                raise EmbeddedTargetError(
                    f"reference server exited with {self.process.returncode} during startup: {tail}"
                )
            try:
                r = httpx.get(f"{self.base_url}/api/health", timeout=2.0)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = in_words(exc)
            time.sleep(0.1)
        self.stop()
        raise EmbeddedTargetError(
            f"reference server at {self.base_url} not healthy after {timeout:.0f} s ({last})"
        )

    def _log_tail(self) -> str:
        try:
            lines = self.server_log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def server_pids(self) -> list[int]:
        """The PIDs that may be this root's server: our child and the one in run/etlplus.pid.

        `rollback.sh full` restarts the service, so after it the server is no longer our child.
        """
        pids: list[int] = []
        if self.process is not None and self.process.poll() is None:
            pids.append(self.process.pid)
        pid_file = self.root / "run" / "etlplus.pid"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pid = int(json.loads(pid_file.read_text(encoding="utf-8"))["pid"])
            if pid not in pids and _pid_alive(pid) and self._owns(pid):
                pids.append(pid)
        return pids

    def _owns(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return str(self.root).encode() in cmdline and b"serve" in cmdline

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every server process of this root (SIGTERM, then SIGKILL); remove a temp root."""
        for pid in self.server_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for pid in self.server_pids():
            while _pid_alive(pid) and time.monotonic() < deadline:
                if self.process is not None and pid == self.process.pid:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.process.wait(timeout=0.1)
                else:
                    time.sleep(0.1)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedTarget:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
