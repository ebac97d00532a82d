"""The deployment checklist's critical rollback triggers, as rules over one run and its baseline.

Checklist ("Rollback Triggers and Procedures"):

- system crashes or unavailability > 5 minutes
- error rate increases > 200% from baseline
- response time degradation > 50%
- memory usage > 95% sustained
- database connection failures > 10/minute

Each rule answers FIRED, CLEAR or UNKNOWN (the run could not observe it: no server samples, a run
shorter than the rule's horizon while the condition held throughout). They are plain thresholds on
point estimates, unlike the tolerance comparison, because the checklist states them that way; each
has an absolute floor so that tiny absolute changes (0.2 -> 0.4 ms, 0 -> 1 error) cannot order a
rollback. The response-time rule also ignores metrics with too few samples beyond the percentile
(a p95 from 150 samples rests on 8 of them, and fired at +126% on pure noise in a Locust A/A run)
and needs the per-window values to differ significantly (two-sided Mann-Whitney U), so that one
noisy window cannot order a rollback either.

A caller that judges a signal other than the run's own requests (a watch judging a target's request
counters, Prometheus or its log) calls the rules one by one (`error_rate_trigger`,
`response_time_trigger`, `error_lines_trigger`) and names the signal in `decided_by`; the gate and
Locust use `evaluate_triggers`, whose results have no `decided_by`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from scipy import stats as sps

from etlverify.baseline.noise import spread, tail_needed

if TYPE_CHECKING:
    from collections.abc import Mapping

    from etlverify.measure.results import MetricResult, RunResult
    from etlverify.measure.sampler import ServerTrace

__all__ = [
    "RELATIVE_TRIGGERS",
    "TriggerConfig",
    "TriggerResult",
    "TriggerState",
    "error_lines_trigger",
    "error_rate_trigger",
    "evaluate_triggers",
    "not_judged",
    "response_time_trigger",
]

#: the triggers judged relative to a baseline: a baseline that is not comparable (another load
#: plan, other hardware, another target configuration) cannot judge them (`not_judged`)
RELATIVE_TRIGGERS = ("response_time_degradation", "error_rate_increase")


class TriggerState(StrEnum):
    """Outcome of one rollback rule."""

    CLEAR = "CLEAR"
    FIRED = "FIRED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class TriggerConfig:
    """Thresholds (checklist values) and the floors that keep them sane."""

    response_time_pct: float = 50.0
    response_time_stat: str = "p95"
    response_time_floor_ms: float = 1.0
    #: the noise floor: the change must also exceed this many sds of the baseline's windows (the
    #: 10% rule's `+3sd` on p95, `baseline.noise.spread`), so that under noise the trigger does
    #: not fail before the 10% rule (a busy host: +58% on a 1.8 ms p95 fired against +1 ms)
    response_time_sd_floor: float = 3.0
    #: samples needed beyond the percentile, on each side, for a metric to count
    response_time_min_tail: int = 20
    #: ... and in every window (the 10% rule's own guard: 5 beyond the percentile per window)
    response_time_min_window_tail: int = 5
    response_time_alpha: float = 0.05
    error_increase_pct: float = 200.0
    error_floor_pp: float = 1.0
    error_min_count: int = 5
    memory_pct: float = 95.0
    memory_sustain_s: float = 60.0
    db_failures_per_min: float = 10.0
    outage_s: float = 300.0


@dataclass(frozen=True)
class TriggerResult:
    """One rule's outcome with the number it is about."""

    name: str
    state: TriggerState
    reason: str
    value: float | None = None
    threshold: float | None = None
    #: the signal the rule was judged on, when a caller chose among several (a watch: "server
    #: counters", "Prometheus", ...); None for a run's own measurements (the gate, Locust)
    decided_by: str | None = None

    @property
    def fired(self) -> bool:
        """True when the rule orders a rollback."""
        return self.state is TriggerState.FIRED

    def line(self) -> str:
        """One line for people."""
        source = f" (source: {self.decided_by})" if self.decided_by else ""
        return f"{self.state.value} rollback trigger {self.name}{source}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (``decided_by`` only when a source was chosen)."""
        data: dict[str, Any] = {
            "name": self.name,
            "state": self.state.value,
            "reason": self.reason,
            "value": self.value,
            "threshold": self.threshold,
        }
        if self.decided_by is not None:
            data["decided_by"] = self.decided_by
        return data


