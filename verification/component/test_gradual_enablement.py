"""Checklist 3.1 (gradual feature enablement): the three phase-2 components at 50% together.

The per-component raises to 50% live beside each component's suite (test_logger.py,
test_exception.py, test_request_handler.py); here all three are at 50% at once and ordinary traffic
must cause no error answers while health latency and resource metrics stay sane.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

import pytest

from .rollout import TERMINAL, fnv1a_bucket, percentile, request_counters, sample_user_ids

if TYPE_CHECKING:
    from collections.abc import Callable

    from .rollout import RolloutChecker

FLAGS = ("new_logger_system", "new_exception_system", "new_request_handler")

pytestmark = [
    pytest.mark.component,
    pytest.mark.logger,
    pytest.mark.exception,
    pytest.mark.request_handler,
    pytest.mark.deploy,
]


@pytest.mark.monitoring
@pytest.mark.destructive
@pytest.mark.checklist("deploy.phase3.3_1_gradual_feature.error_rates_performance")
def test_error_rates_and_performance_at_50_percent(
    rollout: RolloutChecker,
    etl_api: Any,
    etl_expect: Any,
    etl_jobs: Any,
    record_metric: Callable[[str, object], None],
) -> None:
    """3.1 Check error rates and performance metrics: no errors from normal traffic."""
    rollout.flags.set(dict.fromkeys(FLAGS, True), dict.fromkeys(FLAGS, 50))
    for flag in FLAGS:
        rollout.check_exposure(flag, 50, sample=200, header_sample=10)
    users = sample_user_ids(40)
    exposed = sum(fnv1a_bucket(u) < 50 for u in users)
    record_metric("gradual_sample_users_exposed", f"{exposed}/{len(users)}")

    deltas: list[int] = []
    for _attempt in range(3):  # other clients' errors can only add: retry for a quiet window
        _, errors_before = request_counters(etl_api, etl_expect)
        bad: list[str] = []
        job_id = etl_jobs.create(profile="quick")
        for i, user in enumerate(users):
            h = {"X-User-Id": user}
            paths = ("/api/health", "/api/jobs", f"/api/jobs/{job_id}", "/api/monitor/status")
            path = paths[i % len(paths)]
            resp = etl_api.get(path, headers=h)
            if resp.status_code != 200:
                bad.append(f"GET {path} as {user}: HTTP {resp.status_code}")
        final = etl_jobs.wait_for(job_id, statuses=TERMINAL, timeout=30.0)
        etl_expect.that(
            not bad and final["status"] == "completed",
            what="ordinary traffic at 50% rollout succeeds",
            expected="HTTP 200 for every request, the quick job completed",
            got=f"{bad[:3]}, job {final['status']}",
        )
        _, errors_after = request_counters(etl_api, etl_expect)
        deltas.append(errors_after - errors_before)
        if deltas[-1] == 0:
            break
    etl_expect.that(
        0 in deltas,
        what="/api/health/metrics requests.errors does not rise from error-free traffic",
        expected="a rise of 0 in at least one of 3 attempts",
        got=f"rises of {deltas}",
    )

    latencies: list[float] = []
    for i in range(100):
        start = time.perf_counter()
        etl_expect.status(etl_api.get("/api/health", headers={"X-User-Id": users[i % 40]}), 200)
        latencies.append((time.perf_counter() - start) * 1000)
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    record_metric("gradual_health_p50_ms", round(p50, 2))
    record_metric("gradual_health_p95_ms", round(p95, 2))
    resp = etl_expect.status(etl_api.get("/api/health/metrics"), 200)
    metrics = etl_expect.json_fields(
        resp, {"metrics.memory_percent": (int, float), "metrics.cpu_usage": (int, float)}
    )["metrics"]
    record_metric("gradual_memory_percent", metrics["memory_percent"])
    record_metric("gradual_cpu_usage", metrics["cpu_usage"])
    if p50 >= 100:
        warnings.warn(
            f"health p50 {p50:.0f} ms at 50% rollout; contract 3 says SHOULD be well under 100 ms",
            UserWarning,
            stacklevel=1,
        )
    etl_expect.that(
        p95 < 1000 and metrics["memory_percent"] < 95,
        what="performance metrics stay sane at 50% rollout",
        expected="health p95 under 1 s, memory_percent under 95 (rollback trigger)",
        got=f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, memory_percent {metrics['memory_percent']}, "
        f"cpu_usage {metrics['cpu_usage']}",
    )
