"""What people read while a watch runs: one progress line per window, and the figures of a
window that notifications quote.

Plain functions of a window record (JSON) and the trigger results: nothing here measures or
judges. A progress line reads like::

    watch 6m/4h: users 1,512 req, 0.0% err (server counters); log 0 error lines; probes 12 ok;
    triggers clear
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from etlverify.durations import format_duration
from etlverify.watch.probe import HEALTH_METRIC
from etlverify.watch.sources import SOURCE_LABELS, SourceWindow

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from etlverify.baseline.triggers import TriggerResult

__all__ = ["compact_duration", "progress_line", "users_figures", "window_figures"]

_NO_COUNTERS = "exports no request counters"


def compact_duration(seconds: float) -> str:
    """``4 h 12 m`` as ``4h12m``, for a line people scan."""
    return format_duration(seconds).replace(" ", "")


def _sources(record: Mapping[str, Any]) -> dict[str, SourceWindow]:
    out = {}
    for name, data in (record.get("sources") or {}).items():
        if isinstance(data, dict):
            try:
                out[name] = SourceWindow.from_json(data)
            except TypeError:
                continue
    return out


def _figures(sw: SourceWindow) -> str:
    if sw.source == "log":
        return f"{sw.errors} error line(s)"
    rate = sw.error_rate_pct
    text = f"{sw.requests or 0:,} req"
    mine = sw.watch_requests or 0
    if sw.requests and mine >= 0.1 * sw.requests:
        # the counters count the watch's own requests too; said where they are a real share
        text += f" ({min(mine, sw.requests):,} the watch's)"
    if rate is not None:
        text += f", {rate:.1f}% err"
    if sw.latency_ms is not None:
        text += f", {sw.quantile} {sw.latency_ms:.1f} ms"
    if sw.restarts:
        text += ", counters restarted"
    return text


def users_figures(record: Mapping[str, Any], *, prometheus: bool) -> str:
    """The users' sources of one window: the most trusted one with a request count first, as
    "users ...", then the others; "users not observable (...)" when none can be."""
    sources = _sources(record)
    parts: list[str] = []
    users = False
    no_counters = _NO_COUNTERS in ((sources.get("counters") or SourceWindow("", False)).note or "")
    for name in ("prometheus", "counters", "log"):
        sw = sources.get(name)
        if sw is None:
            continue
        label = SOURCE_LABELS[name]
        if not sw.available:
            # why was said once when it happened (an event line); here only that it is so
            if not (name == "counters" and no_counters):
                parts.append(f"{label} unavailable")
            continue
        if not users and name != "log" and sw.requests is not None:
            parts.append(f"users {_figures(sw)} ({label})")
            users = True
        else:
            parts.append(f"{'log' if name == 'log' else label} {_figures(sw)}")
    if not users and no_counters and not prometheus:
        parts.insert(0, "users not observable (no request counters, no --metrics)")
    return "; ".join(parts)


def _probes(record: Mapping[str, Any]) -> str:
    ok = failed = 0
    for data in (record.get("metrics") or {}).values():
        ok += int(data.get("count") or 0)
        failed += int(data.get("errors") or 0)
    return f"probes {ok} ok" + (f", {failed} failed" if failed else "")


def _triggers(
    triggers: Sequence[TriggerResult], baseline: tuple[int, int] | None, earlier: Sequence[str]
) -> str:
    fired = [t for t in triggers if t.fired]
    if fired:
        return "FIRED: " + ", ".join(
            f"{t.name} ({t.decided_by})" if t.decided_by else t.name for t in fired
        )
    if earlier:  # the watch has failed already, whatever the last window says
        return f"triggers clear now (fired earlier: {', '.join(earlier)})"
    unknown = [t.name for t in triggers if t.state.value == "UNKNOWN"]
    if baseline is not None:
        done, needed = baseline
        rest = [n for n in unknown if n not in ("error_rate_increase", "response_time_degradation")]
        return f"baseline {done}/{needed} windows; absolute triggers clear" + (
            f" ({', '.join(rest)} unknown)" if rest else ""
        )
    return "triggers clear" + (f" ({', '.join(unknown)} unknown)" if unknown else "")


def progress_line(
    *,
    elapsed_s: float,
    planned_s: float,
    record: Mapping[str, Any],
    triggers: Sequence[TriggerResult],
    baseline: tuple[int, int] | None,
    prometheus: bool,
    fired_earlier: Sequence[str] = (),
) -> str:
    """One line for the window that just ended; `baseline` is (windows in, windows needed) while
    the baseline is being recorded, else None; `fired_earlier` the triggers that fired before."""
    parts = [
        users_figures(record, prometheus=prometheus),
        _probes(record),
        _triggers(triggers, baseline, fired_earlier),
    ]
    head = f"watch {compact_duration(elapsed_s)}/{compact_duration(planned_s)}"
    return f"{head}: " + "; ".join(p for p in parts if p)


def window_figures(window: Mapping[str, Any], *, prometheus: bool = False) -> str:
    """A window's figures for a notification: users' signals, the probes, memory, the log."""
    health = (window.get("metrics") or {}).get(HEALTH_METRIC) or {}
    count, errors = int(health.get("count") or 0), int(health.get("errors") or 0)
    rate = 100.0 * errors / (count + errors) if count + errors else 0.0
    mem = [s.get("memory_percent") for s in window.get("server") or []]
    mem_v = [float(m) for m in mem if isinstance(m, int | float)]
    users = users_figures(window, prometheus=prometheus)
    return (
        (f"{users}; " if users else "")
        + f"health p50 {health.get('p50_ms') or 0:.2f} ms, error rate {rate:.1f}% "
        f"({errors} of {count + errors} probes)"
        + (f", memory {mem_v[-1]:.1f}%" if mem_v else "")
        + (
            f", {window.get('log_errors')} log error line(s)"
            if window.get("log_errors") and "log" not in (window.get("sources") or {})
            else ""
        )
    )
