"""Contract section 3 (health and monitoring) against the reference target."""

from __future__ import annotations

import statistics
import time
from datetime import UTC
from typing import TYPE_CHECKING, Any

import pytest
from contract_support import (
    QUICK_PROFILE,
    TERMINAL,
    Api,
    assert_error,
    assert_iso,
    file_sha256,
    parse_iso,
)

if TYPE_CHECKING:
    from etlverify.embedded import EmbeddedTarget

pytestmark = pytest.mark.timeout(60)

Number = (int, float)


def _number(value: Any, lo: float | None = None, hi: float | None = None) -> None:
    assert isinstance(value, Number), f"expected a number, got {value!r}"
    assert not isinstance(value, bool), f"expected a number, got {value!r}"
    if lo is not None:
        assert value >= lo, value
    if hi is not None:
        assert value <= hi, value


def _count(value: Any) -> None:
    assert isinstance(value, int), f"expected an integer count, got {value!r}"
    assert not isinstance(value, bool), value
    assert value >= 0, value


def test_health(api: Api) -> None:
    """§3: GET /api/health is 200 {"status": healthy|degraded, "timestamp"}."""
    body = api.get_json("/api/health")
    assert body["status"] in ("healthy", "degraded"), body
    assert_iso(body["timestamp"])


def test_health_live(api: Api, reference: EmbeddedTarget) -> None:
    """§3: /api/health/live gives alive, the server's pid and memory {used_bytes, cpu_percent}."""
    body = api.get_json("/api/health/live")
    assert body["status"] == "alive", body
    assert_iso(body["timestamp"])
    assert isinstance(body["pid"], int), body
    assert body["pid"] in reference.server_pids(), (body["pid"], reference.server_pids())
    mem = body["memory"]
    _count(mem["used_bytes"])
    assert mem["used_bytes"] > 1024 * 1024, mem
    _number(mem["cpu_percent"], 0)


def test_health_ready(api: Api) -> None:
    """§3: /api/health/ready gives ready with database and websocket objects."""
    body = api.get_json("/api/health/ready")
    assert body["status"] == "ready", body
    assert_iso(body["timestamp"])
    assert isinstance(body["database"], dict), body
    assert isinstance(body["websocket"], dict), body


def test_health_status(api: Api, reference: EmbeddedTarget) -> None:
    """§3: /api/health/status has version, uptime, build, config/flags hashes and components."""
    body = api.get_json("/api/health/status")
    assert isinstance(body["status"], str), body
    assert_iso(body["timestamp"])
    assert isinstance(body["version"], str), body
    assert body["version"], body
    _number(body["uptime_seconds"], 0)
    assert isinstance(body["build"]["commit"], str), body
    cfg, flags = body["config"], body["feature_flags"]
    assert cfg["sha256"] == file_sha256(reference.root / "config" / "config.json"), cfg
    assert flags["sha256"] == file_sha256(reference.root / "config" / "feature_flags.json"), flags
    assert_iso(cfg["loaded_at"])
    assert_iso(flags["loaded_at"])
    comps = body["components"]
    assert isinstance(comps["database"]["connected"], bool), comps
    assert comps["database"]["connected"] is True, comps
    assert isinstance(comps["database"]["pool_healthy"], bool), comps
    assert comps["websocket"]["running"] is True, comps
    _count(comps["websocket"]["connections"])
    _number(comps["system"]["cpu_usage"], 0)
    _number(comps["system"]["memory_usage"], 0)


def test_uptime_grows(api: Api) -> None:
    """§3: uptime_seconds counts up."""
    first = api.get_json("/api/health/status")["uptime_seconds"]
    time.sleep(0.3)
    second = api.get_json("/api/health/status")["uptime_seconds"]
    assert second > first, (first, second)


def test_health_metrics_shape(api: Api) -> None:
    """§3: /api/health/metrics has every metric with the right type; memory_percent in 0-100."""
    body = api.get_json("/api/health/metrics")
    assert isinstance(body["status"], str), body
    assert_iso(body["timestamp"])
    m = body["metrics"]
    _number(m["cpu_usage"], 0)
    _number(m["memory_usage"], 0)
    _number(m["memory_percent"], 0, 100)
    for key in (
        "connections_active",
        "connections_idle",
        "connection_timeouts",
        "connection_failures",
    ):
        _count(m["database"][key])
    for key in ("connections", "messages_sent", "messages_queued"):
        _count(m["websocket"][key])
    for key in ("total", "running", "completed", "failed", "cancelled"):
        _count(m["jobs"][key])
    _count(m["requests"]["total"])
    _count(m["requests"]["errors"])


