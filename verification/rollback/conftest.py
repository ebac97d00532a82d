"""Fixtures of the rollback suites (triggers and procedures)."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.health import health_for

from .support import read_json, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

#: the post-deployment suites' health sampler (registered under this name while it runs)
UPTIME_PLUGIN = "etlverify-post-deploy-uptime"


@dataclass(frozen=True)
class ServerIdentity:
    """Which server process answers: its pid and how long it has been up."""

    pid: int | None
    uptime_s: float
    observed_at: float

    @property
    def started_at(self) -> float:
        """Wall-clock start time implied by the uptime."""
        return self.observed_at - self.uptime_s


def server_identity(etl_api: Any) -> ServerIdentity:
    """Pid from `/api/health/live`, uptime from `/api/health/status` (None/0 when not answered)."""
    pid = None
    with contextlib.suppress(Exception):
        live = etl_api.get("/api/health/live")
        if live.status_code == 200:
            pid = live.json().get("pid")
    uptime = 0.0
    with contextlib.suppress(Exception):
        status = etl_api.get("/api/health/status")
        if status.status_code == 200:
            uptime = float(status.json().get("uptime_seconds") or 0.0)
    return ServerIdentity(pid if isinstance(pid, int) else None, uptime, time.time())


@pytest.fixture
def planned_restart(
    request: pytest.FixtureRequest, etl_target: Any
) -> Callable[[str], AbstractContextManager[Any]]:
    """`with planned_restart("why"):` marks the block as planned downtime for the uptime sampler."""
    sampler = request.config.pluginmanager.get_plugin(UPTIME_PLUGIN)

    def planned(reason: str) -> AbstractContextManager[Any]:
        if sampler is None:
            return health_for(etl_target.base_url).planned(reason)
        return sampler.planned(reason)  # type: ignore[no-any-return]

    return planned


@pytest.fixture
def read_metrics(etl_api: Any, etl_expect: Any) -> Callable[[], dict[str, Any]]:
    """A function returning `/api/health/metrics` `metrics` (failing clearly when unusable)."""

    def read() -> dict[str, Any]:
        resp = etl_api.get("/api/health/metrics")
        etl_expect.status(resp, 200)
        body = etl_expect.json_fields(
            resp,
            {
                "metrics.memory_percent": (int, float),
                "metrics.requests.total": int,
                "metrics.requests.errors": int,
                "metrics.database.connection_failures": int,
            },
        )
        return dict(body["metrics"])

    return read


@dataclass
class FullRollback:
    """What one `rollback full` did: identities before/after, the job kept, timings, output."""

    before: ServerIdentity
    after: ServerIdentity
    job_id: str
    job_status_before: str
    returncode: int
    output: str
    took_s: float
    recovered_s: float | None
    flags_after: dict[str, Any] = field(default_factory=dict)
    health_exit: int | None = None


@pytest.fixture(scope="module")
def full_rollback(
    request: pytest.FixtureRequest, etl_api: Any, etl_ops: Any, etl_target: Any, etl_settings: Any
) -> FullRollback:
    """Runs `rollback full` once for the module (a restart is slow) and records what it did."""
    if etl_target.deploy_root is None:
        pytest.skip("needs --deploy-root (the rollback script lives in the deployment)")
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if workers not in ("", "0", "1"):  # module scope: set up before `etl_exclusive` could skip
        pytest.skip(f"restarts the target while {workers} xdist workers run: run without -n")
    profiles = getattr(etl_settings, "job_profiles", {}) or {}
    source = str(profiles.get("quick", "rows=200;batch=50;delay_ms=5"))
    job_id = f"etlv_rollback_{uuid.uuid4().hex[:12]}"
    created = etl_api.post(
        "/api/jobs",
        json={
            "type": "FULL_ETL",
            "source_config": source,
            "target_config": "sink=memory",
            "job_id": job_id,
        },
    )
    if created.status_code not in (200, 201):
        pytest.fail(
            f"could not create the job kept across the restart: HTTP {created.status_code} "
            f"{created.text[:200]}\nReproduce with: {etl_api.curl(created)}",
            pytrace=False,
        )

    def status() -> str | None:
        r = etl_api.get(f"/api/jobs/{job_id}")
        s = r.json().get("status") if r.status_code == 200 else None
        return s if s in ("completed", "failed", "cancelled") else None

    job_status = wait_until(status, 60) or "not finished"
    before = server_identity(etl_api)
    sampler = request.config.pluginmanager.get_plugin(UPTIME_PLUGIN)
    planned = (
        sampler.planned("rollback full")
        if sampler is not None
        else health_for(etl_api.base_url).planned("rollback full")
    )
    started = time.monotonic()
    with planned:
        proc = etl_ops.rollback("full", timeout=120)
        took = time.monotonic() - started
        ok_at = wait_until(lambda: _health_ok(etl_api), 30, interval=0.1)
    recovered = time.monotonic() - started - took if ok_at else None
    after = server_identity(etl_api)
    flags_after = read_json(etl_target.deploy_root / "config" / "feature_flags.json")
    health = etl_ops.rollback("health", timeout=30)
    return FullRollback(
        before=before,
        after=after,
        job_id=job_id,
        job_status_before=job_status,
        returncode=proc.returncode,
        output=(proc.stdout or "") + (proc.stderr or ""),
        took_s=took,
        recovered_s=recovered,
        flags_after=flags_after,
        health_exit=health.returncode,
    )


def _health_ok(etl_api: Any) -> bool:
    try:
        return bool(etl_api.get("/api/health", timeout=2).status_code == 200)
    except Exception:
        return False
