"""Critical rollback triggers: each is measured now and must not be firing.

Checklist "Rollback Triggers and Procedures / Critical Rollback Triggers". Where the target has
fault switches (`etl_faults`), the same rule is shown to fire when the condition is induced, so a
quiet verdict means "measured and fine", not "cannot see".
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .support import (
    db_failure_rate,
    error_rate_increase,
    median,
    memory_sustained,
    response_time_degradation,
    unavailability,
)

pytestmark = [pytest.mark.post_deploy, pytest.mark.rollback, pytest.mark.deployment_state]

UNAVAILABLE = "rollback.critical_rollback.crashes_unavailability_5"
ERROR_RATE = "rollback.critical_rollback.error_rate_increases"
LATENCY = "rollback.critical_rollback.response_time_degradation"
MEMORY = "rollback.critical_rollback.memory_usage_95"
DB_FAILURES = "rollback.critical_rollback.database_connection_failures"


def _normal_traffic(etl_api: Any, n: int = 30) -> list[int]:
    """A window of ordinary requests (health, job list, monitor); their statuses."""
    statuses = []
    for i in range(n):
        path = ("/api/health", "/api/jobs", "/api/monitor/metrics")[i % 3]
        statuses.append(int(etl_api.get(path).status_code))
    return statuses


def _latencies(etl_api: Any, path: str, n: int = 15) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        etl_api.get(path)
        out.append((time.perf_counter() - started) * 1000)
    return out


@pytest.mark.monitoring
@pytest.mark.smoke
@pytest.mark.checklist(UNAVAILABLE)
def test_service_is_available(
    etl_api: Any, etl_expect: Any, request: pytest.FixtureRequest
) -> None:
    """System crashes or unavailability > 5 minutes: health answers; outages counted."""
    probes: list[tuple[float, bool]] = []
    for _ in range(10):
        try:
            ok = etl_api.get("/api/health", timeout=2).status_code == 200
        except Exception:
            ok = False
        probes.append((time.monotonic(), ok))
        time.sleep(0.1)
    sampler = request.config.pluginmanager.get_plugin("etlverify-post-deploy-uptime")
    if sampler is not None:
        run = [(s.at, s.ok) for s in sampler.snapshot() if not s.planned]
        probes = sorted(run + probes)
    verdict = unavailability(probes)
    print(f"unavailability trigger: {verdict.measured}")
    etl_expect.that(
        not verdict.firing and probes[-1][1],
        what="unavailability trigger",
        expected="health answering now, no outage > 5 min during the run",
        got=verdict.measured,
    )


@pytest.mark.monitoring
@pytest.mark.checklist(ERROR_RATE)
def test_error_rate_is_not_rising(etl_api: Any, etl_expect: Any, read_metrics: Any) -> None:
    """Error rate increases > 200% from baseline: normal traffic gives no 5xx, rate not 3x baseline.

    Without a stored baseline the baseline is the server's own error rate since it started
    (cumulative `requests.errors / requests.total`), and the window is this test's normal traffic.
    """
    before = read_metrics()["requests"]
    statuses = _normal_traffic(etl_api)
    after = read_metrics()["requests"]
    baseline = before["errors"] / before["total"] if before["total"] else None
    # the metrics reads themselves are counted in the window
    verdict = error_rate_increase(
        after["errors"] - before["errors"], after["total"] - before["total"], baseline
    )
    print(f"error rate trigger: {verdict.measured}")
    server_errors = [s for s in statuses if s >= 500]
    etl_expect.that(
        not server_errors and not verdict.firing,
        what="error rate trigger",
        expected="no 5xx in normal traffic, window error rate not above 3x the baseline",
        got=f"{len(server_errors)} 5xx of {len(statuses)}; {verdict.measured}",
    )


@pytest.mark.monitoring
@pytest.mark.destructive
@pytest.mark.usefixtures("etl_exclusive")
@pytest.mark.checklist(ERROR_RATE)
def test_error_rate_rise_is_detected(
    etl_api: Any, etl_expect: Any, read_metrics: Any, etl_faults: Any
) -> None:
    """Error rate increases > 200% from baseline: induced errors make the trigger fire."""
    a = read_metrics()["requests"]
    _normal_traffic(etl_api)
    b = read_metrics()["requests"]
    baseline = (b["errors"] - a["errors"]) / max(1, b["total"] - a["total"])
    etl_faults.set(errors={"fraction": 1.0, "status": 500, "route_prefix": "/api/jobs"})
    for _ in range(20):
        etl_api.get("/api/jobs")
    c = read_metrics()["requests"]
    verdict = error_rate_increase(c["errors"] - b["errors"], c["total"] - b["total"], baseline)
    etl_expect.that(
        verdict.firing,
        what="error rate trigger with injected 500s on /api/jobs",
        expected="firing",
        got=verdict.measured,
    )


@pytest.mark.destructive
@pytest.mark.usefixtures("etl_exclusive")
@pytest.mark.performance
@pytest.mark.checklist(LATENCY)
def test_response_time_degradation_is_detected(
    etl_api: Any, etl_expect: Any, etl_faults: Any
) -> None:
    """Response time degradation > 50%: injected latency makes the trigger fire."""
    baseline = median(_latencies(etl_api, "/api/jobs"))
    etl_faults.set(
        latency={"ms": max(100.0, baseline * 3), "fraction": 1.0, "route_prefix": "/api/jobs"}
    )
    now = median(_latencies(etl_api, "/api/jobs", n=7))
    verdict = response_time_degradation(now, baseline)
    etl_expect.that(
        verdict.firing,
        what="response time trigger with injected latency",
        expected="firing",
        got=verdict.measured,
    )
    verdict_quiet = response_time_degradation(baseline, baseline)
    etl_expect.that(
        not verdict_quiet.firing,
        what="the rule on equal medians",
        expected="not firing",
        got=verdict_quiet.measured,
    )


@pytest.mark.monitoring
@pytest.mark.checklist(MEMORY)
def test_memory_is_not_sustained_above_95(etl_expect: Any, read_metrics: Any) -> None:
    """Memory usage > 95% sustained: memory_percent not above 95% throughout."""
    samples = []
    for _ in range(5):
        samples.append(float(read_metrics()["memory_percent"]))
        time.sleep(0.4)
    verdict = memory_sustained(samples)
    print(f"memory trigger: {verdict.measured}")
    etl_expect.that(
        all(0 <= s <= 100 for s in samples),
        what="memory_percent range",
        expected="0-100",
        got=samples,
    )
    etl_expect.that(
        not verdict.firing, what="memory trigger", expected="not firing", got=verdict.measured
    )
    induced = memory_sustained([96.0, 97.5, 99.0])
    etl_expect.that(
        induced.firing, what="the rule on [96, 97.5, 99]", expected="firing", got=induced.measured
    )


@pytest.mark.monitoring
@pytest.mark.checklist(DB_FAILURES)
def test_database_connection_failures_are_rare(
    etl_api: Any, etl_expect: Any, read_metrics: Any
) -> None:
    """Database connection failures > 10/minute: the counter's rise over a window of DB traffic."""
    first = read_metrics()
    started = time.monotonic()
    for _ in range(10):
        etl_api.get("/api/jobs")
        etl_api.get("/api/health/database")
        time.sleep(0.15)
    last = read_metrics()
    window = time.monotonic() - started
    delta = last["database"]["connection_failures"] - first["database"]["connection_failures"]
    verdict = db_failure_rate(delta, window)
    print(f"database trigger: {verdict.measured}")
    etl_expect.that(
        not verdict.firing,
        what="database connection failure trigger",
        expected="<= 10/min",
        got=verdict.measured,
    )


@pytest.mark.monitoring
@pytest.mark.destructive
@pytest.mark.usefixtures("etl_exclusive")
@pytest.mark.checklist(DB_FAILURES)
def test_database_failures_are_detected(
    etl_api: Any, etl_expect: Any, read_metrics: Any, etl_faults: Any
) -> None:
    """Database connection failures > 10/minute: injected failures make it fire."""
    first = read_metrics()
    started = time.monotonic()
    etl_faults.set(database_failures=1.0)
    body = {"type": "EXTRACT", "source_config": "rows=1", "target_config": "sink=memory"}
    for _ in range(8):  # writes and pings go to the database
        etl_api.post("/api/jobs", json=body)
        etl_api.get("/api/health/database")
    etl_faults.clear()
    last = read_metrics()
    delta = last["database"]["connection_failures"] - first["database"]["connection_failures"]
    verdict = db_failure_rate(delta, time.monotonic() - started)
    etl_expect.that(
        verdict.firing,
        what="database trigger with injected failures",
        expected="firing",
        got=verdict.measured,
    )
