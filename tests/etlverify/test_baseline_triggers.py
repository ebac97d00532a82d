"""The checklist's rollback triggers as rules over a run and its baseline."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from etlverify.baseline import TriggerConfig, TriggerState, evaluate_triggers
from etlverify.measure import (
    LatencyRecorder,
    LoadParameters,
    MetricResult,
    RunResult,
    ServerSample,
    ServerTrace,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

ROUTE = "GET /api/jobs"
LOAD = LoadParameters(model="open", duration_s=60.0, windows=5, rate_rps=100.0)


def metric(latency_ms: float, *, n: int = 200, errors: int = 0) -> MetricResult:
    rec = LatencyRecorder(windows=5, window_s=12.0)
    rec.touch(ROUTE)
    for w in range(5):
        for _ in range(n):
            rec.record(ROUTE, latency_ms / 1000.0, window=w)
        for _ in range(errors):
            rec.record_error(ROUTE, "http_500", window=w)
    return rec.result(ROUTE)


def run(
    m: MetricResult,
    *,
    server: ServerTrace | None = None,
    outage_s: float = 0.0,
    duration_s: float = 60.0,
) -> RunResult:
    return RunResult(
        metrics={ROUTE: m},
        load=LOAD,
        started_at="2026-11-29T17:00:00Z",
        duration_s=duration_s,
        longest_outage_s=outage_s,
        server=server,
    )


def trace(field: str, values: Sequence[float | None], interval_s: float = 1.0) -> ServerTrace:
    # A None value stands for a failed poll.
    samples = []
    for i, v in enumerate(values):
        update: dict[str, Any] = {field: v}
        samples.append(replace(ServerSample(t_s=i * interval_s, ok=v is not None), **update))
    return ServerTrace(samples=tuple(samples), interval_s=interval_s)


def states(baseline: MetricResult, current: RunResult) -> dict[str, TriggerState]:
    return {t.name: t.state for t in evaluate_triggers({ROUTE: baseline}, current)}


def test_quiet_run_clears_what_it_can_observe() -> None:
    got = states(metric(8), run(metric(8), server=trace("memory_percent", [40] * 10)))
    assert got == {
        "unavailability": TriggerState.CLEAR,
        "error_rate_increase": TriggerState.CLEAR,
        "response_time_degradation": TriggerState.CLEAR,
        "memory_sustained": TriggerState.CLEAR,
        "database_connection_failures": TriggerState.UNKNOWN,  # no counter in the samples
    }


def test_response_time_degradation_over_50_percent() -> None:
    assert states(metric(8), run(metric(16)))["response_time_degradation"] is TriggerState.FIRED
    assert states(metric(8), run(metric(11)))["response_time_degradation"] is TriggerState.CLEAR
    # +100% but only 0.2 ms: under the absolute floor.
    tiny = states(metric(0.2), run(metric(0.4)))
    assert tiny["response_time_degradation"] is TriggerState.CLEAR


def test_error_rate_increase_over_200_percent_with_floor() -> None:
    # Baseline 0 errors: 5% errors (50) fires; 2 errors in 1000 (0.2%) is under the 1 pp floor.
    assert states(metric(8), run(metric(8, errors=10)))["error_rate_increase"] is TriggerState.FIRED
    low = RunResult(**{**run(metric(8)).__dict__, "metrics": {ROUTE: _with_errors(2)}})
    assert states(metric(8), low)["error_rate_increase"] is TriggerState.CLEAR
    # Baseline ~2%: 150% more is not a trigger, 250% more is.
    base = metric(8, errors=4)
    assert states(base, run(metric(8, errors=10)))["error_rate_increase"] is TriggerState.CLEAR
    assert states(base, run(metric(8, errors=14)))["error_rate_increase"] is TriggerState.FIRED


def _with_errors(total: int) -> MetricResult:
    rec = LatencyRecorder(windows=5, window_s=12.0)
    for w in range(5):
        for _ in range(200):
            rec.record(ROUTE, 0.008, window=w)
    for i in range(total):
        rec.record_error(ROUTE, "timeout", window=i % 5)
    return rec.result(ROUTE)


def test_memory_over_95_percent_sustained() -> None:
    high = trace("memory_percent", [96.0] * 70)
    assert states(metric(8), run(metric(8), server=high))["memory_sustained"] is TriggerState.FIRED
    spike = trace("memory_percent", [50.0] * 30 + [97.0] * 5 + [50.0] * 35)
    got = states(metric(8), run(metric(8), server=spike))
    assert got["memory_sustained"] is TriggerState.CLEAR
    # A 20 s run above 95% throughout: sustained for everything the run could see.
    short = trace("memory_percent", [97.0] * 20)
    got = states(metric(8), run(metric(8), server=short, duration_s=20))
    assert got["memory_sustained"] is TriggerState.FIRED
    assert states(metric(8), run(metric(8)))["memory_sustained"] is TriggerState.UNKNOWN


def test_database_connection_failures_per_minute() -> None:
    burst = trace("connection_failures", [0, 2, 5, 9, 14, 20], interval_s=5.0)
    got = states(metric(8), run(metric(8), server=burst))
    assert got["database_connection_failures"] is TriggerState.FIRED
    slow = trace("connection_failures", list(range(13)), interval_s=10.0)  # 6/minute
    got = states(metric(8), run(metric(8), server=slow))
    assert got["database_connection_failures"] is TriggerState.CLEAR
    # A counter reset (restart) counts the new value as failures, not a negative number.
    reset = trace("connection_failures", [50, 52, 3, 4], interval_s=5.0)
    result = {
        t.name: t for t in evaluate_triggers({ROUTE: metric(8)}, run(metric(8), server=reset))
    }["database_connection_failures"]
    assert result.value == 6


def test_unavailability_over_five_minutes() -> None:
    got = states(metric(8), run(metric(8), outage_s=400, duration_s=600))
    assert got["unavailability"] is TriggerState.FIRED
    got = states(metric(8), run(metric(8), outage_s=60, duration_s=60))
    assert got["unavailability"] is TriggerState.UNKNOWN  # down all along, run too short to tell
    polls = trace("memory_percent", [40.0] + [None] * 320 + [40.0])
    got = states(metric(8), run(metric(8), server=polls, duration_s=330))
    assert got["unavailability"] is TriggerState.FIRED  # from failed health polls


def test_thresholds_are_configurable_and_lines_readable() -> None:
    cfg = TriggerConfig(response_time_pct=20.0)
    results = evaluate_triggers({ROUTE: metric(8)}, run(metric(11)), cfg)
    rt = next(t for t in results if t.name == "response_time_degradation")
    assert rt.fired
    assert rt.line().startswith(
        "FIRED rollback trigger response_time_degradation: worst median-window p95"
    )
    assert rt.to_json()["state"] == "FIRED"


def metric_windows(latencies_ms: Sequence[float], *, n: int = 200) -> MetricResult:
    rec = LatencyRecorder(windows=len(latencies_ms), window_s=12.0)
    for w, latency in enumerate(latencies_ms):
        for _ in range(n):
            rec.record(ROUTE, latency / 1000.0, window=w)
    return rec.result(ROUTE)


def _response_trigger(base: MetricResult, cur: MetricResult) -> Any:
    results = evaluate_triggers({ROUTE: base}, run(cur), TriggerConfig())
    return next(r for r in results if r.name == "response_time_degradation")


def test_response_time_trigger_ignores_thin_percentiles() -> None:
    """A p95 resting on a handful of samples cannot order a rollback."""
    result = _response_trigger(metric(10.0, n=10), metric(40.0, n=10))
    assert result.state is TriggerState.UNKNOWN
    assert "too thin" in result.reason


def test_response_time_trigger_needs_more_than_one_noisy_window() -> None:
    """+300% on the pooled p95 from one bad window is not a degradation: the median window is
    unchanged."""
    result = _response_trigger(metric(10.0), metric_windows([10.0, 10.0, 10.0, 10.0, 40.0]))
    assert result.state is TriggerState.CLEAR
    assert "(+0.0%)" in result.reason


def test_response_time_trigger_fires_on_a_sustained_degradation() -> None:
    """Every window 2x slower than every baseline window: FIRED, with its p-value."""
    result = _response_trigger(
        metric_windows([10.0, 10.5, 9.5, 10.2, 9.8]), metric_windows([20.0, 21.0, 19.0, 20.5, 19.5])
    )
    assert result.state is TriggerState.FIRED
    assert "p=" in result.reason


def _windows(latencies_ms: Sequence[float], *, n: int = 200) -> MetricResult:
    """One window per latency (each window's samples all at that latency)."""
    rec = LatencyRecorder(windows=len(latencies_ms), window_s=12.0)
    rec.touch(ROUTE)
    for w, ms in enumerate(latencies_ms):
        for _ in range(n):
            rec.record(ROUTE, ms / 1000.0, window=w)
    return rec.result(ROUTE)


def _response(base: MetricResult, cur: MetricResult) -> Any:
    (t,) = [x for x in evaluate_triggers({ROUTE: base}, run(cur)) if x.name.startswith("response")]
    return t


def test_response_time_floor_follows_the_baseline_noise() -> None:
    """Issue 16: the trigger's floor is the larger of 1 ms and 3 sd of the baseline's windows, so
    under noise it does not fail before the 10% rule (a busy host: +58% of a 1.8 ms p95 with a
    fixed +1 ms floor fired; the 10% rule's noise floors all passed)."""
    quiet = _windows([1.8, 1.8, 1.8, 1.8, 1.8])
    noisy = _windows([1.2, 2.4, 1.5, 2.2, 1.7])  # sd ~0.5 ms: 3 sd ~1.5 ms
    slower = _windows([2.85, 2.8, 2.9, 2.82, 2.88])  # +58%, +1.05 ms
    assert _response(quiet, slower).state is TriggerState.FIRED
    held = _response(noisy, slower)
    assert held.state is TriggerState.CLEAR, held.reason
    assert "sd of the baseline's windows" in held.reason
    # a real +100% beyond the noise still fires
    assert _response(noisy, _windows([3.8, 3.9, 3.7, 3.85, 3.8])).state is TriggerState.FIRED


def test_response_time_needs_enough_samples_in_every_window() -> None:
    """The 10% rule's guard: a p95 needs 5 samples beyond it in each window (100 per window)."""
    base = _windows([1.0] * 5, n=200)
    thin = _windows([5.0] * 5, n=60)
    t = _response(base, thin)
    assert t.state is TriggerState.UNKNOWN
    assert "too thin" in t.reason