def test_request_counters_are_cumulative(api: Api) -> None:
    """§3: requests.total and requests.errors count every request and error since start."""
    before = api.get_json("/api/health/metrics")["metrics"]["requests"]
    for _ in range(3):
        assert_error(api.get("/api/jobs/missing_counter_job"), 404)
    for _ in range(2):
        assert api.get("/api/health").status_code == 200
    after = api.get_json("/api/health/metrics")["metrics"]["requests"]
    # +3 errors, +2 healthy; the two metrics reads themselves may or may not be in the difference
    assert after["total"] - before["total"] >= 5, (before, after)
    assert after["total"] - before["total"] <= 7, (before, after)
    assert after["errors"] - before["errors"] == 3, (before, after)


@pytest.mark.parametrize("component", ["database", "websocket", "memory", "system", "jobs"])
def test_component_health(api: Api, component: str) -> None:
    """§3: GET /api/health/{component} gives that component's detail as a JSON object."""
    body = api.get_json(f"/api/health/{component}")
    assert isinstance(body, dict), body
    assert body, body


def test_unknown_component_is_404(api: Api) -> None:
    """§2/§3: an unknown health component is an unknown route: 404 NOT_FOUND."""
    assert_error(api.get("/api/health/flux_capacitor"), 404, "NOT_FOUND")


def test_monitor_status(api: Api) -> None:
    """§3: /api/monitor/status gives db_connected, etl_manager_running, server_status running."""
    body = api.get_json("/api/monitor/status")
    assert body["db_connected"] is True, body
    assert body["etl_manager_running"] is True, body
    assert body["server_status"] == "running", body


def test_monitor_metrics_are_true_counts(api: Api) -> None:
    """§3: /api/monitor/metrics are true counts: they agree with the job list (ok and failed)."""
    ok = api.create_job("EXTRACT", QUICK_PROFILE)
    bad = api.create_job("FULL_ETL", QUICK_PROFILE, job_id=f"mon_fail_{int(time.time() * 1000)}")
    api.wait_status(ok, {"completed"})
    api.wait_status(bad, {"failed"})

    def settled() -> bool:
        jobs = api.get_json("/api/jobs")["jobs"]
        return all(j["status"] in TERMINAL for j in jobs)

    deadline = time.monotonic() + 30
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.1)
    jobs = api.get_json("/api/jobs")["jobs"]
    metrics = api.get_json("/api/monitor/metrics")
    for key in ("total_jobs", "running_jobs", "completed_jobs", "failed_jobs"):
        _count(metrics[key])
    assert metrics["total_jobs"] == len(jobs), (metrics, len(jobs))
    assert metrics["completed_jobs"] == sum(j["status"] == "completed" for j in jobs), metrics
    assert metrics["failed_jobs"] == sum(j["status"] == "failed" for j in jobs), metrics
    assert metrics["running_jobs"] == sum(j["status"] == "running" for j in jobs), metrics
    assert metrics["completed_jobs"] >= 1, metrics
    assert metrics["failed_jobs"] >= 1, metrics
    hm = api.get_json("/api/health/metrics")["metrics"]["jobs"]
    assert hm["total"] == len(jobs), hm
    assert hm["completed"] == metrics["completed_jobs"], hm
    assert hm["failed"] == metrics["failed_jobs"], hm


def test_monitor_jobs(api: Api) -> None:
    """§3: /api/monitor/jobs gives {"jobs": [...], "total"} including a job just created."""
    job_id = api.create_job()
    body = api.get_json("/api/monitor/jobs")
    assert isinstance(body["jobs"], list), body
    _count(body["total"])
    assert body["total"] >= len(body["jobs"]) >= 1, body
    ids = {j.get("id", j.get("jobId", j.get("job_id"))) for j in body["jobs"]}
    assert job_id in ids, ids


def test_health_timestamps_are_current(api: Api) -> None:
    """§3: health timestamps are the current UTC time."""
    ts = parse_iso(api.get_json("/api/health")["timestamp"])
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    assert abs(ts.timestamp() - time.time()) < 5, ts


def test_health_is_fast(api: Api) -> None:
    """§3: health calls SHOULD answer in well under 100 ms (median of 20 here)."""
    for path in ("/api/health", "/api/health/live", "/api/health/status", "/api/health/metrics"):
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert api.get(path).status_code == 200
            times.append(time.perf_counter() - t0)
        assert statistics.median(times) < 0.1, (path, statistics.median(times))
