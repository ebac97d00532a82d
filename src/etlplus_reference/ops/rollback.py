"""`etlplus-reference rollback backup|verify|partial|full|health`: the deployment's rollback script.

- `backup` copies config, flags, the binary and (with SQLite's online backup API, safe while the
  server writes) the database into `backups/backup_YYYYMMDD_HHMMSS_<6 hex>/`, with a
  `MANIFEST.sha256` in `sha256sum` format. The folder is assembled under a temporary name and
  renamed at the end, so a backup that exists is complete.
- `verify` rechecks a backup against its manifest.
- `partial COMPONENT` turns one refactored component's flag off (rollout 0), after a backup.
- `full` backs up, puts every flag in the safe state (or restores a verified backup), restarts the
  server as it was started (argv and cwd from run/etlplus.pid) and succeeds only when it is healthy.
- `health` succeeds only when the pid file's process runs and /api/health says healthy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from etlplus_reference.ops.common import (
    EXIT_FAIL,
    EXIT_USAGE,
    OpsError,
    is_server_process,
    pid_alive,
    read_pid_file,
    read_settings,
    server_url,
    stop_process,
    utc_now,
)
from etlplus_reference.root import COMPONENT_FLAGS, DeploymentRoot, default_flags, write_json_atomic

__all__ = [
    "MANIFEST",
    "HealthStatus",
    "check_health",
    "create_backup",
    "full_rollback",
    "partial_rollback",
    "verify_backup",
]

MANIFEST = "MANIFEST.sha256"
HEALTH_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 15.0
START_TIMEOUT_S = 30.0
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")

Echo = Callable[[str], None]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _relative_db_path(root: DeploymentRoot, db: Path) -> str:
    # A database outside the root is kept under data/ in the backup.
    try:
        return db.relative_to(root.path).as_posix()
    except ValueError:
        return f"data/{db.name}"


def _copy_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite database (online backup API, not a file copy)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=10.0)
    try:
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


def create_backup(root: DeploymentRoot) -> Path:
    """A new, complete backup folder under backups/; its path."""
    settings = read_settings(root)
    name = f"backup_{utc_now():%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"
    final = root.backups_dir / name
    work = root.backups_dir / f".{name}.partial"
    work.mkdir(parents=True)
    try:
        files: list[str] = []
        for source in (root.config_file, root.flags_file, root.binary):
            if source.is_file():
                rel = source.relative_to(root.path).as_posix()
                (work / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, work / rel)  # copy2 keeps the binary's mode
                files.append(rel)
        db = root.resolve(settings.text("database.path", "data/etlplus.db"))
        if db.is_file():
            rel = _relative_db_path(root, db)
            try:
                _copy_sqlite(db, work / rel)
            except sqlite3.Error as exc:
                raise OpsError(f"cannot back up the database {db}: {exc}") from None
            files.append(rel)
        lines = [f"{_sha256(work / rel)}  {rel}\n" for rel in sorted(files)]
        (work / MANIFEST).write_text("".join(lines), encoding="utf-8")
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def resolve_backup(root: DeploymentRoot, given: Path) -> Path:
    """A backup folder given as a path, or as a name under the root's backups/."""
    for candidate in (given, root.backups_dir / given):
        if (candidate / MANIFEST).is_file():
            return candidate.resolve()
    raise OpsError(f"{given} is not a backup folder (no {MANIFEST})", EXIT_USAGE)


def verify_backup(backup: Path) -> list[str]:
    """Problems found rechecking `backup` against its manifest; empty when it is intact."""
    try:
        text = (backup / MANIFEST).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{MANIFEST}: unreadable ({exc})"]
    problems: list[str] = []
    listed: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        match = _MANIFEST_LINE.match(line)
        if not match:
            problems.append(f"{MANIFEST}: line {number} is malformed")
            continue
        expected, rel = match.groups()
        if rel.startswith("/") or ".." in Path(rel).parts:
            problems.append(f"{rel}: path escapes the backup folder")
            continue
        listed.add(rel)
        path = backup / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif _sha256(path) != expected:
            problems.append(f"{rel}: checksum mismatch")
    for path in sorted(backup.rglob("*")):
        rel = path.relative_to(backup).as_posix()
        if path.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"{rel}: not in the manifest")
    if not listed and not problems:
        problems.append(f"{MANIFEST}: lists no files")
    return problems


