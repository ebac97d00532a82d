"""Which users' signal decides the error-rate and response-time triggers, and whether users'
experience was observable at all.

The rules are the gate's (`etlverify.baseline.triggers`); this module only picks the signal they
run on. The best source present decides (`SOURCE_ORDER`: Prometheus, the server counters, the log
for errors only, the watch's probes), where *present* means it has figures in the judged windows
and, once the baseline is known, in the baseline windows too (a source that appeared later has
nothing to be compared with). The other sources are still recorded and shown, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from etlverify.baseline.triggers import (
    TriggerConfig,
    TriggerResult,
    error_lines_trigger,
    error_rate_trigger,
    response_time_trigger,
)
from etlverify.watch.sources import SOURCE_LABELS, SOURCE_ORDER, SourceWindow, source_metric

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "ERROR_TRIGGER",
    "LATENCY_TRIGGER",
    "Observability",
    "best_source",
    "judge_users",
    "observability",
    "source_totals",
]

ERROR_TRIGGER = "error_rate_increase"
LATENCY_TRIGGER = "response_time_degradation"
_LATENCY_ORDER = ("prometheus", "probes")


def _usable(kind: str) -> Callable[[SourceWindow], bool]:
    return SourceWindow.has_errors if kind == "errors" else SourceWindow.has_latency


def best_source(
    base: Mapping[str, Sequence[SourceWindow]] | None,
    span: Mapping[str, Sequence[SourceWindow]],
    kind: str,
) -> str | None:
    """The most trusted source with figures of `kind` ("errors" or "latency") in `span` and,
    when `base` is given, in `base` too."""
    usable = _usable(kind)
    for name in SOURCE_ORDER if kind == "errors" else _LATENCY_ORDER:
        if not any(usable(w) for w in span.get(name, ())):
            continue
        if base is not None and not any(usable(w) for w in base.get(name, ())):
            continue
        return name
    return None


def _users(name: str) -> str:
    return f"users ({SOURCE_LABELS[name]})"


def _errors_on(
    name: str,
    base: Sequence[SourceWindow],
    span: Sequence[SourceWindow],
    cfg: TriggerConfig,
) -> TriggerResult:
    label = SOURCE_LABELS[name]
    b = [w for w in base if w.has_errors()]
    c = [w for w in span if w.has_errors()]
    if name == "log":
        return error_lines_trigger(
            sum(int(w.errors or 0) for w in b),
            sum(w.span_s for w in b),
            sum(int(w.errors or 0) for w in c),
            sum(w.span_s for w in c),
            cfg,
            decided_by=label,
        )
    metric = _users(name)
    return error_rate_trigger(
        {metric: source_metric(metric, b)} if b else {},
        {metric: source_metric(metric, c)},
        cfg,
        decided_by=label,
    )


def _latency_on(
    name: str,
    base: Sequence[SourceWindow],
    span: Sequence[SourceWindow],
    cfg: TriggerConfig,
) -> TriggerResult:
    b = [w for w in base if w.has_latency()]
    c = [w for w in span if w.has_latency()]
    metric = _users(name)
    stat = c[-1].quantile if c else cfg.response_time_stat
    return response_time_trigger(
        {metric: source_metric(metric, b)} if b else {},
        {metric: source_metric(metric, c)},
        replace(cfg, response_time_stat=stat),
        decided_by=SOURCE_LABELS[name],
    )


def judge_users(
    results: Sequence[TriggerResult],
    base: Mapping[str, Sequence[SourceWindow]] | None,
    span: Mapping[str, Sequence[SourceWindow]],
    cfg: TriggerConfig,
) -> tuple[TriggerResult, ...]:
    """`results` (the triggers judged on the watch's probes) with the error-rate and response-time
    rules judged again on the best users' source; each of the two names its source."""
    errors = best_source(base, span, "errors")
    latency = best_source(base, span, "latency")
    out = []
    for result in results:
        judged = result
        if result.name == ERROR_TRIGGER:
            if errors is None or errors == "probes":
                judged = replace(result, decided_by=SOURCE_LABELS["probes"])
            else:
                judged = _errors_on(errors, (base or {}).get(errors, ()), span[errors], cfg)
        elif result.name == LATENCY_TRIGGER:
            if latency is None or latency == "probes":
                judged = replace(result, decided_by=SOURCE_LABELS["probes"])
            else:
                judged = _latency_on(latency, (base or {}).get(latency, ()), span[latency], cfg)
        out.append(judged)
    return tuple(out)


@dataclass(frozen=True)
class Observability:
    """Over a whole watch: which source decided each relative trigger, and whether users'
    experience was observable (`reason` says why not)."""

    signal: str  # "error_rate" or "response_time"
    source: str | None
    observable: bool
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "source": self.source,
            "label": SOURCE_LABELS.get(self.source or "", None),
            "observable": self.observable,
            "reason": self.reason,
        }


def _last_note(windows: Sequence[SourceWindow]) -> str | None:
    for w in reversed(windows):
        if w.note:
            return w.note
    return None


def observability(
    windows: Mapping[str, Sequence[SourceWindow]],
    *,
    prometheus_url: str | None,
    deploy_root: str | None,
) -> tuple[Observability, Observability]:
    """(error rate, response time) over every window of the watch."""
    errors = best_source(None, windows, "errors")
    reason = None
    if errors in (None, "probes"):
        counters = windows.get("counters", ())
        note = _last_note(counters) or ""
        if not counters or "exports no request counters" in note:
            parts = ["the target exports no request counters"]
        else:
            parts = [f"the target's request counters could not be read ({note})"]
        if prometheus_url is None:
            parts.append("no --metrics source was given")
        else:
            why = _last_note(windows.get("prometheus", ())) or "no figures"
            parts.append(f"Prometheus at {prometheus_url} gave no figures ({why})")
        reason = "users' error rate not observable: " + " and ".join(parts)
        if deploy_root is not None:
            log_note = _last_note(windows.get("log", ()))
            if log_note:
                reason += f"; the log: {log_note}"
    latency = best_source(None, windows, "latency")
    latency_reason = None
    if latency != "prometheus":
        latency_reason = (
            "users' response time not observable: "
            + (
                "no --metrics source was given"
                if prometheus_url is None
                else f"Prometheus at {prometheus_url} gave no latency figures"
            )
            + "; response time was judged on the watch's own probes"
        )
    return (
        Observability("error_rate", errors, errors not in (None, "probes"), reason),
        Observability("response_time", latency, latency == "prometheus", latency_reason),
    )


def source_totals(windows: Mapping[str, Sequence[SourceWindow]]) -> dict[str, dict[str, Any]]:
    """Per source over the whole watch: windows, windows with figures, requests, errors."""
    out: dict[str, dict[str, Any]] = {}
    for name in SOURCE_ORDER:
        ws = list(windows.get(name, ()))
        if not ws:
            continue
        usable = [w for w in ws if w.available]
        requests = sum(int(w.requests or 0) for w in usable if w.requests is not None)
        errors = sum(int(w.errors or 0) for w in usable if w.errors is not None)
        has_requests = any(w.requests is not None for w in usable)
        out[name] = {
            "label": SOURCE_LABELS[name],
            "windows": len(ws),
            "available_windows": len(usable),
            "requests": requests if has_requests else None,
            "errors": errors if usable else None,
            "error_rate_pct": round(100.0 * errors / requests, 4) if requests else None,
            "restarts": sum(w.restarts for w in ws),
            "note": _last_note(ws),
        }
    return out
