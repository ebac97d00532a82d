"""The sign-off report: one self-contained HTML file that answers "may we promote, and why?".

Rendered from a `Summary` alone (jinja2 template ``templates/signoff.html.j2``, package data), so
the pytest plugin writes it at the end of a run and `etlverify gate` can write it again after
merging the Locust summary. No external resource: CSS is inline, plots are ``data:`` URIs, and
the only links are relative ones to sibling report files that exist.

The sign-off roles are the checklist's ("Sign-off" section); manual items are assigned to a role by
their ``signed_by`` field; names come from ``--signoff ROLE=NAME`` (`parse_signoff`), else the
sheet has blank lines for signatures.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

from etlverify.report.plots import performance_plots
from etlverify.report.summary import ItemRecord, PromotionVerdict, Status, Summary

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

__all__ = [
    "ROLES",
    "SIBLING_FILES",
    "parse_signoff",
    "render_signoff",
    "role_of",
    "write_signoff",
]

#: The checklist's sign-off roles, in its order.
ROLES = ("Deployment Lead", "Operations Lead", "Development Lead", "Quality Assurance")
#: `signed_by` of checklist.json -> role
_SIGNED_BY = {
    "deployment lead": "Deployment Lead",
    "operations": "Operations Lead",
    "development": "Development Lead",
    "qa": "Quality Assurance",
}
_ALIASES = {
    "deployment lead": "Deployment Lead",
    "deployment": "Deployment Lead",
    "lead": "Deployment Lead",
    "operations lead": "Operations Lead",
    "operations": "Operations Lead",
    "ops": "Operations Lead",
    "development lead": "Development Lead",
    "development": "Development Lead",
    "dev": "Development Lead",
    "quality assurance": "Quality Assurance",
    "qa": "Quality Assurance",
}
#: Files beside the sign-off report that it links to when they exist: name -> label.
SIBLING_FILES = {
    "report.html": "pytest-html report (every test, its output)",
    "junit.xml": "JUnit XML",
    "summary.json": "summary.json (this verdict, machine-readable)",
    "checklist_results.json": "checklist_results.json",
    "locust_summary.json": "Locust summary (performance gate of the load run)",
    "watch.html": "Watch report (etlverify watch: timeline, triggers, notifications)",
    "watch.json": "watch.json (every window and event of the watch)",
    "rollout.html": "Rollout report (etlverify rollout: flags over time, each step's cohorts)",
    "rollout.json": "rollout.json (the rollout's journal and every step's comparison)",
}
#: Evidence of the long-running steps shown as sections of their own: summary file -> (section
#: id, title, timeline image beside it, its own report).
LONG_RUNS = {
    "watch_summary.json": ("watch", "Watch (etlverify watch)", "watch_timeline.png", "watch.html"),
    "rollout_summary.json": (
        "rollout",
        "Staged rollout (etlverify rollout)",
        "rollout_timeline.png",
        "rollout.html",
    ),
}
LOCUST_HTML = "locust.html"

_STATUS_LABEL = {
    Status.PASSED: "passed",
    Status.FAILED: "FAILED",
    Status.SKIPPED: "skipped",
    Status.INCONCLUSIVE: "inconclusive",
    Status.NOT_RUN: "not run",
    Status.MANUAL: "manual",
    Status.NOT_APPLICABLE: "n/a",
}


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("-", " ").replace("_", " ").split())


def role_of(signed_by: str) -> str:
    """The sign-off role of a manual item's ``signed_by`` (Deployment Lead when unknown)."""
    return _SIGNED_BY.get(_norm(signed_by), _ALIASES.get(_norm(signed_by), ROLES[0]))


