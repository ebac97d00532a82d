"""A watch's evidence: the verdict, `watch.json` (everything), `watch_summary.json` (what
`etlverify gate` merges, in the Locust summary's shape) and `watch.html` (the timeline).

Verdict rules (fail closed):

- FAIL when a rollback trigger fired at any moment of the watch (with or without a rollback);
- INCONCLUSIVE when the watch did not cover its plan: stopped early (SIGINT/SIGTERM: "watched
  1 h 12 m of 4 h"), the watcher was not running for more than 10% of the time (a crash before a
  resume), the baseline never became known (a watch no longer than its baseline windows), or no
  health probe succeeded; and when users' error rate was not observable (no request counters, no
  ``--metrics`` source, no log: only the watch's own probes, which are not users);
- else PASS.

Every trigger line names the signal that decided it ("error_rate_increase FIRED (source: server
counters)"); `watch_summary.json` says which source decided each relative trigger and what each
source saw (``signals``).

The checklist items a watch covers (`WATCH_ITEMS`) are judged from it; an item that asks for longer
than the watch ran is reported as *short* ("watched 3 m of the 4 h the item asks for"), never as a
pass.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from etlverify import __version__
from etlverify.baseline.compare import Verdict, compare_metrics
from etlverify.durations import format_duration, utc
from etlverify.report.summary import run_identity
from etlverify.watch.engine import (
    EXIT_FAIL,
    EXIT_INCONCLUSIVE,
    EXIT_PASS,
    WatchOutcome,
    _metric_results,
)
from etlverify.watch.probe import HEALTH_METRIC
from etlverify.watch.signals import ERROR_TRIGGER, Observability, observability, source_totals
from etlverify.watch.sources import (
    SOURCE_LABELS,
    SOURCE_ORDER,
    SourceWindow,
    source_metric,
    source_windows,
)
from etlverify.watch.state import write_atomic

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from etlverify.baseline.compare import MetricVerdict
    from etlverify.measure.results import MetricResult
    from etlverify.watch.engine import WatchRunner

__all__ = ["WATCH_ITEMS", "WATCH_SPECS", "build_outcome", "write_reports"]

WATCH_JSON = "watch.json"
WATCH_SUMMARY = "watch_summary.json"
WATCH_HTML = "watch.html"
WATCH_PNG = "watch_timeline.png"
#: the one-week indicators' tolerance: the checklist's 10% with this machine's noise as the floor
WATCH_SPECS = "p50:10%,+2sd; error_rate:+1pp"
ONE_WEEK_S = 7 * 86400.0
#: a watcher that was not running for more than this share of the plan cannot vouch for it
MAX_GAP_SHARE = 0.10


@dataclass(frozen=True)
class WatchItem:
    """A checklist item a watch is the evidence for."""

    id: str
    needs_s: float
    what: str  # stability, resources, error_rate, performance, status, alert, completion, recovery


WATCH_ITEMS: tuple[WatchItem, ...] = (
    WatchItem("deploy.phase1.1_1_binary_deployment.monitor_resource_usage", 3600.0, "resources"),
    WatchItem("deploy.phase3.3_1_gradual_feature.monitor_stability_4", 4 * 3600.0, "stability"),
    WatchItem("rollback.rollback_procedures.immediate_actions.monitor_recovery", 0.0, "recovery"),
    WatchItem("success.long_term.error_rate_baseline", ONE_WEEK_S, "error_rate"),
    WatchItem("success.long_term.performance_improved_maintained", ONE_WEEK_S, "performance"),
    WatchItem("comms.during_deployment.update_deployment_status", 1800.0, "status"),
    WatchItem("comms.during_deployment.alert_team_immediately", 0.0, "alert"),
    WatchItem("comms.post_deployment.send_deployment_completion", 0.0, "completion"),
)


def _one_week(
    baseline: Mapping[str, MetricResult], judged: Mapping[str, MetricResult]
) -> list[MetricVerdict]:
    """The judged windows against the baseline (error rate and p50 of each watch metric)."""
    comparison = compare_metrics(
        baseline, judged, WATCH_SPECS, name="watch baseline", model="watch"
    )
    return list(comparison.results)


def _observability(runner: WatchRunner) -> tuple[Observability, Observability]:
    """(error rate, response time) over the whole watch: the deciding source, or why not."""
    folder = runner.logs.folder
    return observability(
        source_windows(runner.windows),
        prometheus_url=runner.prometheus.url if runner.prometheus is not None else None,
        deploy_root=str(folder.parent) if folder is not None else None,
    )


def _users_one_week(runner: WatchRunner, source: str | None) -> list[MetricVerdict]:
    """The users' error rate of the judged windows against the baseline's, under the one-week
    indicators' tolerance (from the server counters or Prometheus)."""
    base = runner.baseline_sources()
    if source not in ("prometheus", "counters") or base is None:
        return []
    assert source is not None
    b = [w for w in base.get(source, []) if w.has_errors()]
    judged = source_windows(runner._judged_windows()).get(source, [])
    c = [w for w in judged if w.has_errors()]
    if not b or not c:
        return []
    label = f"users ({SOURCE_LABELS[source]})"
    comparison = compare_metrics(
        {label: source_metric(label, b, with_histograms=True)},
        {label: source_metric(label, c, with_histograms=True)},
        "error_rate:+1pp",
        name="watch baseline",
        model="watch",
    )
    return list(comparison.results)


