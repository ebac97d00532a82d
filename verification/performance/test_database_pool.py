"""Performance validation: database connection pooling under concurrent job creation.

Checklist "2. Performance Validation / Validate database connection pooling": N users create jobs
concurrently while `/api/health/metrics` is polled. The pool's counters must be present and sane,
no connection timeouts or failures may be added, every job creation must succeed, and the active
connections must return to their resting level after the load (no leaked connections). Job
creation times are compared with the baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from etlverify.errors import CheckFailed
from etlverify.pytest_plugin.markers import checklist_ids
from etlverify.pytest_plugin.performance import POOL_METRIC

from .scenarios import DB_FIELDS
from .support import describe_metric, only

if TYPE_CHECKING:
    from etlverify.pytest_plugin.performance import PerfCollector

pytestmark = [
    pytest.mark.post_deploy,
    pytest.mark.performance,
    pytest.mark.perf_uses("pool"),
    pytest.mark.checklist("post.2_performance_validation.validate_database_connection"),
]


def _problems(facts: dict[str, Any]) -> list[str]:
    """Everything wrong with the pool's counters over the load."""
    samples = [s for s in facts["samples"] if s is not None]
    if not samples or facts["before"] is None:
        return ["no `metrics.database` block in /api/health/metrics"]
    out: list[str] = []
    for name in DB_FIELDS:
        bad = [s.get(name) for s in samples if not _count(s.get(name))]
        if bad:
            out.append(f"database.{name} is not a non-negative count (got {bad[0]!r})")
    if out:
        return out
    first, last = samples[0], samples[-1]
    for name in ("connection_timeouts", "connection_failures"):
        if last[name] > first[name]:
            out.append(f"database.{name} rose from {first[name]} to {last[name]} under the load")
    after = facts["after"] or last
    if after["connections_active"] > first["connections_active"]:
        out.append(
            f"database.connections_active stayed at {after['connections_active']} after the "
            f"load (resting level {first['connections_active']}): connections not returned"
        )
    if facts["errors"]:
        out.append(f"{facts['errors']} job creations failed: {facts['error_kinds']}")
    return out


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def test_database_connection_pooling(
    perf_run: PerfCollector, request: pytest.FixtureRequest
) -> None:
    """Pool counters sane, no new timeouts/failures, connections returned; creation vs baseline."""
    group = perf_run.group(request, "pool")
    facts = group.facts
    samples = [s for s in facts["samples"] if s]
    peak = max((s.get("connections_active") or 0 for s in samples), default=0)
    measured = [
        f"measured pool: {facts['jobs_created']} jobs created, {facts['errors']} errors, "
        f"peak connections_active {peak}, before {facts['before']}, after {facts['after']}",
        describe_metric(group.metrics[POOL_METRIC]),
    ]
    problems = _problems(facts)
    if problems:
        for line in measured:
            print(line)
        raise CheckFailed(
            check=request.node.name,
            what="the database connection pool misbehaved under concurrent job creation",
            expected="sane counters, no new timeouts/failures, connections returned, no errors",
            got="; ".join(problems),
            items=checklist_ids(request.node),
        )
    perf_run.report(
        request,
        what="concurrent job creation",
        metrics=only([POOL_METRIC]),
        measured=measured,
    )
