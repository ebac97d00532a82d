"""Formatting of what the section measured, for the printed/attached lines of each test."""

from __future__ import annotations

from typing import TYPE_CHECKING

from etlverify.measure.results import is_latency_stat

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from etlverify.measure import MetricResult

__all__ = ["describe_metric", "is_latency_stat", "median", "only"]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def describe_metric(metric: MetricResult) -> str:
    """One line: samples, errors, pooled p50/p95/p99 and throughput over all windows."""
    merged = metric.merged
    kinds = ", ".join(f"{k} {n}" for k, n in merged.error_kinds.items())
    return (
        f"measured {metric.name}: {metric.count} ok, {metric.errors} errors"
        + (f" ({kinds})" if kinds else "")
        + f", p50 {_ms(merged.p50_ms)}, p95 {_ms(merged.p95_ms)}, p99 {_ms(merged.p99_ms)}, "
        f"{merged.throughput_rps:.1f} rps over {len(metric.windows)} windows"
    )


def only(names: Sequence[str]) -> Callable[[str], bool]:
    """A metric filter for `PerfCollector.report`."""
    wanted = frozenset(names)
    return lambda metric: metric in wanted


def median(values: Sequence[float]) -> float:
    """The median (0 for none)."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return 0.0
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
