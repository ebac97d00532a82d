"""`etlplus-reference monitor check|report|start`: the deployment's monitoring script.

One pass (`check`) looks at six things and turns each finding into an `Alert`:

=============  ==================================================  =================================
category       source                                              worst outcome
=============  ==================================================  =================================
service        GET /api/health, /api/health/ready                  CRITICAL when down or not ready
resources      /api/health/metrics vs `monitoring.*_warning/..`    WARNING / CRITICAL by threshold
websocket      /ws must send `connection_ack` within the timeout   CRITICAL (no connection) /
                                                                   WARNING (no or a bad ack)
database       /api/health/database, metrics connection_failures   CRITICAL when disconnected or
                                                                   > 10 failures/min, else WARNING
logs           new ERROR/FATAL lines in the log and its rotations   WARNING
config, flags  `load_config` / `load_flags` on the files           CRITICAL when invalid
=============  ==================================================  =================================

Every alert, INFO included, is appended as one line to `logs/alerts_YYYYMMDD.log` (UTC date), e.g.
`2026-11-29T17:04:07Z [WARNING] [resources] memory 87.1% >= 85%`. The exit code is the worst
severity: 0 none above INFO, 1 WARNING, 2 CRITICAL. State that must survive between passes (log
file offsets by inode, the last database failure counter) lives in `logs/.monitor_state.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import smtplib
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect as ws_connect

from etlplus_reference.config import load_config, load_flags
from etlplus_reference.errors import ConfigError
from etlplus_reference.ops.common import (
    EXIT_USAGE,
    OpsError,
    RootSettings,
    pid_alive,
    read_pid_file,
    read_settings,
    server_url,
    utc_now,
    utc_stamp,
)
from etlplus_reference.root import DeploymentRoot, write_json_atomic

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime
    from types import FrameType

__all__ = [
    "Alert",
    "CheckResult",
    "Severity",
    "run_check",
    "run_report",
    "run_start",
]

#: Checklist rollback trigger: "Database connection failures > 10/minute".
DB_FAILURES_CRITICAL_PER_MIN = 10.0
#: How long alert files and reports are kept ("Configure log rotation for monitoring logs").
DEFAULT_RETENTION_DAYS = 30.0
NOTIFY_TIMEOUT_S = 5.0
_STATE_VERSION = 1
_ERROR_LINE = re.compile(rb'^\[[^\]]*\] \[(?:ERROR|FATAL)\]|"level"\s*:\s*"(?:ERROR|FATAL)"')


class Severity(IntEnum):
    """Alert severity; the numeric value is the exit code it implies."""

    INFO = 0
    WARNING = 1
    CRITICAL = 2


@dataclass(frozen=True)
class Alert:
    """One finding of a check: a severity, the check's category, a one-line message."""

    severity: Severity
    category: str
    message: str

    def line(self, when: datetime) -> str:
        """The alerts-file line: `2026-11-29T17:04:07Z [WARNING] [resources] memory ...`."""
        return f"{utc_stamp(when)} [{self.severity.name}] [{self.category}] {self.message}"


@dataclass
class CheckResult:
    """The outcome of one pass: its alerts and the raw health documents it fetched."""

    url: str
    started_at: datetime
    alerts: list[Alert] = field(default_factory=list)
    documents: dict[str, Any] = field(default_factory=dict)
    alerts_file: Path | None = None

    @property
    def worst(self) -> Severity:
        """The highest severity of the pass (INFO when nothing fired)."""
        return max((a.severity for a in self.alerts), default=Severity.INFO)

    @property
    def exit_code(self) -> int:
        """0 all well, 1 WARNING was the worst, 2 a CRITICAL fired."""
        return int(self.worst)

    def add(self, severity: Severity, category: str, message: str) -> None:
        """Record one finding."""
        self.alerts.append(Alert(severity, category, " ".join(message.split())))

    def summary(self) -> str:
        """A human summary: one line per alert and a verdict."""
        warnings = sum(a.severity is Severity.WARNING for a in self.alerts)
        criticals = sum(a.severity is Severity.CRITICAL for a in self.alerts)
        lines = [f"ETL Plus monitor check of {self.url} at {utc_stamp(self.started_at)}"]
        lines += [f"  [{a.severity.name}] [{a.category}] {a.message}" for a in self.alerts]
        verdict = "OK" if self.worst is Severity.INFO else self.worst.name
        where = f"; alerts appended to {self.alerts_file}" if self.alerts_file else ""
        lines.append(f"Result: {verdict} ({warnings} warning, {criticals} critical){where}")
        return "\n".join(lines)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {_short(detail, 120)}" if detail else type(exc).__name__


