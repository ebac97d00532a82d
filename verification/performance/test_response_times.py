"""Performance validation: response times of the key routes against the baseline.

Checklist "2. Performance Validation / Compare response times with baseline" and the success
criterion "Response times within 10% of baseline": an open-model load over GET /api/health,
GET /api/jobs, GET /api/jobs/{id} and POST /api/jobs at the target rate, split into trial windows,
judged by `compare()` (tolerance and a Mann-Whitney test per statistic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from etlverify.pytest_plugin.performance import ROUTE_METRICS

from .support import describe_metric, is_latency_stat, only

if TYPE_CHECKING:
    from etlverify.pytest_plugin.performance import PerfCollector

pytestmark = [
    pytest.mark.post_deploy,
    pytest.mark.performance,
    pytest.mark.perf_uses("routes"),
]


@pytest.mark.checklist(
    "post.2_performance_validation.compare_response_times",
    "success.deployment_success.response_times_within",
)
def test_response_times_within_baseline(
    perf_run: PerfCollector, request: pytest.FixtureRequest
) -> None:
    """Compare response times with baseline: every latency statistic of every key route."""
    routes = perf_run.group(request, "routes")
    measured = [describe_metric(routes.metrics[name]) for name in ROUTE_METRICS]
    perf_run.report(
        request,
        what="response times of the key routes",
        metrics=only(ROUTE_METRICS),
        stats=is_latency_stat,
        measured=measured,
    )
