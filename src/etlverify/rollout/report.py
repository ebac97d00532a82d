"""A rollout's evidence: `rollout.json` (the journal and every step's cohort comparison),
`rollout_summary.json` (what `etlverify gate --require rollout` merges, in the Locust summary's
shape) and `rollout.html` (every flag's percentage over time, each step's verdict, the inside vs
outside figures, any rollback with its reason)."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from typing import TYPE_CHECKING, Any

from etlverify import __version__
from etlverify.durations import utc
from etlverify.report.summary import run_identity
from etlverify.watch.state import write_atomic

if TYPE_CHECKING:
    from etlverify.rollout.conductor import Conductor, RolloutOutcome

__all__ = ["ROLLOUT_ITEMS", "write_reports"]

ROLLOUT_JSON = "rollout.json"
ROLLOUT_SUMMARY = "rollout_summary.json"
ROLLOUT_HTML = "rollout.html"
ROLLOUT_PNG = "rollout_timeline.png"

_P2, _P3 = "deploy.phase2.", "deploy.phase3."
#: checklist items of phases 2 and 3 a rollout is the evidence for: item -> (component, what);
#: what: "enable" (its first step advanced), "judged" (every step's cohort judge PASS),
#: "rollback" (a regression was rolled back), "final" (it reached the plan's last percentage)
ROLLOUT_ITEMS: dict[str, tuple[str, str]] = {
    _P2 + "2_1_logger_testing.enable_logger_feature": ("logger", "enable"),
    _P2 + "2_1_logger_testing.monitor_performance_impact": ("logger", "judged"),
    _P2 + "2_1_logger_testing.rollback_issues_detected": ("logger", "rollback"),
    _P2 + "2_2_exception_testing.enable_exception_feature": ("exception", "enable"),
    _P2 + "2_2_exception_testing.monitor_error_rates": ("exception", "judged"),
    _P2 + "2_2_exception_testing.rollback_issues_detected": ("exception", "rollback"),
    _P2 + "2_3_request_handler.enable_request_handler": ("request_handler", "enable"),
    _P2 + "2_3_request_handler.monitor_request_throughput": ("request_handler", "judged"),
    _P2 + "2_3_request_handler.rollback_issues_detected": ("request_handler", "rollback"),
    _P3 + "3_1_gradual_feature.increase_logger_rollout": ("logger", "final"),
    _P3 + "3_1_gradual_feature.increase_exception_rollout": ("exception", "final"),
    _P3 + "3_1_gradual_feature.increase_request_handler": ("request_handler", "final"),
    _P3 + "3_2_websocket_manager.enable_websocket_manager": ("websocket", "enable"),
    _P3 + "3_2_websocket_manager.monitor_websocket_performance": ("websocket", "judged"),
    _P3 + "3_2_websocket_manager.increase_rollout_gradually": ("websocket", "final"),
    _P3 + "3_3_concurrency_patterns.enable_concurrency_patterns": ("concurrency", "enable"),
    _P3 + "3_3_concurrency_patterns.monitor_lock_contention": ("concurrency", "judged"),
    _P3 + "3_3_concurrency_patterns.increase_rollout_gradually": ("concurrency", "final"),
    _P3 + "3_4_type_rollout.enable_type_feature": ("types", "enable"),
    _P3 + "3_4_type_rollout.performance_impact_strong": ("types", "judged"),
    _P3 + "3_4_type_rollout.increase_rollout_gradually": ("types", "final"),
}


def _items(conductor: Conductor, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The phase 2 and 3 items judged from the rollout (PASS, FAIL, N/A, or NOT RUN)."""
    out = []
    backs = {
        str(r["component"]): r for r in conductor.journal if r.get("type") == "rollback-finished"
    }
    for item, (component, what) in ROLLOUT_ITEMS.items():
        mine = [s for s in steps if s["component"] == component]
        if not mine:
            out.append({"id": item, "status": "N/A", "reason": f"the plan has no {component} step"})
            continue
        judged = [s for s in mine if s["verdict"]]
        status, reason = "NOT RUN", "the rollout did not get there"
        if what == "enable" and judged:
            first = judged[0]
            status = "PASS" if first["action"] == "advanced" else "FAIL"
            reason = f"step {first['step']} to {first['percent']}%: {first['verdict']}"
        elif what == "judged" and judged:
            bad = [s for s in judged if s["verdict"] == "FAIL"]
            status = "FAIL" if bad else "PASS"
            reason = "; ".join(f"step {s['step']} {s['percent']}%: {s['verdict']}" for s in judged)
        elif what == "rollback":
            back = backs.get(component)
            if back is None:
                status, reason = "N/A", "no regression was found, so nothing was rolled back"
            else:
                ok = back.get("exit_code") == 0 and back.get("flag_off")
                status = "PASS" if ok else "FAIL"
                reason = (
                    f"rollback.sh partial {component}: exit code {back.get('exit_code')}, "
                    f"flag off: {back.get('flag_off')}"
                )
        elif what == "final" and judged:
            last = mine[-1]
            if component in backs:
                status, reason = "FAIL", f"{component} was rolled back"
            elif last["action"] == "advanced":
                status, reason = "PASS", f"reached {last['percent']}% (step {last['step']})"
        out.append({"id": item, "status": status, "reason": reason})
    return out