def _enough_tail(result: MetricResult, stat: str, min_tail: int) -> bool:
    if not stat.startswith("p"):
        return result.count > 0
    q = float(stat[1:])
    if q >= 100.0:
        return result.count > 0
    return result.count >= math.ceil(min_tail / (1.0 - q / 100.0))


def _windows_enough(result: MetricResult, stat: str, min_tail: int) -> bool:
    """Every window holds enough samples for `stat` to rest on `min_tail` beyond it."""
    need = tail_needed(stat, min_tail)
    return need is None or all(w.count >= need for w in result.windows)


def not_judged(trigger: TriggerResult, why: str) -> TriggerResult:
    """A relative trigger that this baseline cannot judge: UNKNOWN, "not judged: <why>"."""
    if trigger.name not in RELATIVE_TRIGGERS:
        return trigger
    return replace(
        trigger,
        state=TriggerState.UNKNOWN,
        reason=f"not judged: {why} (as measured: {trigger.state.value}, {trigger.reason})",
    )


def _typical(result: MetricResult, stat: str) -> float | None:
    values = result.values(stat)
    if not values:
        return None
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2.0


def _windows_differ(cur: MetricResult, base: MetricResult, stat: str) -> float:
    """Two-sided Mann-Whitney p-value of the per-window values (1.0 when it cannot tell)."""
    a, b = cur.values(stat), base.values(stat)
    if len(a) < 2 or len(b) < 2 or len(set(a) | set(b)) == 1:
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


def _response_time(
    baseline: Mapping[str, MetricResult], current: Mapping[str, MetricResult], cfg: TriggerConfig
) -> TriggerResult:
    name, stat = "response_time_degradation", cfg.response_time_stat
    worst: tuple[float, str, float, float, float, float] | None = None
    thin: list[str] = []
    for metric, base in baseline.items():
        cur = current.get(metric)
        if cur is None:
            continue
        if not (
            _enough_tail(base, stat, cfg.response_time_min_tail)
            and _enough_tail(cur, stat, cfg.response_time_min_tail)
            and _windows_enough(base, stat, cfg.response_time_min_window_tail)
            and _windows_enough(cur, stat, cfg.response_time_min_window_tail)
        ):
            thin.append(metric)
            continue
        # The median of the per-window values, not the pooled value: a pooled p95 is carried by
        # a few stalled windows, and fired in 2 of 20 no-change runs of the gate benchmark.
        b, c = _typical(base, stat), _typical(cur, stat)
        if b is None or c is None or b <= 0:
            continue
        pct = 100.0 * (c - b) / b
        floor = max(
            cfg.response_time_floor_ms, cfg.response_time_sd_floor * spread(base.values(stat))
        )
        beyond = pct > cfg.response_time_pct and c - b > floor
        p = _windows_differ(cur, base, stat) if beyond else 1.0
        if worst is None or pct > worst[0]:
            worst = (pct, metric, b, c, p, floor)
    if worst is None:
        why = f"no metric has a {stat} on both sides"
        if thin:
            why += f" with enough samples ({len(thin)} too thin: {', '.join(sorted(thin)[:3])})"
        return TriggerResult(name, TriggerState.UNKNOWN, why)
    pct, metric, b, c, p, floor = worst
    detail = f"worst median-window {stat} {metric}: {c:.3f} ms vs baseline {b:.3f} ms ({pct:+.1f}%)"
    beyond = pct > cfg.response_time_pct and c - b > floor
    # Beyond the limit on point estimates only (one noisy window) is noise, not degradation.
    fired = beyond and p < cfg.response_time_alpha
    noise = (
        f" ({cfg.response_time_sd_floor:g} sd of the baseline's windows)"
        if floor > cfg.response_time_floor_ms
        else ""
    )
    limit = f"limit +{cfg.response_time_pct:g}% and +{floor:.3g} ms{noise}"
    if beyond:
        limit += f", Mann-Whitney p={p:.2g} (needs < {cfg.response_time_alpha:g})"
    return TriggerResult(
        name,
        TriggerState.FIRED if fired else TriggerState.CLEAR,
        f"{detail}, {limit}",
        round(pct, 3),
        cfg.response_time_pct,
    )


def _rate(errors: int, attempts: int) -> float:
    return 100.0 * errors / attempts if attempts else 0.0


