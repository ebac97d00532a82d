"""Performance validation: WebSocket throughput and push latency.

Checklist "2. Performance Validation / Verify WebSocket throughput": several probes each open N
WebSocket connections subscribed to M jobs, create and cancel the jobs, and time the `cancelled`
push on every connection. Every known transition must arrive on every connection once and in order;
the push latency (and pushes delivered per second) is compared with the baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from etlverify.errors import CheckFailed
from etlverify.pytest_plugin.markers import checklist_ids
from etlverify.pytest_plugin.performance import WS_METRIC

from .support import describe_metric, only

if TYPE_CHECKING:
    from etlverify.pytest_plugin.performance import PerfCollector

pytestmark = [
    pytest.mark.post_deploy,
    pytest.mark.performance,
    pytest.mark.perf_uses("ws"),
    pytest.mark.checklist("post.2_performance_validation.websocket_throughput"),
]


def test_websocket_push_throughput(perf_run: PerfCollector, request: pytest.FixtureRequest) -> None:
    """Every push delivered once and in order; push latency and rate vs baseline."""
    group = perf_run.group(request, "ws")
    f = group.facts
    rates = ", ".join(f"{r:.0f}" for r in f["messages_per_s"])
    measured = [
        f"measured WebSocket: {f['connections']} connections x {f['jobs']} jobs over "
        f"{len(f['messages_per_s'])} probes: {f['received']}/{f['expected']} transitions "
        f"delivered, {f['lost']} lost, {f['duplicates']} duplicates, {f['out_of_order']} out of "
        f"order, {f['messages']} messages ({rates} msg/s per probe)",
        describe_metric(group.metrics[WS_METRIC]),
    ]
    broken = f["lost"] or f["duplicates"] or f["out_of_order"] or f["problems"]
    if broken:
        for line in measured:
            print(line)
        raise CheckFailed(
            check=request.node.name,
            what="WebSocket pushes were lost, duplicated or out of order",
            expected="every job status transition on every subscribed connection, once, in order",
            got=f"{f['lost']} lost, {f['duplicates']} duplicates, {f['out_of_order']} out of "
            f"order of {f['expected']}"
            + ("; " + "; ".join(f["problems"][:5]) if f["problems"] else ""),
            items=checklist_ids(request.node),
        )
    perf_run.report(
        request, what="WebSocket push throughput", metrics=only([WS_METRIC]), measured=measured
    )