def _read_flags_document(root: DeploymentRoot) -> dict[str, Any]:
    try:
        raw = json.loads(root.flags_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise OpsError(
            f"cannot read {root.flags_file} ({exc}); use `rollback full` to reset every flag"
        ) from None
    if not isinstance(raw, dict):
        raise OpsError(f"{root.flags_file} is not a JSON object; use `rollback full`")
    return raw


def partial_rollback(root: DeploymentRoot, component: str | None, echo: Echo) -> Path:
    """Turn one component's flag off and its rollout to 0, after a backup; the backup's path."""
    valid = ", ".join(COMPONENT_FLAGS)
    if not component:
        raise OpsError(f"missing COMPONENT: one of {valid}", EXIT_USAGE)
    if component not in COMPONENT_FLAGS:
        raise OpsError(f"unknown component {component!r}: choose one of {valid}", EXIT_USAGE)
    name = COMPONENT_FLAGS[component]
    document = _read_flags_document(root)
    flags = document.get("flags")
    rollout = document.get("rollout_percentages", {})
    if not isinstance(flags, dict) or not isinstance(rollout, dict):
        raise OpsError(f"{root.flags_file} lacks flags/rollout_percentages; use `rollback full`")
    backup = create_backup(root)
    echo(f"backup: {backup}")
    before = (flags.get(name, False), rollout.get(name, 0))
    flags[name] = False
    rollout[name] = 0
    document["flags"] = flags
    document["rollout_percentages"] = rollout
    write_json_atomic(root.flags_file, document)
    echo(
        f"{component}: {name} enabled={json.dumps(before[0])} rollout={before[1]}"
        " -> enabled=false rollout=0 (other flags untouched)"
    )
    return backup


@dataclass(frozen=True)
class HealthStatus:
    """The outcome of `health`: ok, and a one-line reason."""

    ok: bool
    reason: str
    pid: int | None = None


def _health_get(url: str, timeout: float = HEALTH_TIMEOUT_S) -> tuple[bool, str]:
    try:
        response = httpx.get(f"{url}/api/health", timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        return False, f"{url}/api/health unreachable ({type(exc).__name__})"
    try:
        status = response.json().get("status")
    except (ValueError, AttributeError):
        status = None
    if response.status_code != 200:
        return False, f"{url}/api/health answered HTTP {response.status_code}"
    if status != "healthy":
        return False, f"{url}/api/health status is {status!r}"
    return True, f"{url}/api/health healthy"


def check_health(root: DeploymentRoot, url: str | None = None) -> HealthStatus:
    """Running (pid file's process alive and a server) and healthy (/api/health 200 healthy)."""
    info = read_pid_file(root.pid_file)
    if info is None:
        return HealthStatus(False, f"not running: no readable {root.pid_file}")
    if not pid_alive(info.pid):
        return HealthStatus(False, f"not running: pid {info.pid} from {root.pid_file} is gone")
    if not is_server_process(info.pid):
        return HealthStatus(False, f"not running: pid {info.pid} is not an etlplus server")
    ok, reason = _health_get(server_url(root, read_settings(root), url))
    prefix = "healthy" if ok else "unhealthy"
    return HealthStatus(ok, f"{prefix}: pid {info.pid}, {reason}", info.pid)


def _restore(root: DeploymentRoot, backup: Path, echo: Echo) -> None:
    # `backup` was verified by the caller, before anything was changed.
    for target in (root.config_file, root.flags_file, root.binary):
        rel = target.relative_to(root.path).as_posix()
        source = backup / rel
        if not source.is_file():
            echo(f"restore: {rel} not in the backup, kept")
            continue
        # Copy beside the target and rename: the running server never reads a half file.
        tmp = target.with_name(f".{target.name}.restore.tmp")
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
        echo(f"restore: {rel} from {backup.name}")


def _serve_argv(root: DeploymentRoot) -> tuple[list[str], str]:
    """The `serve` arguments and cwd to start with: as recorded, else from the config."""
    info = read_pid_file(root.pid_file)
    if info is not None and info.argv and info.argv[0] == "serve":
        cwd = info.cwd if info.cwd and Path(info.cwd).is_dir() else str(root.path)
        return info.argv, cwd
    settings = read_settings(root)
    host = settings.text("server.host", "127.0.0.1")
    port = int(settings.number("server.port", 8080))
    return ["serve", "--root", str(root.path), "--host", host, "--port", str(port)], str(root.path)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def restart_server(root: DeploymentRoot, url: str | None, echo: Echo) -> int:
    """Stop the recorded server (if any), start it again detached, wait until healthy; new pid."""
    argv, cwd = _serve_argv(root)
    info = read_pid_file(root.pid_file)
    if info is not None and pid_alive(info.pid) and is_server_process(info.pid):
        graceful = stop_process(info.pid, STOP_TIMEOUT_S)
        echo(f"stopped pid {info.pid}" + ("" if graceful else " (SIGKILL after timeout)"))
    else:
        echo("no server running: starting one")
    root.logs_dir.mkdir(parents=True, exist_ok=True)
    with root.server_out.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "etlplus_reference", *argv],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own session: the server outlives this command and its terminal.
            start_new_session=True,
        )
    echo(f"started pid {process.pid}: {' '.join(argv)}")
    deadline = time.monotonic() + START_TIMEOUT_S
    reason = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OpsError(
                f"restarted server exited with {process.returncode}: {_tail(root.server_out)}"
            )
        recorded = read_pid_file(root.pid_file)
        if recorded is not None and recorded.pid == process.pid:
            ok, reason = _health_get(server_url(root, read_settings(root), url), timeout=2.0)
            if ok:
                return process.pid
        time.sleep(0.2)
    raise OpsError(
        f"restarted server (pid {process.pid}) not healthy after {START_TIMEOUT_S:g} s: {reason}"
    )


def full_rollback(
    root: DeploymentRoot, url: str | None, echo: Echo, restore: Path | None = None
) -> int:
    """Backup, safe flags (or a restored backup), restart; the new server's pid when healthy."""
    source = resolve_backup(root, restore) if restore is not None else None
    if source is not None:
        problems = verify_backup(source)
        if problems:
            raise OpsError(f"backup {source} failed verification: {problems[0]}")
    backup = create_backup(root)
    echo(f"backup: {backup}")
    if source is not None:
        _restore(root, source, echo)
    else:
        write_json_atomic(root.flags_file, default_flags())
        echo("flags: every flag off, every rollout 0 (safe state)")
    pid = restart_server(root, url, echo)
    status = check_health(root, url)
    if not status.ok:
        raise OpsError(status.reason, EXIT_FAIL)
    echo(f"service healthy: pid {pid}")
    return pid