def _error_rate(
    baseline: Mapping[str, MetricResult],
    current: Mapping[str, MetricResult],
    cfg: TriggerConfig,
    *,
    pooled: bool = True,
) -> TriggerResult:
    name = "error_rate_increase"
    groups: list[tuple[str, int, int, int, int]] = []
    total = [0, 0, 0, 0]
    for metric, base in baseline.items():
        cur = current.get(metric)
        if cur is None:
            continue
        be, ba = base.errors, base.count + base.errors
        ce, ca = cur.errors, cur.count + cur.errors
        groups.append((metric, be, ba, ce, ca))
        for i, v in enumerate((be, ba, ce, ca)):
            total[i] += v
    if not groups:
        return TriggerResult(name, TriggerState.UNKNOWN, "no metric is in both baseline and run")
    if pooled:
        groups.insert(0, ("all routes", total[0], total[1], total[2], total[3]))
    factor = 1.0 + cfg.error_increase_pct / 100.0
    worst: tuple[float, str, float, float, int] | None = None
    fired_on: tuple[str, float, float, int] | None = None
    for metric, be, ba, ce, ca in groups:
        b, c = _rate(be, ba), _rate(ce, ca)
        # With a zero baseline any error is an "infinite" increase: the floor (in percentage
        # points and in count) is what decides then.
        if ce >= cfg.error_min_count and c - b > cfg.error_floor_pp and c > b * factor:
            fired_on = fired_on or (metric, b, c, ce)
        increase = (c - b) / b * 100.0 if b > 0 else (math.inf if c > 0 else 0.0)
        if worst is None or increase > worst[0]:
            worst = (increase, metric, b, c, ce)
    limit = (
        f"limit +{cfg.error_increase_pct:g}% and +{cfg.error_floor_pp:g} pp "
        f"and >= {cfg.error_min_count} errors"
    )
    if fired_on:
        metric, b, c, ce = fired_on
        return TriggerResult(
            name,
            TriggerState.FIRED,
            f"{metric}: {c:.2f}% errors ({ce}) vs baseline {b:.2f}%, {limit}",
            round(c, 4),
            cfg.error_increase_pct,
        )
    assert worst is not None
    _, metric, b, c, ce = worst
    return TriggerResult(
        name,
        TriggerState.CLEAR,
        f"highest: {metric} {c:.2f}% errors ({ce}) vs baseline {b:.2f}%, {limit}",
        round(c, 4),
        cfg.error_increase_pct,
    )


def error_rate_trigger(
    baseline: Mapping[str, MetricResult],
    current: Mapping[str, MetricResult],
    config: TriggerConfig | None = None,
    *,
    decided_by: str | None = None,
) -> TriggerResult:
    """The error-rate rule alone, over metrics that are one signal each (no "all routes" pool):
    how a caller judges a signal other than its own requests (a watch's server counters)."""
    result = _error_rate(baseline, current, config or TriggerConfig(), pooled=False)
    return replace(result, decided_by=decided_by)


def response_time_trigger(
    baseline: Mapping[str, MetricResult],
    current: Mapping[str, MetricResult],
    config: TriggerConfig | None = None,
    *,
    decided_by: str | None = None,
) -> TriggerResult:
    """The response-time rule alone, with its sample-count and significance guards."""
    result = _response_time(baseline, current, config or TriggerConfig())
    return replace(result, decided_by=decided_by)


def error_lines_trigger(
    base_lines: int,
    base_s: float,
    lines: int,
    span_s: float,
    config: TriggerConfig | None = None,
    *,
    decided_by: str | None = None,
) -> TriggerResult:
    """The error-rate rule on a count without attempts (ERROR lines of a log): lines a minute
    against the baseline's, with the same +200% and minimum count (a rate in percent of requests
    cannot be had from a log, so the percentage-point floor has no counterpart)."""
    cfg = config or TriggerConfig()
    name = "error_rate_increase"
    if base_s <= 0 or span_s <= 0:
        return TriggerResult(name, TriggerState.UNKNOWN, "no time observed", decided_by=decided_by)
    b, c = 60.0 * base_lines / base_s, 60.0 * lines / span_s
    factor = 1.0 + cfg.error_increase_pct / 100.0
    fired = lines >= cfg.error_min_count and c > b * factor
    limit = f"limit +{cfg.error_increase_pct:g}% and >= {cfg.error_min_count} lines"
    return TriggerResult(
        name,
        TriggerState.FIRED if fired else TriggerState.CLEAR,
        f"{lines} error line(s) in {span_s:.0f} s ({c:.2f}/min) vs baseline {b:.2f}/min "
        f"({base_lines} in {base_s:.0f} s), {limit}",
        round(c, 4),
        cfg.error_increase_pct,
        decided_by=decided_by,
    )