def parse_signoff(values: Iterable[str], source: str = "--signoff") -> tuple[tuple[str, str], ...]:
    """``ROLE=NAME`` entries -> (role, name) in `ROLES` order; ValueError names the bad entry.

    Roles match case-insensitively, with ``-``/``_`` as spaces, and short forms (``qa``, ``ops``,
    ``dev``, ``deployment``); a later entry for the same role wins.
    """
    names: dict[str, str] = {}
    for raw in values:
        role_text, sep, name = raw.partition("=")
        if not sep or not role_text.strip() or not name.strip():
            raise ValueError(f"{source}: expected ROLE=NAME, got {raw!r}")
        role = _ALIASES.get(_norm(role_text))
        if role is None:
            close = difflib.get_close_matches(_norm(role_text), list(_ALIASES), n=1, cutoff=0.6)
            hint = f"; did you mean {_ALIASES[close[0]]!r}?" if close else ""
            raise ValueError(
                f"{source}: unknown role {role_text.strip()!r} (roles: {', '.join(ROLES)}){hint}"
            )
        names[role] = name.strip()
    return tuple((role, names[role]) for role in ROLES if role in names)


@dataclass(frozen=True)
class _Heading:
    name: str
    items: tuple[ItemRecord, ...]


@dataclass(frozen=True)
class _Section:
    name: str
    headings: tuple[_Heading, ...]
    counts: Mapping[str, int]


def _sections(items: Sequence[ItemRecord]) -> list[_Section]:
    order: dict[str, dict[str, list[ItemRecord]]] = {}
    for item in items:
        order.setdefault(item.section, {}).setdefault(item.heading or item.section, []).append(item)
    out = []
    for section, headings in order.items():
        counts: dict[str, int] = {}
        for group in headings.values():
            for item in group:
                counts[item.status.value] = counts.get(item.status.value, 0) + 1
        out.append(
            _Section(
                section,
                tuple(_Heading(name, tuple(group)) for name, group in headings.items()),
                counts,
            )
        )
    return out


def _evaluate(state_parts: Sequence[str]) -> str:
    if "FIRED" in state_parts or "NOT MET" in state_parts:
        return "bad"
    if "UNDECIDED" in state_parts:
        return "undecided"
    return "good" if state_parts else "undecided"


def _trigger_rows(summary: Summary) -> list[dict[str, Any]]:
    """Each checklist rollback trigger: the item's tests and every measured trigger behind it."""
    rows = []
    for item in summary.items:
        if not item.id.startswith("rollback.critical_rollback."):
            continue
        measured = [t for t in summary.triggers if t.item_id == item.id]
        parts: list[str] = []
        if item.status is Status.FAILED:
            parts.append("FIRED")
        elif item.status is Status.PASSED:
            parts.append("CLEAR")
        elif item.in_scope:
            parts.append("UNDECIDED")
        parts += [t.state for t in measured if t.state != "UNKNOWN"]
        state = _evaluate(parts)
        label = {"bad": "FIRED", "good": "CLEAR", "undecided": "NOT EVALUATED"}[state]
        rows.append({"item": item, "measured": measured, "state": state, "label": label})
    return rows


def _criteria_rows(summary: Summary) -> list[dict[str, Any]]:
    """Each success criterion: met, not met, or to be decided (long-term ones are manual)."""
    rows = []
    for item in summary.items:
        if item.section != "Success Metrics":
            continue
        if item.automation == "manual":
            state, label = "manual", f"to confirm later ({role_of(item.signed_by)})"
        elif item.status is Status.PASSED:
            state, label = "good", "MET"
        elif item.status is Status.FAILED:
            state, label = "bad", "NOT MET"
        elif item.status is Status.NOT_RUN and not item.in_scope:
            state, label = "undecided", "not evaluated in this run"
        else:
            state, label = "undecided", f"UNDECIDED ({item.status.value})"
        rows.append({"item": item, "state": state, "label": label})
    return rows


def _signoff_rows(summary: Summary) -> list[dict[str, Any]]:
    names = dict(summary.signoff)
    manual: dict[str, list[ItemRecord]] = {role: [] for role in ROLES}
    for item in summary.items:
        if item.status is Status.MANUAL:
            manual[role_of(item.signed_by)].append(item)
    decide = [i for i in summary.items if i.in_scope and i.status is not Status.PASSED]
    qa_duty = [i for i in decide if i.status is not Status.MANUAL]
    return [
        {
            "role": role,
            "name": names.get(role, ""),
            "manual": manual[role],
            "decide": qa_duty if role == "Quality Assurance" else [],
        }
        for role in ROLES
    ]