def _delivered(runner: WatchRunner, kind: str) -> tuple[int, int]:
    """(notifications of `kind` delivered to every URL, notifications of `kind` sent)."""
    sent = [e for e in runner.events if e.get("type") == "notification" and e.get("kind") == kind]
    if runner.notifier is None:
        return 0, len(sent)
    deliveries = [d for d in runner.notifier.deliveries() if d.kind == kind]
    keys = {d.key for d in deliveries}
    ok = sum(1 for k in keys if all(d.delivered for d in deliveries if d.key == k))
    return ok, len(sent)


def _items(
    runner: WatchRunner,
    watched: float,
    verdicts: Sequence[MetricVerdict],
    errors_seen: Observability,
) -> list[dict[str, Any]]:
    fired = [e for e in runner.events if e.get("type") == "trigger"]
    out: list[dict[str, Any]] = []
    for item in WATCH_ITEMS:
        status, reason = "PASS", ""
        if item.what == "error_rate" and not errors_seen.observable:
            # whatever the watch's probes saw, they are not users: never a pass
            status, reason = "INCONCLUSIVE", str(errors_seen.reason)
            if item.needs_s and watched < item.needs_s:
                reason += (
                    f"; watched {format_duration(watched)} of the "
                    f"{format_duration(item.needs_s)} the item asks for"
                )
        elif item.needs_s and watched < item.needs_s:
            status = "SHORT"
            reason = (
                f"watched {format_duration(watched)} of the {format_duration(item.needs_s)} "
                "the item asks for"
            )
        elif item.what in ("stability", "resources"):
            bad = [e["name"] for e in fired]
            if item.what == "resources":
                bad = [n for n in bad if n in ("memory_sustained", "database_connection_failures")]
            status = "FAIL" if bad else "PASS"
            reason = f"fired: {', '.join(bad)}" if bad else "no rollback trigger fired"
        elif item.what in ("error_rate", "performance"):
            stat = "error_rate" if item.what == "error_rate" else "p50"
            mine = [v for v in verdicts if v.stat == stat]
            worst = [v for v in mine if v.verdict is Verdict.FAIL]
            unsure = [v for v in mine if v.verdict is Verdict.INCONCLUSIVE]
            status = "FAIL" if worst else "INCONCLUSIVE" if unsure or not mine else "PASS"
            reason = "; ".join(v.line() for v in (worst or unsure or mine)[:2]) or "no data"
        elif item.what == "recovery":
            done = [e for e in runner.events if e.get("type") in ("recovered", "not-recovered")]
            if not done:
                status, reason = "N/A", "no rollback ran during the watch"
            else:
                ok = done[0]["type"] == "recovered"
                status = "PASS" if ok else "FAIL"
                reason = (
                    f"{'recovered' if ok else 'not recovered'} {done[0].get('windows_after')} "
                    "window(s) after the rollback"
                )
        elif item.what in ("status", "alert", "completion"):
            kind = {"status": "status", "alert": "trigger", "completion": "completion"}[item.what]
            ok, sent = _delivered(runner, kind)
            if runner.notifier is None:
                status, reason = "INCONCLUSIVE", "no --notify URL was given"
            elif item.what == "alert" and not fired:
                status, reason = "N/A", "no rollback trigger fired, so no alert was due"
            elif item.what == "status" and runner.plan.status_every_s > 1800.0:
                status = "FAIL"
                reason = f"--status-every {format_duration(runner.plan.status_every_s)} > 30 m"
            elif sent == 0:
                status, reason = "INCONCLUSIVE", f"no {kind} notification was due yet"
            else:
                status = "PASS" if ok == sent else "FAIL"
                reason = f"{ok} of {sent} {kind} notification(s) delivered"
        out.append({"id": item.id, "status": status, "reason": reason})
    return out


