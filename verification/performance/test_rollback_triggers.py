"""Performance validation: the checklist's rollback triggers evaluated on the measured run.

"Rollback Triggers / Response time degradation > 50%" and "Error rate increases > 200% from
baseline": the critical triggers are evaluated on the key routes' load (the long, open-model one)
against the baseline; this test fails when either of these two fired and reports the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from etlverify.baseline import TriggerState
from etlverify.errors import CheckFailed
from etlverify.pytest_plugin.markers import checklist_ids

if TYPE_CHECKING:
    from etlverify.pytest_plugin.performance import PerfCollector

#: trigger name in `baseline/triggers.py` -> the checklist item it decides here
OWNED = {
    "response_time_degradation": "rollback.critical_rollback.response_time_degradation",
    "error_rate_increase": "rollback.critical_rollback.error_rate_increases",
}

pytestmark = [
    pytest.mark.post_deploy,
    pytest.mark.performance,
    pytest.mark.rollback,
    pytest.mark.perf_uses("routes"),
    pytest.mark.checklist(*OWNED.values()),
]


def test_no_rollback_trigger_fired(perf_run: PerfCollector, request: pytest.FixtureRequest) -> None:
    """Response time degradation > 50% and error rate increase > 200% have not fired."""
    perf_run.group(request, "routes")
    triggers = perf_run.triggers(("routes",))
    if triggers is None:
        pytest.skip(perf_run.no_baseline_reason())
    foreign = perf_run.foreign_reason()
    if foreign:
        pytest.skip(f"INCONCLUSIVE: {foreign}")
    for trigger in triggers:
        print(trigger.line())
    request.node.user_properties.append(("rollback_triggers", [t.to_json() for t in triggers]))
    owned = [t for t in triggers if t.name in OWNED]
    fired = [t for t in owned if t.fired]
    if fired:
        raise CheckFailed(
            check=request.node.name,
            what=f"rollback trigger fired against baseline {perf_run.baseline_path}",
            expected="response time within +50% and error rate within +200% of the baseline",
            got="\n          ".join(t.line() for t in fired),
            items=checklist_ids(request.node),
        )
    unknown = [t for t in owned if t.state is TriggerState.UNKNOWN]
    if unknown:
        pytest.skip("; ".join(t.line() for t in unknown))