def _find(doc: Any, *path: str) -> Any:
    node = doc
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class _Monitor:
    """One pass's context: the root, its settings, an HTTP client with a timeout, saved state."""

    def __init__(self, root: DeploymentRoot, settings: RootSettings, url: str) -> None:
        self.root = root
        self.settings = settings
        self.url = url
        self.timeout = max(0.1, settings.number("monitoring.health_timeout_s", 5.0))
        self.state = self._load_state()

    # -- state -------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.root.monitor_state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"version": _STATE_VERSION}
        if not isinstance(raw, dict) or raw.get("version") != _STATE_VERSION:
            return {"version": _STATE_VERSION}
        return raw

    def _save_state(self) -> None:
        with contextlib.suppress(OSError):
            write_json_atomic(self.root.monitor_state_file, self.state)

    # -- the pass ----------------------------------------------------------------------------
    def run(self) -> CheckResult:
        result = CheckResult(url=self.url, started_at=utc_now())
        if self.settings.error:
            result.add(Severity.CRITICAL, "config", self.settings.error)
        with httpx.Client(
            base_url=self.url, timeout=httpx.Timeout(self.timeout), trust_env=False
        ) as client:
            if self._check_service(client, result):
                self._check_resources(client, result)
                self._check_websocket(client, result)
                self._check_database(client, result)
            else:
                result.add(
                    Severity.INFO, "monitor", "resources, websocket, database skipped: service down"
                )
        self._check_logs(result)
        self._check_files(result)
        self._save_state()
        self._notify(result)
        result.alerts_file = self._append_alerts(result)
        self._prune_old_files()
        return result

    def _get(self, client: httpx.Client, path: str) -> tuple[int | None, Any, float, str | None]:
        """(status, JSON body or None, elapsed ms, error) for a GET; never raises."""
        start = time.perf_counter()
        try:
            response = client.get(path)
        except httpx.HTTPError as exc:
            return None, None, (time.perf_counter() - start) * 1000, _describe(exc)
        elapsed = (time.perf_counter() - start) * 1000
        try:
            body = response.json()
        except ValueError:
            body = None
        return response.status_code, body, elapsed, None

    def _check_service(self, client: httpx.Client, result: CheckResult) -> bool:
        status, body, ms, error = self._get(client, "/api/health")
        if error is not None:
            result.add(Severity.CRITICAL, "service", f"down: {self.url}/api/health: {error}")
            return False
        result.documents["health"] = body
        health = _find(body, "status")
        if status != 200:
            result.add(Severity.CRITICAL, "service", f"/api/health answered HTTP {status}")
            return False
        if health == "degraded":
            result.add(Severity.WARNING, "service", f"status degraded ({ms:.0f} ms)")
        elif health != "healthy":
            result.add(Severity.CRITICAL, "service", f"/api/health status is {health!r}")
        else:
            result.add(Severity.INFO, "service", f"healthy ({ms:.0f} ms)")
        status, body, ms, error = self._get(client, "/api/health/ready")
        if error is not None or status != 200:
            why = error or f"HTTP {status} {_short(json.dumps(body), 160) if body else ''}"
            result.add(Severity.CRITICAL, "service", f"not ready: {why}")
        else:
            result.add(Severity.INFO, "service", f"ready ({ms:.0f} ms)")
        status, body, _, error = self._get(client, "/api/health/status")
        if status == 200 and isinstance(body, dict):
            result.documents["status"] = body
        return True

    def _check_resources(self, client: httpx.Client, result: CheckResult) -> None:
        status, body, _, error = self._get(client, "/api/health/metrics")
        if error is not None or status != 200 or not isinstance(body, dict):
            result.add(
                Severity.WARNING, "resources", f"/api/health/metrics unusable: {error or status}"
            )
            return
        result.documents["metrics"] = body
        metrics = body.get("metrics", {})
        readings: list[str] = []
        for label, key, cfg in (
            ("cpu", "cpu_usage", "cpu"),
            ("memory", "memory_percent", "memory"),
        ):
            value = _num(_find(metrics, key))
            if value is None:
                result.add(Severity.WARNING, "resources", f"metrics lack {key}")
                continue
            warn = self.settings.number(f"monitoring.{cfg}_warning", 80.0)
            crit = self.settings.number(f"monitoring.{cfg}_critical", 95.0)
            if value >= crit:
                result.add(Severity.CRITICAL, "resources", f"{label} {value:.1f}% >= {crit:g}%")
            elif value >= warn:
                result.add(Severity.WARNING, "resources", f"{label} {value:.1f}% >= {warn:g}%")
            readings.append(f"{label} {value:.1f}%")
        if readings:
            result.add(Severity.INFO, "resources", ", ".join(readings))

    def _login(self, client: httpx.Client) -> tuple[str, bool]:
        """A bearer token for /ws and whether we logged in for it (then we log out after).

        In order: ETLPLUS_TOKEN; ETLPLUS_USERNAME/ETLPLUS_PASSWORD (the suite's convention); the
        `admin` password that `init` generated into config/initial_admin_password. Never stored.
        """
        token = os.environ.get("ETLPLUS_TOKEN", "")
        if token:
            return token, False
        user = os.environ.get("ETLPLUS_USERNAME", "")
        password = os.environ.get("ETLPLUS_PASSWORD", "")
        if not (user and password):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                user = "admin"
                password = self.root.admin_password_file.read_text(encoding="utf-8").strip()
        if not (user and password):
            return "", False
        with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
            response = client.post("/api/auth/login", json={"username": user, "password": password})
            if response.status_code == 200:
                return str(response.json().get("token", "")), True
        return "", False

    def _check_websocket(self, client: httpx.Client, result: CheckResult) -> None:
        token, logged_in = ("", False)
        if self.settings.get("auth.enabled") is True:
            token, logged_in = self._login(client)
        try:
            self._check_websocket_with(token, result)
        finally:
            if logged_in:
                with contextlib.suppress(httpx.HTTPError):
                    client.post("/api/auth/logout", headers={"Authorization": f"Bearer {token}"})

    def _check_websocket_with(self, token: str, result: CheckResult) -> None:
        ws_url = re.sub(r"^http", "ws", self.url) + "/ws"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        start = time.perf_counter()
        try:
            with ws_connect(
                ws_url,
                open_timeout=self.timeout,
                close_timeout=1.0,
                additional_headers=headers,
                proxy=None,
                ping_interval=None,
            ) as ws:
                message = ws.recv(timeout=self.timeout)
        except InvalidStatus as exc:
            code = exc.response.status_code
            if code == 401 and not token:
                # The endpoint is up and enforces authentication: we lack credentials.
                result.add(
                    Severity.WARNING,
                    "websocket",
                    "not checked: authentication is on and no credentials (set ETLPLUS_TOKEN or "
                    "ETLPLUS_USERNAME/ETLPLUS_PASSWORD)",
                )
            else:
                result.add(Severity.CRITICAL, "websocket", f"upgrade refused with HTTP {code}")
            return
        except TimeoutError:
            result.add(
                Severity.WARNING,
                "websocket",
                f"no connection_ack within {self.timeout:g} s on {ws_url}",
            )
            return
        except (OSError, WebSocketException) as exc:
            result.add(Severity.CRITICAL, "websocket", f"cannot use {ws_url}: {_describe(exc)}")
            return
        ms = (time.perf_counter() - start) * 1000
        try:
            doc = json.loads(message)
        except ValueError:
            doc = None
        if _find(doc, "type") != "connection_ack":
            excerpt = _short(message if isinstance(message, str) else repr(message), 120)
            result.add(
                Severity.WARNING, "websocket", f"first message is not connection_ack: {excerpt}"
            )
        else:
            result.add(Severity.INFO, "websocket", f"connection_ack in {ms:.0f} ms")

    def _check_database(self, client: httpx.Client, result: CheckResult) -> None:
        status, body, _, error = self._get(client, "/api/health/database")
        connected: Any = None
        if status is not None and isinstance(body, dict):
            connected = body.get("connected", _find(body, "database", "connected"))
        if connected is None:
            connected = _find(result.documents.get("status"), "components", "database", "connected")
        if error is not None or connected is False or (status is not None and status >= 500):
            why = error or (f"HTTP {status}" if status != 200 else "connected=false")
            result.add(Severity.CRITICAL, "database", f"not connected ({why})")
        failures = _num(
            _find(result.documents.get("metrics"), "metrics", "database", "connection_failures")
        )
        now = time.time()
        previous = self.state.get("database", {})
        prev_failures = _num(_find(previous, "connection_failures"))
        prev_at = _num(_find(previous, "checked_at"))
        if failures is not None:
            self.state["database"] = {"connection_failures": failures, "checked_at": now}
            # A lower counter means the server restarted (counters are cumulative since start).
            if prev_failures is not None and prev_at is not None and failures > prev_failures:
                delta = failures - prev_failures
                # Over at least a minute: a burst of 2 failures in 5 s is not "24/min".
                per_min = delta / max((now - prev_at) / 60.0, 1.0)
                severity = (
                    Severity.CRITICAL
                    if per_min > DB_FAILURES_CRITICAL_PER_MIN
                    else Severity.WARNING
                )
                result.add(
                    severity,
                    "database",
                    f"{delta:.0f} new connection failures since the last check ({per_min:.1f}/min)",
                )
        if any(a.category == "database" for a in result.alerts):
            return
        if connected is True:
            total = "" if failures is None else f", {failures:.0f} connection failures in total"
            result.add(Severity.INFO, "database", f"connected{total}")
        else:
            result.add(Severity.WARNING, "database", "the server does not report its connection")

    # -- local checks -----------------------------------------------------------------------
    def _log_files(self) -> list[Path]:
        """The log file and its rotations, oldest first (so lines are read in order)."""
        base = self.root.resolve(self.settings.text("logging.log_file", "logs/etlplus.log"))
        rotated: list[tuple[int, Path]] = []
        if base.parent.is_dir():
            for path in base.parent.iterdir():
                suffix = path.name[len(base.name) + 1 :]
                if path.name.startswith(base.name + ".") and suffix.isdigit():
                    rotated.append((int(suffix), path))
        ordered = [p for _, p in sorted(rotated, reverse=True)]
        return [*ordered, base] if base.exists() else ordered

    def _check_logs(self, result: CheckResult) -> None:
        files = self._log_files()
        if not files:
            result.add(Severity.INFO, "logs", "no log file yet")
            return
        seen: dict[str, int] = self.state.get("logs", {})
        if not isinstance(seen, dict):
            seen = {}
        offsets: dict[str, int] = {}
        count = 0
        last_line = b""
        for path in files:
            try:
                with path.open("rb") as fh:
                    st = os.fstat(fh.fileno())
                    # Keyed by inode: rotation renames a file, so its offset follows it.
                    key = f"{st.st_dev}:{st.st_ino}"
                    offset = seen.get(key, 0)
                    if not isinstance(offset, int) or offset > st.st_size:
                        offset = 0  # truncated or a reused inode: read it all
                    fh.seek(offset)
                    for line in fh:
                        if not line.endswith(b"\n"):
                            break  # a line still being written: next pass
                        offset += len(line)
                        if _ERROR_LINE.search(line):
                            count += 1
                            last_line = line
                    offsets[key] = offset
            except OSError:
                continue  # rotated away while we looked: its lines are in the next name
        self.state["logs"] = offsets
        if count:
            excerpt = _short(last_line.decode("utf-8", "replace"), 200)
            result.add(
                Severity.WARNING,
                "logs",
                f"{count} new ERROR/FATAL line(s) in {files[-1].name}* since the last check; "
                f"latest: {excerpt}",
            )
        else:
            result.add(Severity.INFO, "logs", "no new ERROR/FATAL lines")

    def _check_files(self, result: CheckResult) -> None:
        if not self.settings.error:
            try:
                load_config(self.root.config_file)
            except ConfigError as exc:
                result.add(Severity.CRITICAL, "config", f"invalid: {exc}")
        try:
            flags = load_flags(self.root.flags_file)
        except ConfigError as exc:
            result.add(Severity.CRITICAL, "flags", f"invalid: {exc}")
            return
        on = [name for name, value in flags.flags.items() if value]
        if on:
            for name in on:
                pct = flags.rollout_percentages.get(name, 0.0)
                result.add(Severity.INFO, "flags", f"{name} on at {pct:g}% rollout")
        else:
            result.add(Severity.INFO, "flags", "all flags off (safe state)")
        served = _find(result.documents.get("status"), "feature_flags", "sha256")
        if isinstance(served, str) and served != flags.sha256:
            result.add(
                Severity.INFO,
                "flags",
                "the server has not loaded the current file yet (reload pending or rejected)",
            )

    # -- output ----------------------------------------------------------------------------
    def _append_alerts(self, result: CheckResult) -> Path | None:
        path = self.root.logs_dir / f"alerts_{result.started_at:%Y%m%d}.log"
        text = "".join(a.line(result.started_at) + "\n" for a in result.alerts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # One O_APPEND write, so concurrent monitors never interleave inside a line.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, text.encode("utf-8"))
            finally:
                os.close(fd)
        except OSError:
            return None
        return path

    def _prune_old_files(self) -> None:
        days = self.settings.number("monitoring.retention_days", DEFAULT_RETENTION_DAYS)
        cutoff = time.time() - days * 86400
        for pattern in ("alerts_*.log", "monitoring_report_*.txt"):
            for path in self.root.logs_dir.glob(pattern):
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()

    def _notify(self, result: CheckResult) -> None:
        firing = [a for a in result.alerts if a.severity >= Severity.WARNING]
        if not firing:
            return
        text = f"ETL Plus monitor ({self.root.path}): {result.worst.name}\n" + "\n".join(
            a.line(result.started_at) for a in firing
        )
        webhook = self.settings.text("monitoring.slack_webhook")
        if webhook:
            try:
                response = httpx.post(webhook, json={"text": text}, timeout=NOTIFY_TIMEOUT_S)
                if response.status_code >= 300:
                    result.add(
                        Severity.WARNING,
                        "notify",
                        f"Slack webhook answered HTTP {response.status_code}",
                    )
                else:
                    result.add(Severity.INFO, "notify", f"sent {len(firing)} alert(s) to Slack")
            except httpx.HTTPError as exc:
                result.add(Severity.WARNING, "notify", f"Slack webhook failed: {_describe(exc)}")
        email = self.settings.text("monitoring.alert_email")
        if email:
            self._send_email(email, text, result)

    def _send_email(self, to: str, text: str, result: CheckResult) -> None:
        smtp = self.settings.text("monitoring.smtp_host")
        if not smtp:
            result.add(
                Severity.INFO, "notify", f"no monitoring.smtp_host: alert email to {to} not sent"
            )
            return
        host, _, port = smtp.partition(":")
        message = EmailMessage()
        message["Subject"] = text.splitlines()[0]
        message["From"] = self.settings.text("monitoring.email_from", "etlplus-monitor@localhost")
        message["To"] = to
        message.set_content(text)
        try:
            with smtplib.SMTP(host, int(port or 25), timeout=NOTIFY_TIMEOUT_S) as conn:
                conn.send_message(message)
        except (OSError, smtplib.SMTPException, ValueError) as exc:
            result.add(Severity.WARNING, "notify", f"alert email to {to} failed: {_describe(exc)}")
        else:
            result.add(Severity.INFO, "notify", f"alert email sent to {to}")


def run_check(root: DeploymentRoot, url: str | None = None) -> CheckResult:
    """One monitoring pass: checks, alerts file, notifications. Never raises for a sick server."""
    settings = read_settings(root)
    return _Monitor(root, settings, server_url(root, settings, url)).run()


def run_report(root: DeploymentRoot, url: str | None = None) -> tuple[CheckResult, Path]:
    """A check plus the server's status and metrics, written to logs/monitoring_report_*.txt."""
    result = run_check(root, url)
    when = result.started_at
    path = root.logs_dir / f"monitoring_report_{when:%Y%m%d_%H%M%S}.txt"
    parts = [
        "ETL Plus monitoring report",
        f"generated: {utc_stamp(when)}",
        f"root: {root.path}",
        f"server: {result.url}",
        "",
        result.summary(),
        "",
    ]
    pid = read_pid_file(root.pid_file)
    if pid is not None:
        alive = "running" if pid_alive(pid.pid) else "NOT running"
        parts += [f"pid file: pid {pid.pid} ({alive}), started {pid.started_at}", ""]
    for title, key in (("/api/health/status", "status"), ("/api/health/metrics", "metrics")):
        doc = result.documents.get(key)
        parts.append(f"== {title} ==")
        parts.append(json.dumps(doc, indent=2, sort_keys=True) if doc is not None else "(none)")
        parts.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Seconds resolution: two reports in one second must not overwrite each other.
    n = 1
    while path.exists():
        path = root.logs_dir / f"monitoring_report_{when:%Y%m%d_%H%M%S}_{n}.txt"
        n += 1
    path.write_text("\n".join(parts), encoding="utf-8")
    return result, path


def _monitor_running(root: DeploymentRoot) -> int | None:
    info = read_pid_file(root.monitor_pid_file)
    if info is None or info.pid == os.getpid() or not pid_alive(info.pid):
        return None
    try:
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return info.pid if b"monitor" in cmdline and b"start" in cmdline else None


def run_start(
    root: DeploymentRoot,
    url: str | None = None,
    *,
    interval: float | None = None,
    count: int | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Loop `check` every `interval` s until SIGTERM/SIGINT or `count` passes; last pass's code."""
    running = _monitor_running(root)
    if running is not None:
        raise OpsError(
            f"a monitor loop is already running for {root.path} (pid {running})", EXIT_USAGE
        )
    settings = read_settings(root)
    every = interval if interval is not None else settings.number("monitoring.interval_s", 60.0)
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    write_json_atomic(
        root.monitor_pid_file,
        {"pid": os.getpid(), "started_at": utc_stamp(), "interval_s": every},
    )
    code = 0
    passes = 0
    try:
        while not stop.is_set():
            result = run_check(root, url)
            echo(result.summary())
            code = result.exit_code
            passes += 1
            if count is not None and passes >= count:
                break
            stop.wait(every)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        info = read_pid_file(root.monitor_pid_file)
        if info is not None and info.pid == os.getpid():
            with contextlib.suppress(OSError):
                root.monitor_pid_file.unlink()
    echo(f"monitor loop stopped after {passes} pass(es)")
    return code