def _headline(summary: Summary) -> str:
    if summary.error:
        return str(summary.error.get("message", "the run could not judge the target"))
    if summary.verdict is PromotionVerdict.PROMOTE:
        return "Yes: every automated check in scope passed and no metric or trigger blocks."
    if summary.verdict is PromotionVerdict.DO_NOT_PROMOTE:
        n = len(summary.blocking)
        return f"No: {n} blocking finding{'s' if n != 1 else ''}, listed below."
    n = len(summary.undecided)
    return (
        f"Not yet: nothing failed, but {n} finding{'s' if n != 1 else ''} "
        "need a person's decision, listed below."
    )


def _siblings(directory: Path | None, summary: Summary) -> list[dict[str, str]]:
    if directory is None:
        return []
    links = []
    for name, label in SIBLING_FILES.items():
        if (directory / name).exists():
            links.append({"href": name, "label": label})
    locust = summary.locust or {}
    if locust.get("html") and (directory / str(locust["html"])).exists():
        links.append({"href": str(locust["html"]), "label": "Locust HTML report (load run)"})
    return links


def _long_runs(directory: Path | None) -> list[dict[str, Any]]:
    """The watch and rollout sections: verdict, what was measured, the timeline (embedded, so the
    report stays one file), and the link to their own report."""
    if directory is None:
        return []
    out: list[dict[str, Any]] = []
    for name, (ident, title, png, page) in LONG_RUNS.items():
        path = directory / name
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        image = directory / png
        out.append(
            {
                "id": ident,
                "title": title,
                "verdict": str(data.get("verdict") or "?"),
                "lines": [str(x) for x in (data.get("messages") or [])][:12],
                "measured": [str(x) for x in (data.get("measured") or [])][:20],
                "items": [i for i in data.get("items") or [] if isinstance(i, dict)],
                "png": base64.b64encode(image.read_bytes()).decode("ascii")
                if image.exists()
                else None,
                "href": page if (directory / page).exists() else None,
            }
        )
    return out


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("etlverify.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _num
    env.filters["pval"] = _pval
    env.filters["ticks"] = _ticks
    return env


def _ticks(text: str) -> Markup:
    """Escape `text` and show the checklist's `backticked` names as code."""
    parts = str(escape(text)).split("`")
    out = [f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)]
    return Markup("".join(out))  # every part was escaped above


def _num(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        number = float(value)
        return f"{number:.{digits}g}" if abs(number) < 1000 else f"{number:,.0f}"
    return str(value)


def _pval(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def render_signoff(summary: Summary, directory: Path | None = None) -> str:
    """The HTML text of the sign-off report for `summary` (files in `directory` get linked)."""
    template = _environment().get_template("signoff.html.j2")
    perf = dict(summary.performance)
    plots = performance_plots(perf.get("plots")) if perf.get("available") else []
    pytest_metrics = [m for m in summary.metrics if m.source == "pytest"]
    locust_metrics = [m for m in summary.metrics if m.source == "locust"]
    generated = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(
        template.render(
            s=summary,
            Status=Status,
            labels=_STATUS_LABEL,
            verdict_class={
                PromotionVerdict.PROMOTE: "promote",
                PromotionVerdict.DO_NOT_PROMOTE: "block",
                PromotionVerdict.INCOMPLETE: "incomplete",
            }[summary.verdict],
            headline=_headline(summary),
            sections=_sections(summary.items),
            outside=[
                i.id
                for i in summary.items
                if i.automation == "automated" and not i.in_scope and not i.tests
            ],
            counts=summary.counts,
            coverage=summary.coverage,
            perf=perf,
            plots=plots,
            pytest_metrics=pytest_metrics,
            locust_metrics=locust_metrics,
            locust=summary.locust,
            trigger_rows=_trigger_rows(summary),
            criteria_rows=_criteria_rows(summary),
            signoff_rows=_signoff_rows(summary),
            fingerprint=summary.fingerprint,
            siblings=_siblings(directory, summary),
            long_runs=_long_runs(directory),
            generated=generated,
        )
    )


def write_signoff(path: Path, summary: Summary) -> None:
    """Render and write atomically (temporary file, then `os.replace`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_signoff(summary, path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
