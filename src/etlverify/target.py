"""What the suite knows about the target it verifies, and the embedded target shared by one run.

`Target` is what fixtures hand to tests. `probe` tells within seconds whether anything answers at a
URL. `SharedEmbedded` starts the embedded reference at most once per run even when several
pytest-xdist workers ask for it at the same time: the first one starts it under a file lock and
writes its address to the run folder; the others read it. The process that created the run folder
(the controller) stops it at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget, EmbeddedTargetError
from etlverify.errors import TargetError, in_words

__all__ = [
    "SharedEmbedded",
    "Target",
    "describe_target",
    "probe",
    "read_status",
    "unreachable_message",
]

PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Target:
    """The target of this run (see docs/suite-api.md, fixture `etl_target`)."""

    base_url: str
    ws_url: str
    deploy_root: Path | None
    embedded: bool
    status: Mapping[str, Any] = field(default_factory=dict)
    faults_available: bool = False

    @property
    def version(self) -> str:
        """``version`` of /api/health/status at start, or ``?``."""
        return str(self.status.get("version", "?"))

    @property
    def commit(self) -> str:
        """``build.commit`` of /api/health/status at start, or ``?``."""
        build = self.status.get("build")
        return str(build.get("commit", "?")) if isinstance(build, Mapping) else "?"

    def loaded_sha256(self, which: str) -> str:
        """``config.sha256`` or ``feature_flags.sha256`` at start, or ``?``."""
        part = self.status.get(which)
        return str(part.get("sha256", "?")) if isinstance(part, Mapping) else "?"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (passed between processes and written to reports)."""
        data = asdict(self)
        data["deploy_root"] = str(self.deploy_root) if self.deploy_root else None
        data["status"] = dict(self.status)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Target:
        """Inverse of `to_json`."""
        root = data.get("deploy_root")
        return cls(
            base_url=str(data["base_url"]),
            ws_url=str(data["ws_url"]),
            deploy_root=Path(root) if root else None,
            embedded=bool(data["embedded"]),
            status=dict(data.get("status") or {}),
            faults_available=bool(data.get("faults_available")),
        )


def unreachable_message(base_url: str, reason: str, tool: str = "etlverify") -> str:
    """The one line that ends a run whose target does not answer."""
    return (
        f"{tool}: target {base_url} is unreachable: {reason} "
        f"(curl -sS -m {PROBE_TIMEOUT:g} {shlex.quote(base_url + '/api/health')})"
    )


def probe(base_url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when anything answers HTTP at ``base_url/api/health``; else the reason it did not.

    Any HTTP status counts as reachable: a 500 is for the checks to report, not a reason to stop.
    """
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout)) as client:
            client.get(f"{base_url}/api/health")
    except httpx.ConnectError as exc:
        text = str(exc).lower()
        if "refused" in text:
            return "connection refused"
        if "name or service" in text or "nodename" in text or "resolution" in text:
            return "host name not resolved"
        return str(exc).splitlines()[0][:120] or "connection failed"
    except httpx.TimeoutException:
        return f"no answer within {timeout:g} s"
    except httpx.HTTPError as exc:
        return in_words(exc)
    return None


def describe_target(
    base_url: str, ws_url: str, deploy_root: Path | None, *, embedded: bool, timeout: float
) -> Target:
    """Read /api/health/status and whether /api/_faults answers; unreachable -> `TargetError`."""
    reason = probe(base_url, min(timeout, PROBE_TIMEOUT))
    if reason:
        raise TargetError(unreachable_message(base_url, reason))
    status = read_status(base_url, timeout)
    faults = False
    with contextlib.suppress(httpx.HTTPError):
        faults = httpx.get(f"{base_url}/api/_faults", timeout=timeout).status_code == 200
    return Target(base_url, ws_url, deploy_root, embedded, status, faults)


def read_status(
    base_url: str, timeout: float, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The target's ``/api/health/status`` body; ``{}`` when it does not answer a JSON object.

    Every source reads the target's identity from this body (`etlverify.report.summary.
    target_facts`), so the pytest plugin, Locust, the watch and the rollout agree on it.
    """
    with contextlib.suppress(httpx.HTTPError, ValueError):
        body = httpx.get(
            f"{base_url}/api/health/status",
            timeout=httpx.Timeout(timeout),
            headers=dict(headers or {}),
        ).json()
        if isinstance(body, dict):
            return body
    return {}


class SharedEmbedded:
    """The run's embedded reference, started at most once across processes (see module doc)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enable_faults: bool,
        request_timeout: float,
        python: str = sys.executable,
    ) -> None:
        self.run_dir = run_dir
        self.enable_faults = enable_faults
        self.request_timeout = request_timeout
        self.python = python
        self.info_file = run_dir / "embedded.json"
        self.lock_file = run_dir / "embedded.lock"
        self.root = run_dir / "deployment"
        self._owned: EmbeddedTarget | None = None

    def acquire(self) -> Target:
        """Start the reference (or find it started by another process) and describe it.

        Raises `TargetError` when it cannot start; the failure is remembered so that other
        workers report it at once instead of trying again.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.lock_file.open("a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self.info_file.exists():
                    info = json.loads(self.info_file.read_text(encoding="utf-8"))
                    if info.get("error"):
                        raise TargetError(str(info["error"]))
                    return Target.from_json(info)
                target = EmbeddedTarget(
                    self.root,
                    enable_faults=self.enable_faults,
                    config_overrides=SUITE_CONFIG_OVERRIDES,
                    python=self.python,
                )
                try:
                    target.start()
                    described = describe_target(
                        target.base_url,
                        target.ws_url,
                        self.root,
                        embedded=True,
                        timeout=self.request_timeout,
                    )
                except (EmbeddedTargetError, TargetError, OSError) as exc:
                    target.stop()
                    message = f"etlverify: the embedded reference did not start: {exc}"
                    self._write_info({"error": message})
                    raise TargetError(message) from None
                self._owned = target
                pid = target.process.pid if target.process else None
                self._write_info({**described.to_json(), "pid": pid})
                return described
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def started(self) -> Target | None:
        """The target if some process started it, else None."""
        try:
            info = json.loads(self.info_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return None if info.get("error") else Target.from_json(info)

    def stop(self) -> None:
        """Stop the reference if it was started (by any process of this run)."""
        if self._owned is not None:
            self._owned.stop()
            self._owned = None
            return
        target = self.started()
        if target is None:
            return
        # Started by another process (an xdist worker): find it through the root's pid file, and
        # the pid the starter recorded, each checked to be this root's server.
        port = int(target.base_url.rsplit(":", 1)[1])
        stranger = EmbeddedTarget(self.root, port=port, python=self.python)
        with contextlib.suppress(OSError, ValueError):
            pid = json.loads(self.info_file.read_text(encoding="utf-8")).get("pid")
            if isinstance(pid, int) and stranger._owns(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        stranger.stop()

    def _write_info(self, data: dict[str, Any]) -> None:
        tmp = self.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(self.info_file)
