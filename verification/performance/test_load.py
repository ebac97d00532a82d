"""Performance validation: throughput at the target rate and concurrent user load.

Checklist "2. Performance Validation / Test concurrent user load": the open-model route load must
be served at the intended rate (achieved vs intended, nothing left unsent), and a closed-model load
of N users looping over the read routes must run without errors; both are compared with the
baseline (throughput, error rate, and the users' service times).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from etlverify.errors import CheckFailed
from etlverify.pytest_plugin.markers import checklist_ids
from etlverify.pytest_plugin.performance import ROUTE_METRICS, USERS_METRIC

from .support import describe_metric, only

if TYPE_CHECKING:
    from etlverify.pytest_plugin.performance import PerfCollector

ITEM = "post.2_performance_validation.concurrent_user_load"
#: Below this share of the intended rate the target did not keep up (open model: arrivals do not
#: wait for answers, so only errors and unsent requests lower it).
MIN_ACHIEVED = 0.95

pytestmark = [pytest.mark.post_deploy, pytest.mark.performance, pytest.mark.checklist(ITEM)]


@pytest.mark.perf_uses("routes")
def test_throughput_at_target_rate(perf_run: PerfCollector, request: pytest.FixtureRequest) -> None:
    """The key routes are served at the target rate; throughput and error rate vs baseline."""
    facts = perf_run.group(request, "routes").facts
    intended, achieved = float(facts["intended_rps"]), float(facts["achieved_rps"])
    attempts = int(facts["attempts"])
    late_pct = 100.0 * int(facts["late"]) / attempts if attempts else 0.0
    measured = [
        f"measured throughput: {achieved:.1f} rps achieved of {intended:g} intended "
        f"({100.0 * achieved / intended:.1f}%), {facts['unsent']} unsent, {facts['late']} sent "
        f"late ({late_pct:.1f}%, latency still counted from the intended time), longest outage "
        f"{facts['longest_outage_s']:.2f} s"
    ]
    if achieved < MIN_ACHIEVED * intended or facts["unsent"]:
        for line in measured:
            print(line)
        raise CheckFailed(
            check=request.node.name,
            what="the target did not keep up with the target rate",
            expected=f">= {100 * MIN_ACHIEVED:g}% of {intended:g} rps answered, nothing unsent",
            got=f"{achieved:.1f} rps, {facts['unsent']} unsent of {attempts}",
            items=checklist_ids(request.node),
        )
    perf_run.report(
        request,
        what="throughput at the target rate",
        metrics=only(ROUTE_METRICS),
        stats=lambda stat: stat in ("throughput", "error_rate"),
        measured=measured,
    )


@pytest.mark.perf_uses("users")
def test_concurrent_user_load(perf_run: PerfCollector, request: pytest.FixtureRequest) -> None:
    """N users looping over the read routes: no errors; service times and throughput vs baseline."""
    group = perf_run.group(request, "users")
    metric = group.metrics[USERS_METRIC]
    measured = [f"{group.facts['users']} users", describe_metric(metric)]
    if metric.errors:
        for line in measured:
            print(line)
        raise CheckFailed(
            check=request.node.name,
            what=f"{group.facts['users']} concurrent users got errors",
            expected="no errors (timeouts, connection errors, non-200 answers)",
            got=f"{metric.errors} of {metric.count + metric.errors}: {group.facts['error_kinds']}",
            items=checklist_ids(request.node),
        )
    perf_run.report(
        request,
        what=f"{group.facts['users']} concurrent users",
        metrics=only([USERS_METRIC]),
        measured=measured,
    )