def _memory(trace: ServerTrace | None, cfg: TriggerConfig) -> TriggerResult:
    name = "memory_sustained"
    if trace is None:
        return TriggerResult(name, TriggerState.UNKNOWN, "no server samples")
    times, values = trace.series("memory_percent")
    if not values:
        return TriggerResult(name, TriggerState.UNKNOWN, "no memory_percent in server samples")
    span = times[-1] - times[0] + trace.interval_s
    best, start, streak_n, best_n = 0.0, None, 0, 0
    for t, v in zip(times, values, strict=True):
        if v > cfg.memory_pct:
            start = t if start is None else start
            streak_n += 1
            length = t - start + trace.interval_s
            if length > best:
                best, best_n = length, streak_n
        else:
            start, streak_n = None, 0
    # A run shorter than the horizon can still show the condition holding throughout.
    needed = min(cfg.memory_sustain_s, span)
    fired = best_n >= 3 and best >= needed - 1e-9
    peak = max(values)
    return TriggerResult(
        name,
        TriggerState.FIRED if fired else TriggerState.CLEAR,
        f"longest stretch above {cfg.memory_pct:g}%: {best:.0f} s over {best_n} samples "
        f"(needs {needed:.0f} s), peak {peak:.1f}% over {span:.0f} s observed",
        round(peak, 3),
        cfg.memory_pct,
    )


def _db_failures(trace: ServerTrace | None, cfg: TriggerConfig) -> TriggerResult:
    name = "database_connection_failures"
    if trace is None:
        return TriggerResult(name, TriggerState.UNKNOWN, "no server samples")
    times, values = trace.series("connection_failures")
    if len(values) < 2:
        return TriggerResult(name, TriggerState.UNKNOWN, "fewer than 2 connection_failures samples")
    # Per-interval increments; a drop means the counter restarted (server restart), so the new
    # value itself is the increment.
    incs = [
        (t, v - p if v >= p else v)
        for (t, v), p in zip(zip(times[1:], values[1:], strict=False), values, strict=False)
    ]
    span = times[-1] - times[0]
    worst = 0.0
    for i, (t_i, _) in enumerate(incs):
        window = sum(inc for t, inc in incs[i:] if t - t_i < 60.0)
        worst = max(worst, window)
    total = sum(inc for _, inc in incs)
    limit = cfg.db_failures_per_min
    if span >= 60.0:
        fired = worst > limit
        detail = f"worst minute: {worst:g} failures ({total:g} in {span:.0f} s)"
    else:
        # Less than a minute observed: only a count above the limit proves the rate.
        fired = total > limit
        detail = f"{total:g} failures in {span:.0f} s observed (less than a minute)"
    return TriggerResult(
        name,
        TriggerState.FIRED if fired else TriggerState.CLEAR,
        f"{detail}, limit {limit:g}/minute",
        float(worst if span >= 60.0 else total),
        limit,
    )


def _unavailability(run: RunResult, cfg: TriggerConfig) -> TriggerResult:
    name = "unavailability"
    outage = run.longest_outage_s
    source = "requests"
    if run.server is not None:
        start: float | None = None
        for s in run.server.samples:
            if not s.ok:
                start = s.t_s if start is None else start
                length = s.t_s - start + run.server.interval_s
                if length > outage:
                    outage, source = length, "health polls"
            else:
                start = None
    detail = f"longest outage {outage:.1f} s ({source}) in a {run.duration_s:.0f} s run"
    if outage > cfg.outage_s:
        state = TriggerState.FIRED
    elif outage >= 0.9 * run.duration_s and run.duration_s <= cfg.outage_s and outage > 0:
        # Down for (nearly) the whole run, and the run is shorter than the limit: cannot tell.
        state = TriggerState.UNKNOWN
        detail += f"; down for the whole run, which is shorter than {cfg.outage_s:g} s"
    else:
        state = TriggerState.CLEAR
    return TriggerResult(name, state, f"{detail}, limit {cfg.outage_s:g} s", outage, cfg.outage_s)


def evaluate_triggers(
    baseline: Mapping[str, MetricResult], run: RunResult, config: TriggerConfig | None = None
) -> tuple[TriggerResult, ...]:
    """Evaluate the five checklist rollback triggers for `run` against baseline metrics."""
    cfg = config or TriggerConfig()
    return (
        _unavailability(run, cfg),
        _error_rate(baseline, run.metrics, cfg),
        _response_time(baseline, run.metrics, cfg),
        _memory(run.server, cfg),
        _db_failures(run.server, cfg),
    )