def build_outcome(runner: WatchRunner) -> WatchOutcome:
    """The verdict of the whole watch, its reasons, and the summary the gate reads."""
    plan = runner.plan
    watched, passed = runner.coverage()
    reasons: list[str] = []
    fired = [e for e in runner.events if e.get("type") == "trigger"]
    for e in fired:
        source = f" (source: {e['decided_by']})" if e.get("decided_by") else ""
        reasons.append(
            f"rollback trigger {e['name']} FIRED{source} at {format_duration(float(e['t_s']))} "
            f"(window {e['window']}): {e['reason']}"
        )
    for e in runner.events:
        if e.get("type") == "rollback-finished":
            reasons.append(
                f"rollback ran once at window {e['window']}: exit code {e.get('exit_code')}"
            )
        if e.get("type") in ("recovered", "not-recovered"):
            reasons.append(
                f"{e['type'].replace('-', ' ')} {e.get('windows_after')} window(s) after it"
            )
    incomplete: list[str] = []
    if passed < plan.duration_s - 1.0 or runner.stop_reason:
        why = f" ({runner.stop_reason})" if runner.stop_reason else ""
        incomplete.append(
            f"watched {format_duration(watched)} of {format_duration(plan.duration_s)}{why}"
        )
    gap = passed - watched
    if passed > 0 and gap > MAX_GAP_SHARE * passed:
        incomplete.append(
            f"the watcher was not running for {format_duration(gap)} of "
            f"{format_duration(passed)} (restarted from its state)"
        )
    base = runner.baseline_metrics()
    if base is None:
        incomplete.append(
            f"the baseline never became known: the watch is not longer than its "
            f"{plan.baseline_windows} baseline window(s)"
        )
    health = sum(
        int(((w.get("metrics") or {}).get(HEALTH_METRIC) or {}).get("count") or 0)
        for w in runner.windows
    )
    if not health:
        incomplete.append("no health probe succeeded during the watch")
    errors_seen, latency_seen = _observability(runner)
    if not errors_seen.observable:
        incomplete.append(str(errors_seen.reason))
    judged = _metric_results(runner._judged_windows())
    verdicts = _one_week(base or {}, judged) + _users_one_week(runner, errors_seen.source)
    # The one-week indicators decide only a watch as long as they ask for; a shorter watch
    # shows its comparison as facts (its items are SHORT), the triggers guard it meanwhile.
    decisive = watched >= ONE_WEEK_S - plan.window_s
    failed_metrics = [v for v in verdicts if v.verdict is Verdict.FAIL] if decisive else []
    if fired or failed_metrics:
        verdict, code = "FAIL", EXIT_FAIL
        reasons += [v.line() for v in failed_metrics]
    elif incomplete:
        verdict, code = "INCONCLUSIVE", EXIT_INCONCLUSIVE
    else:
        verdict, code = "PASS", EXIT_PASS
        reasons.append(
            f"watched {format_duration(watched)}: no rollback trigger fired, "
            f"{len(runner.windows)} window(s)"
        )
    reasons += incomplete
    items = _items(runner, watched, verdicts, errors_seen)
    summary = _summary(
        runner,
        signals=(errors_seen, latency_seen),
        decisive=decisive,
        verdict=verdict,
        code=code,
        reasons=reasons,
        incomplete=incomplete,
        verdicts=verdicts,
        items=items,
    )
    return WatchOutcome(verdict=verdict, reasons=reasons, exit_code=code, summary=summary)


