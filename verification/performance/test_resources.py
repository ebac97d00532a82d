"""Performance validation: memory usage pattern and CPU utilisation under load.

Checklist "2. Performance Validation / Monitor memory usage patterns" and "Check CPU utilization":
`/api/health/metrics` is sampled during the route load. Memory must not grow steadily (a Theil-Sen
slope that is significant AND larger than a floor relative to the level; a bounded warm-up rise is
normal), and the CPU is reported, failing only when it is pegged while requests fail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from etlverify.errors import CheckFailed
from etlverify.pytest_plugin.markers import checklist_ids

from .support import median

if TYPE_CHECKING:
    from etlverify.measure import ServerTrace
    from etlverify.pytest_plugin.performance import PerfCollector

#: Steady growth: Kendall p below this ...
GROWTH_ALPHA = 0.01
#: ... and a fitted rise over the load larger than this share of the mean level.
GROWTH_FLOOR = 0.05
#: CPU "pegged": this many consecutive samples at or above this percent of one core.
PEGGED_PCT, PEGGED_SAMPLES = 95.0, 3
#: ... while more than this share of requests failed.
PEGGED_ERROR_PCT = 1.0
MIN_SAMPLES = 5

pytestmark = [pytest.mark.post_deploy, pytest.mark.performance, pytest.mark.perf_uses("routes")]


def _trace(perf_run: PerfCollector, request: pytest.FixtureRequest) -> ServerTrace:
    trace = perf_run.group(request, "routes").trace
    if trace is None or len(trace.samples) - trace.failed < MIN_SAMPLES:
        got = "no samples" if trace is None else f"{len(trace.samples) - trace.failed} ok samples"
        raise CheckFailed(
            check=request.node.name,
            what="/api/health/metrics could not be sampled during the load",
            expected=f">= {MIN_SAMPLES} successful samples",
            got=got,
            items=checklist_ids(request.node),
        )
    return trace


@pytest.mark.checklist("post.2_performance_validation.monitor_memory_usage")
def test_memory_usage_pattern(perf_run: PerfCollector, request: pytest.FixtureRequest) -> None:
    """No steady memory growth under load (significant slope above the floor fails)."""
    trace = _trace(perf_run, request)
    _, values = trace.series("memory_usage")
    if len(values) < MIN_SAMPLES:
        raise CheckFailed(
            check=request.node.name,
            what="metrics.memory_usage missing from /api/health/metrics",
            expected=f"a number in >= {MIN_SAMPLES} samples",
            got=f"{len(values)} samples with it",
            items=checklist_ids(request.node),
        )
    fit = trace.trend("memory_usage")
    _, pct = trace.series("memory_percent")
    mib = 1024.0 * 1024.0
    line = (
        f"measured memory: {min(values) / mib:.1f}-{max(values) / mib:.1f} MiB over "
        f"{fit.span_s:.0f} s ({len(values)} samples), Theil-Sen slope "
        f"{fit.slope_per_s / 1024:.1f} KiB/s, fitted rise {100 * fit.relative_growth:.2f}% of "
        f"the mean, Kendall p={fit.p_value:.2g}"
        + (f", memory_percent peak {max(pct):.1f}%" if pct else "")
    )
    print(line)
    request.node.user_properties.append(("memory_trend", fit.to_json()))
    if fit.steady_growth(alpha=GROWTH_ALPHA, min_relative=GROWTH_FLOOR):
        raise CheckFailed(
            check=request.node.name,
            what="memory grows steadily under load",
            expected=f"no significant growth above {100 * GROWTH_FLOOR:g}% of the level over the "
            f"load (Kendall p < {GROWTH_ALPHA:g} and rise > floor)",
            got=line.removeprefix("measured memory: "),
            items=checklist_ids(request.node),
        )


@pytest.mark.checklist("post.2_performance_validation.cpu_utilization")
def test_cpu_utilization(perf_run: PerfCollector, request: pytest.FixtureRequest) -> None:
    """CPU under load is reported; pegged at 100% while requests fail is a failure."""
    trace = _trace(perf_run, request)
    _, cpu = trace.series("cpu_usage")
    if not cpu:
        raise CheckFailed(
            check=request.node.name,
            what="metrics.cpu_usage missing from /api/health/metrics",
            expected="a number in every sample",
            got="none",
            items=checklist_ids(request.node),
        )
    # The first sample's CPU covers the time since the previous poll of the process, not the load.
    steady = cpu[1:] or cpu
    streak = longest = 0
    for value in steady:
        streak = streak + 1 if value >= PEGGED_PCT else 0
        longest = max(longest, streak)
    metrics = perf_run.group(request, "routes").metrics.values()
    attempts = sum(m.count + m.errors for m in metrics)
    error_pct = 100.0 * sum(m.errors for m in metrics) / attempts if attempts else 0.0
    line = (
        f"measured cpu_usage: median {median(steady):.1f}%, max {max(steady):.1f}% over "
        f"{len(steady)} samples; longest run at >= {PEGGED_PCT:g}%: {longest} samples; "
        f"request errors {error_pct:.2f}%"
    )
    print(line)
    request.node.user_properties.append(("cpu_usage", line))
    if longest >= PEGGED_SAMPLES and error_pct > PEGGED_ERROR_PCT:
        raise CheckFailed(
            check=request.node.name,
            what="CPU pegged while requests fail",
            expected=f"CPU below {PEGGED_PCT:g}% or no more than {PEGGED_ERROR_PCT:g}% errors",
            got=line.removeprefix("measured cpu_usage: "),
            items=checklist_ids(request.node),
        )
