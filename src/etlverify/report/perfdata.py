"""The performance part of a summary: verdicts, triggers and the series the plots are drawn from.

Built from the objects of one measured run (`Comparison`, `RunResult`, `Baseline`), reduced to plain
JSON so that the sign-off report can be drawn again later from ``summary.json`` alone (the gate
re-renders it after merging the Locust summary). Series are small: a handful of quantiles per
metric, one point per trial window, one point per server sample.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from etlverify.baseline.machine import recorded_runs
from etlverify.report.summary import Finding, MetricRecord, TriggerRecord

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from etlverify.baseline import Baseline, Comparison
    from etlverify.measure import MetricResult, RunResult

__all__ = [
    "FIRST_USE_MARK",
    "FIRST_USE_MARKS",
    "QUANTILES",
    "file_sha256",
    "fold_first_use",
    "is_ws_metric",
    "metric_records",
    "performance_section",
    "trigger_records",
]

#: What marks a finding about a machine baseline's first-use run (a metric's verdict reason: "first
#: use (1 of 3 runs): ..."; an item's: "INCONCLUSIVE: recording this machine's baseline, run 1 of
#: 3 ..."): `fold_first_use` says all of them once
FIRST_USE_MARK = "recording this machine's baseline"
FIRST_USE_MARKS = ("first use (", f"INCONCLUSIVE: {FIRST_USE_MARK}")
#: quantiles of the latency curves (percent)
QUANTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9)
_MB = 1024.0 * 1024.0


def is_ws_metric(name: str) -> bool:
    """True for WebSocket push metrics (``ws: push cancelled``, Locust's ``WS push ...``)."""
    return name.lower().startswith(("ws:", "ws "))


def file_sha256(path: Path) -> str | None:
    """sha256 of a file's bytes, or None when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def metric_records(comparison: Comparison | None, source: str) -> tuple[MetricRecord, ...]:
    """The comparison's per-metric verdicts as summary records."""
    if comparison is None:
        return ()
    return tuple(MetricRecord.from_json(r.to_json(), source) for r in comparison.results)


def trigger_records(comparison: Comparison | None, source: str) -> tuple[TriggerRecord, ...]:
    """The comparison's rollback triggers as summary records."""
    if comparison is None:
        return ()
    return tuple(TriggerRecord.from_json(t.to_json(), source) for t in comparison.triggers)


def _quantiles(result: MetricResult) -> list[float | None]:
    if result.count == 0:
        return [None for _ in QUANTILES]
    hist = result.merged.decoded()
    return [round(hist.percentile_us(q) / 1000.0, 4) for q in QUANTILES]


def _curves(run: RunResult | None, baseline: Baseline | None, *, ws: bool) -> list[dict[str, Any]]:
    names = sorted(set(run.metrics if run else ()) | set(baseline.metrics if baseline else ()))
    out = []
    for name in names:
        if is_ws_metric(name) != ws:
            continue
        cur = run.metrics.get(name) if run else None
        base = baseline.metrics.get(name) if baseline else None
        if cur is None:
            continue  # a baseline metric this run did not measure: nothing to draw against
        out.append(
            {
                "metric": name,
                "quantiles": list(QUANTILES),
                "current_ms": _quantiles(cur),
                "baseline_ms": _quantiles(base) if base is not None else None,
                "windows_p95_ms": [w.p95_ms for w in cur.windows],
                "baseline_windows_p95_ms": [w.p95_ms for w in base.windows] if base else None,
            }
        )
    return out


def _throughput(run: RunResult | None, baseline: Baseline | None) -> list[dict[str, Any]]:
    if run is None:
        return []
    out = []
    for name in sorted(run.metrics):
        cur = run.metrics[name]
        base = baseline.metrics.get(name) if baseline else None
        base_rps = None
        if base is not None and base.windows:
            base_rps = round(base.merged.throughput_rps, 3)
        out.append(
            {
                "metric": name,
                "t_s": [round(w.start_s + w.duration_s / 2.0, 3) for w in cur.windows],
                "rps": [round(w.throughput_rps, 3) for w in cur.windows],
                "errors": [w.errors for w in cur.windows],
                "baseline_rps": base_rps,
            }
        )
    return out


def _server(run: RunResult | None) -> dict[str, Any] | None:
    if run is None or run.server is None:
        return None
    trace = run.server
    t_mem, mem = trace.series("memory_usage")
    t_pct, pct = trace.series("memory_percent")
    t_cpu, cpu = trace.series("cpu_usage")
    if not mem and not cpu:
        return None
    return {
        "interval_s": trace.interval_s,
        "memory_t_s": [round(t, 3) for t in t_mem],
        "memory_mb": [round(v / _MB, 3) for v in mem],
        "memory_percent_t_s": [round(t, 3) for t in t_pct],
        "memory_percent": [round(v, 3) for v in pct],
        "cpu_t_s": [round(t, 3) for t in t_cpu],
        "cpu_percent": [round(v, 3) for v in cpu],
        "failed_polls": trace.failed,
    }


def fold_first_use(
    findings: Sequence[Finding], first_use: Mapping[str, Any] | None
) -> tuple[Finding, ...]:
    """`findings` with every metric and item finding of a machine baseline's first-use run said
    once, as the run's line ("performance: recording this machine's baseline, run 1 of 3 (7
    metrics, 28 statistics measured; judged from run 4 on); ..."), where the first of them was.
    Each metric's verdict stays in summary.json's ``metrics``, each item's reason in ``items``."""
    line = str((first_use or {}).get("line") or "")
    if not line:
        return tuple(findings)
    out: list[Finding] = []
    folded = False
    for finding in findings:
        if finding.kind in ("metric", "item") and any(m in finding.text for m in FIRST_USE_MARKS):
            if not folded:
                out.append(Finding("run", "", line, finding.source))
                folded = True
            continue
        out.append(finding)
    return tuple(out)


def performance_section(
    *,
    comparison: Comparison | None,
    run: RunResult | None,
    baseline: Baseline | None,
    baseline_path: Path | None,
    unavailable: str = "",
    settings: Mapping[str, Any] | None = None,
    first_use: Mapping[str, Any] | None = None,
    host: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``performance`` object of summary.json (``available: false`` with a reason if none).

    `host`: the host's contention while each group was measured (`PerfCollector.host_json`:
    per group its windows, the one-line contention, re-measures and why a FAIL was excused).

    `first_use`: the facts of a machine baseline's first-use run (which of the runs it needs this
    was, the groups recorded, the one line that says it), as ``first_use``.
    """
    if run is None and comparison is None:
        return {
            "available": False,
            "reason": unavailable or "no performance measurement ran in this run",
            "baseline": _baseline_json(baseline, baseline_path),
            "first_use": dict(first_use) if first_use else None,
        }
    return {
        "available": True,
        "first_use": dict(first_use) if first_use else None,
        "host": dict(host) if host else None,
        "reason": "" if comparison is not None else unavailable or "no baseline to compare with",
        "verdict": comparison.verdict.value if comparison is not None else None,
        "alpha": comparison.alpha if comparison is not None else None,
        "rollback": comparison.rollback if comparison is not None else False,
        "environment": [
            {
                "field": m.field,
                "baseline": m.baseline,
                "current": m.current,
                "severity": m.severity.value,
            }
            for m in (comparison.environment if comparison is not None else ())
        ],
        "baseline": _baseline_json(baseline, baseline_path),
        "settings": dict(settings or {}),
        "run": None
        if run is None
        else {
            "started_at": run.started_at,
            "duration_s": run.duration_s,
            "late": run.late,
            "unsent": run.unsent,
            "longest_outage_s": run.longest_outage_s,
        },
        "plots": {
            "latency": _curves(run, baseline, ws=False),
            "ws_latency": _curves(run, baseline, ws=True),
            "throughput": _throughput(run, baseline),
            "server": _server(run),
        },
    }


def _baseline_json(baseline: Baseline | None, path: Path | None) -> dict[str, Any] | None:
    if baseline is None and path is None:
        return None
    out: dict[str, Any] = {
        "path": str(path) if path else None,
        "sha256": file_sha256(path) if path else None,
        "exists": bool(path and path.exists()),
    }
    if baseline is not None:
        out.update(
            {
                "name": baseline.name,
                "recorded_at": baseline.recorded_at,
                # runs, not entries: a machine baseline stores each group's first use as one
                "runs": recorded_runs(baseline),
                "environment": baseline.environment.to_json(),
            }
        )
    return out