def _timeline_png(conductor: Conductor) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sets = [r for r in conductor.journal if r.get("type") == "flag-confirmed"]
    backs = [r for r in conductor.journal if r.get("type") == "rollback-finished"]
    if not sets:
        return None
    t0 = float(conductor.journal[0]["ts"])
    fig, ax = plt.subplots(figsize=(10, 4))
    flags = sorted({str(r["flag"]) for r in sets})
    end = float(conductor.journal[-1]["ts"]) - t0
    for flag in flags:
        points = [(float(r["ts"]) - t0, float(r["percent"])) for r in sets if r["flag"] == flag]
        for r in backs:
            if any(s["flag"] == flag and s["step"] == r["step"] for s in sets):
                points.append((float(r["ts"]) - t0, 0.0))
        points.sort()
        xs = [0.0] + [p[0] for p in points] + [end]
        ys = [0.0] + [p[1] for p in points] + [points[-1][1]]
        ax.step([x / 60 for x in xs], ys, where="post", label=flag)
    for r in backs:
        ax.axvline((float(r["ts"]) - t0) / 60, color="r", linestyle="--")
        ax.annotate(f"rollback {r['component']}", ((float(r["ts"]) - t0) / 60, 90), color="r")
    ax.set_xlabel("minutes since the rollout started")
    ax.set_ylabel("rollout %")
    ax.set_ylim(-5, 105)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _cohort_png(conductor: Conductor) -> str | None:
    """Per step: the window p50s of the inside and the outside cohort side by side (box plots),
    FAIL steps marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    verdicts = [r for r in conductor.journal if r.get("type") == "verdict" and r.get("result")]
    last: dict[int, dict[str, Any]] = {}
    for v in verdicts:
        last[int(v["step"])] = v
    if not last:
        return None
    data, labels, colors = [], [], []
    for step, v in sorted(last.items()):
        result = v["result"]
        for side in ("inside", "outside"):
            windows = [
                w.get("p50_ms")
                for metric in (result.get(side) or {}).values()
                for w in metric.get("windows", [])
                if w.get("p50_ms") is not None
            ]
            data.append(windows or [float("nan")])
            labels.append(f"{step + 1} {side[:3]}")
            colors.append("tab:red" if v.get("verdict") == "FAIL" and side == "inside" else
                          "tab:blue" if side == "inside" else "tab:gray")  # fmt: skip
    fig, ax = plt.subplots(figsize=(max(8, len(data) * 0.35), 3.6))
    box = ax.boxplot(data, patch_artist=True, showfliers=False)
    for patch, color in zip(box["boxes"], colors, strict=True):
        patch.set_facecolor(color)
        patch.set_alpha(0.5)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=90, fontsize=7)
    ax.set_ylabel("window p50 (ms)")
    ax.set_title("each step: inside vs outside cohort (red: judged worse)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _steps(conductor: Conductor) -> list[dict[str, Any]]:
    out = []
    for i, step in enumerate(conductor.plan.steps):
        verdicts = [r for r in conductor.journal if r.get("type") == "verdict" and r["step"] == i]
        done = [r for r in conductor.journal if r.get("type") == "step-done" and r["step"] == i]
        v = verdicts[-1] if verdicts else {}
        out.append(
            {
                "step": i + 1,
                "component": step.component,
                "flag": step.flag,
                "percent": step.percent,
                "verdict": v.get("verdict"),
                "reason": v.get("reason"),
                "figures": (v.get("result") or {}).get("figures", []),
                "compared_with": (v.get("result") or {}).get("compared_with"),
                "stored_baseline": {
                    side: c.get("verdict")
                    for side, c in ((v.get("result") or {}).get("stored_baseline") or {}).items()
                },
                "action": done[-1]["action"] if done else None,
            }
        )
    return out


def write_reports(conductor: Conductor, outcome: RolloutOutcome) -> None:
    """rollout.json, rollout_summary.json and rollout.html (atomically)."""
    folder = conductor.reports_dir
    folder.mkdir(parents=True, exist_ok=True)
    first = conductor.journal[0]
    steps = _steps(conductor)
    triggers: list[dict[str, Any]] = []
    summary = {
        "schema_version": 1,
        "tool": "rollout",
        "suite_version": __version__,
        "run": run_identity(
            tool="rollout",
            run_id=conductor.rollout_id,
            started_at=str(first["at"]),
            finished_at=utc(time.time()),
            target_url=conductor.base_url,
            facts=first.get("target") or {},
        ),
        "verdict": outcome.verdict,
        "exit_code": outcome.exit_code,
        "reason": "; ".join(outcome.lines) if outcome.verdict == "INCOMPLETE" else None,
        "incomplete": outcome.lines if outcome.verdict == "INCOMPLETE" else [],
        "baseline": "the outside cohort of each step (same process, same moments)"
        + (f"; both cohorts also against {conductor.baseline.name}" if conductor.baseline else ""),
        "fingerprint": dict(first.get("target") or {}),
        "metrics": [],
        "triggers": triggers,
        "measured": [
            f"step {s['step']} {s['component']} {s['percent']}%: {s['verdict']} -> {s['action']}"
            for s in steps
            if s["verdict"] or s["action"]
        ],
        "messages": outcome.lines,
        "steps": steps,
        "items": _items(conductor, steps),
        "html": ROLLOUT_HTML,
    }
    write_atomic(folder / ROLLOUT_SUMMARY, summary)
    write_atomic(folder / ROLLOUT_JSON, {**summary, "journal": conductor.journal})
    png = _timeline_png(conductor)
    if png is not None:  # the sign-off report embeds it in its rollout section
        (folder / ROLLOUT_PNG).write_bytes(base64.b64decode(png))
    rows = "".join(
        f"<tr><td>{s['step']}</td><td>{html.escape(s['component'])}</td><td>{s['percent']}%</td>"
        f"<td>{s['verdict'] or ''}</td><td>{s['action'] or ''}</td>"
        f"<td><pre>{html.escape(chr(10).join(s['figures'][:8]))}</pre>"
        f"{html.escape(str(s['compared_with'] or ''))}</td>"
        f"<td>{html.escape(', '.join(f'{k} {v}' for k, v in s['stored_baseline'].items()))}</td>"
        "</tr>"
        for s in steps
    )
    img = f'<img alt="rollout timeline" src="data:image/png;base64,{png}">' if png else ""
    cohort_png = _cohort_png(conductor)
    if cohort_png:
        img += f'<br><img alt="cohorts per step" src="data:image/png;base64,{cohort_png}">'
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in outcome.lines)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>etlverify rollout</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:4px;
vertical-align:top}}table{{border-collapse:collapse}}pre{{margin:0;font-size:11px}}</style>
</head><body><h1>etlverify rollout: {outcome.verdict}</h1>
<p>{html.escape(conductor.base_url)}; plan: {html.escape(conductor.plan.source)}; rollout
{conductor.rollout_id}</p><ul>{lines}</ul>{img}
<h2>Steps (inside cohort vs the outside cohort)</h2>
<table><tr><th>#</th><th>component</th><th>to</th><th>verdict</th><th>action</th>
<th>inside vs outside</th><th>vs stored baseline</th></tr>{rows}</table>
<h2>Journal</h2><pre>{html.escape(json.dumps(conductor.journal, indent=1)[:200000])}</pre>
</body></html>
"""
    tmp = folder / f".{ROLLOUT_HTML}.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(folder / ROLLOUT_HTML)