def _final_triggers(runner: WatchRunner, errors_seen: Observability) -> list[dict[str, Any]]:
    """Each trigger's state over the whole watch: FIRED if it ever fired, else its last state;
    the error-rate trigger is UNKNOWN when users' error rate was not observable."""
    fired = {e["name"]: e for e in runner.events if e.get("type") == "trigger"}
    out = []
    for t in runner.last_triggers or ():
        data = t.to_json()
        if t.name in fired:
            e = fired[t.name]
            data["state"] = "FIRED"
            data["reason"] = f"fired at {format_duration(float(e['t_s']))}: {e['reason']}"
            if e.get("decided_by"):
                data["decided_by"] = e["decided_by"]
        elif t.name == ERROR_TRIGGER and not errors_seen.observable:
            data["state"] = "UNKNOWN"
            data["reason"] = f"{errors_seen.reason}; the watch's probes: {t.reason}"
        out.append(data)
    if not out:
        out = [
            {"name": name, "state": "FIRED", "reason": e["reason"], "decided_by": e["decided_by"]}
            if e.get("decided_by")
            else {"name": name, "state": "FIRED", "reason": e["reason"]}
            for name, e in fired.items()
        ]
    return out


def _summary(
    runner: WatchRunner,
    *,
    signals: tuple[Observability, Observability],
    decisive: bool,
    verdict: str,
    code: int,
    reasons: list[str],
    incomplete: list[str],
    verdicts: Sequence[MetricVerdict],
    items: list[dict[str, Any]],
) -> dict[str, Any]:
    meta = runner.meta
    watched, _ = runner.coverage()
    # the target as it was when the watch started (kept in its state across a resume)
    fp = dict(meta.get("fingerprint") or runner.fingerprint)
    run = run_identity(
        tool="watch",
        run_id=str(meta["watch_id"]),
        started_at=str(meta["started_at"]),
        finished_at=utc(time.time()),
        target_url=runner.base_url,
        embedded=bool(fp.get("embedded")),
        facts=fp,
    )
    short = [f"{i['id']}: {i['reason']}" for i in items if i["status"] == "SHORT"]
    return {
        "schema_version": 1,
        "tool": "watch",
        "suite_version": __version__,
        "run": run,
        "verdict": verdict,
        "exit_code": code,
        "reason": "; ".join(incomplete) if incomplete else None,
        "incomplete": incomplete,
        "baseline": meta.get("baseline"),
        "fingerprint": dict(fp),
        # decisive comparisons only (a week-long watch, PASS or FAIL); the rest are facts
        "metrics": [
            {**v.to_json(), "source": "watch"}
            for v in verdicts
            if decisive and v.verdict is not Verdict.INCONCLUSIVE
        ],
        "triggers": [{**t, "source": "watch"} for t in _final_triggers(runner, signals[0])],
        # which users' signal decided each relative trigger, and what every source saw
        "signals": {
            "error_rate": signals[0].to_json(),
            "response_time": signals[1].to_json(),
            "sources": source_totals(source_windows(runner.windows)),
        },
        "items": items,
        "measured": [
            f"watched {format_duration(watched)} of {format_duration(runner.plan.duration_s)} in "
            f"{len(runner.windows)} window(s) of {format_duration(runner.plan.window_s)}",
            *[f"checklist item {s}" for s in short],
            *[
                f"{what} decided by {o.to_json()['label']}" if o.observable else str(o.reason)
                for what, o in (("error rate", signals[0]), ("response time", signals[1]))
            ],
            *[
                f"compared with the baseline (not decisive: the one-week indicators need a "
                f"week-long watch): {v.line()}"
                for v in verdicts
                if not decisive or v.verdict is Verdict.INCONCLUSIVE
            ],
        ],
        "messages": reasons,
        "html": WATCH_HTML,
    }


def _timeline_png(runner: WatchRunner) -> str | None:
    """The whole watch as one figure (base64 PNG): latency with the baseline band, error rate,
    memory, and the moments triggers fired and the rollback ran."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    xs, p50, err, mem_t, mem = [], [], [], [], []
    for w in runner.windows:
        t = (float(w["start_s"]) + float(w["duration_s"]) / 2) / 60.0
        h = (w.get("metrics") or {}).get(HEALTH_METRIC) or {}
        n, bad = int(h.get("count") or 0), int(h.get("errors") or 0)
        xs.append(t)
        p50.append(h.get("p50_ms"))
        err.append(100.0 * bad / (n + bad) if n + bad else None)
        for s in w.get("server") or []:
            if isinstance(s.get("memory_percent"), int | float):
                mem_t.append(float(s["t_s"]) / 60.0)
                mem.append(float(s["memory_percent"]))
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    base = (runner.baseline_metrics() or {}).get(HEALTH_METRIC)
    axes[0].plot(
        xs,
        [v if v is not None else float("nan") for v in p50],
        marker=".",
        label="watch probes (health)",
    )
    if base is not None:
        vals = base.values("p50")
        if vals:
            axes[0].axhspan(min(vals), max(vals), color="tab:green", alpha=0.15, label="baseline")

    def series(name: str, figure: str) -> list[float]:
        """One users' source's figure per window, aligned with `xs` (NaN where it has none)."""
        out = []
        for w in runner.windows:
            data = (w.get("sources") or {}).get(name)
            sw = SourceWindow.from_json(data) if isinstance(data, dict) else None
            if sw is not None and figure == "latency" and sw.has_latency():
                out.append(float(sw.latency_ms or 0.0))
            elif sw is not None and figure == "errors" and sw.has_errors():
                out.append(float(sw.error_rate_pct or 0.0))
            else:
                out.append(float("nan"))
        return out

    users_p50 = series("prometheus", "latency")
    if not all(math.isnan(v) for v in users_p50):
        axes[0].plot(xs, users_p50, marker=".", color="tab:orange", label="users (Prometheus)")
    axes[0].set_ylabel("p50 (ms)")
    axes[1].plot(
        xs,
        [v if v is not None else float("nan") for v in err],
        marker=".",
        color="r",
        label="watch probes",
    )
    for name, color in (("prometheus", "tab:orange"), ("counters", "tab:blue")):
        rates = series(name, "errors")
        if not all(math.isnan(v) for v in rates):
            axes[1].plot(xs, rates, marker=".", color=color, label=f"users ({SOURCE_LABELS[name]})")
    axes[1].set_ylabel("error rate (%)")
    axes[1].legend(loc="upper left")
    axes[2].plot(mem_t, mem, color="tab:purple")
    axes[2].set_ylabel("memory (%)")
    axes[2].set_xlabel("minutes since the watch started")
    for e in runner.events:
        if e.get("type") == "trigger":
            for ax in axes:
                ax.axvline(float(e["t_s"]) / 60.0, color="r", linestyle="--")
            axes[0].annotate(
                f"{e['name']} FIRED",
                (float(e["t_s"]) / 60.0, 0.9),
                xycoords=("data", "axes fraction"),
            )
        if e.get("type") == "rollback-finished":
            for ax in axes:
                ax.axvline(float(e["t_s"]) / 60.0, color="k", linestyle=":")
    axes[0].legend(loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _source_row(t: Mapping[str, Any]) -> str:
    """One users' signal in the HTML table."""
    cells = [
        str(t["label"]),
        f"{t['available_windows']} of {t['windows']}",
        "" if t["requests"] is None else f"{t['requests']:,}",
        "" if t["errors"] is None else f"{t['errors']:,}",
        "" if t["error_rate_pct"] is None else f"{t['error_rate_pct']:.2f}%",
        str(t["restarts"]),
        str(t["note"] or ""),
    ]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _html(runner: WatchRunner, outcome: WatchOutcome, png: str | None) -> str:
    s = outcome.summary
    rows = "".join(
        f"<tr><td>{html.escape(i['id'])}</td><td>{i['status']}</td>"
        f"<td>{html.escape(i['reason'])}</td></tr>"
        for i in s["items"]
    )
    triggers = "".join(
        f"<tr><td>{html.escape(t['name'])}</td><td>{t['state']}</td>"
        f"<td>{html.escape(str(t.get('decided_by') or ''))}</td>"
        f"<td>{html.escape(str(t.get('reason', '')))}</td></tr>"
        for t in s["triggers"]
    )
    events = "".join(
        f"<tr><td>{html.escape(str(e.get('at')))}</td><td>{html.escape(str(e.get('type')))}</td>"
        f"<td>{html.escape(json.dumps({k: v for k, v in e.items() if k not in ('at', 'type')}))}"
        "</td></tr>"
        for e in runner.events
        if e.get("type") != "notification"
    )
    notes = ""
    if runner.notifier is not None:
        notes = "".join(
            f"<tr><td>{html.escape(d.kind)}</td><td>{html.escape(d.url)}</td>"
            f"<td>{'delivered' if d.delivered else 'FAILED'}</td><td>{d.attempts}</td>"
            f"<td>{html.escape(d.error or '')}</td></tr>"
            for d in runner.notifier.deliveries()
        )
    img = f'<img alt="watch timeline" src="data:image/png;base64,{png}">' if png else ""
    signals = s.get("signals") or {}
    decided = "".join(
        f"<li>{html.escape(what)}: "
        + html.escape(
            f"decided by {o.get('label')}" if o.get("observable") else str(o.get("reason"))
        )
        + "</li>"
        for what, o in (
            ("error rate", signals.get("error_rate") or {}),
            ("response time", signals.get("response_time") or {}),
        )
    )
    totals = signals.get("sources") or {}
    users_rows = "".join(_source_row(totals[name]) for name in SOURCE_ORDER if name in totals)
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in outcome.reasons)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>etlverify watch</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:4px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>etlverify watch: {outcome.verdict}</h1>
<p>{html.escape(runner.base_url)}, {html.escape(s["measured"][0])}; baseline:
{html.escape(str(s.get("baseline")))}; watch {html.escape(str(runner.meta.get("watch_id")))}</p>
<ul>{reasons}</ul>{img}
<h2>Users' signals</h2><ul>{decided}</ul>
<table><tr><th>source</th><th>windows with figures</th><th>requests</th><th>errors</th>
<th>error rate</th><th>restarts</th><th>last note</th></tr>{users_rows}</table>
<h2>Rollback triggers</h2>
<table><tr><th>trigger</th><th>state</th><th>source</th><th>why</th></tr>{triggers}</table>
<h2>Checklist items</h2><table><tr><th>item</th><th>status</th><th>why</th></tr>{rows}</table>
<h2>Notifications</h2><table><tr><th>kind</th><th>to</th><th>result</th><th>attempts</th>
<th>error</th></tr>{notes}</table>
<h2>Timeline</h2><table><tr><th>at</th><th>event</th><th>facts</th></tr>{events}</table>
</body></html>
"""


def write_reports(runner: WatchRunner, outcome: WatchOutcome) -> None:
    """watch.json, watch_summary.json and watch.html into the reports folder (atomically)."""
    folder = runner.reports_dir
    folder.mkdir(parents=True, exist_ok=True)
    full = {
        **outcome.summary,
        "plan": runner.plan.to_json(),
        "state": str(runner.state.folder),
        "windows": runner.windows,
        "events": runner.events,
        "notifications": [d.to_json() for d in runner.notifier.deliveries()]
        if runner.notifier is not None
        else [],
    }
    write_atomic(folder / WATCH_JSON, full)
    write_atomic(folder / WATCH_SUMMARY, outcome.summary)
    png = _timeline_png(runner)
    if png is not None:  # beside it too: the sign-off report embeds it in its watch section
        (folder / WATCH_PNG).write_bytes(base64.b64decode(png))
    tmp = folder / f".{WATCH_HTML}.tmp"
    tmp.write_text(_html(runner, outcome, png), encoding="utf-8")
    tmp.replace(folder / WATCH_HTML)
