"""What a run tells people: header, failures, checklist summary, report files.

- Header: the settings with their sources (secrets redacted), what the checks send the target
  (load, connections, fuzzing, destructive checks; the gentler profile); after collection, the
  target (URL, version, build commit, loaded config/flags sha256).
- `CheckFailed`/`TargetError` are shown as their message, without a traceback.
- Summary: checklist items passed/failed/skipped/manual/not run, failed items with their tests.
- Files: without --html/--junitxml, reports/report.html (self-contained) and reports/junit.xml under
  the rootdir; always reports/checklist_results.json (beside the HTML report) when checklist tests
  ran. The HTML report gets a checklist column and a checklist table (pytest-html hooks, registered
  only when pytest-html is active).
- `--etl-checklist` prints the checklist map after collection and runs nothing.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.checklist import TestOutcome, format_map
from etlverify.errors import CheckFailed, TargetError
from etlverify.pytest_plugin._state import OUTCOMES_KEY, SUMMARY_KEY
from etlverify.pytest_plugin.markers import checklist_ids, get_checklist
from etlverify.pytest_plugin.options import get_settings
from etlverify.pytest_plugin.performance import PERF_KEY, ROUTE_METRICS
from etlverify.pytest_plugin.target import get_run, needs_target
from etlverify.pytest_plugin.targethealth import (
    FACT_PROPERTY,
    CheckTimedOut,
    failure_fact,
    failure_text,
)
from etlverify.report.summary import Status
from etlverify.settings import PROFILES

if TYPE_CHECKING:
    from collections.abc import Generator

    from etlverify.report.summary import ItemRecord
    from etlverify.settings import Settings
    from etlverify.target import Target

__all__ = ["HtmlChecklist", "OutcomeRecorder", "PlainFailure", "results_path", "traffic_lines"]

_STATUS_ORDER = (
    Status.PASSED,
    Status.FAILED,
    Status.SKIPPED,
    Status.INCONCLUSIVE,
    Status.MANUAL,
    Status.NOT_APPLICABLE,
    Status.NOT_RUN,
)


# -- failures without tracebacks ------------------------------------------------------------------


@dataclass(frozen=True)
class _Crash:
    path: str
    lineno: int
    message: str


class PlainFailure:
    """A report's longrepr that is just our message (terminal, junit and HTML print it as is)."""

    def __init__(self, text: str, path: str, lineno: int) -> None:
        self.text = text
        first = text.splitlines()[0] if text else ""
        self.reprcrash = _Crash(path, lineno, first)

    def toterminal(self, tw: Any) -> None:
        """Write the message (pytest's terminal writer)."""
        for line in self.text.splitlines():
            tw.line(line, red=line.startswith(("expected:", "got:")))

    def __str__(self) -> str:
        return self.text


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Every failure as its message, never a traceback, and classified for the root-cause view
    (a `FailureFact` in the report's user_properties, so it crosses xdist too)."""
    report = yield
    excinfo = call.excinfo
    if excinfo is None or not report.failed:
        return report
    value = excinfo.value
    if not (
        isinstance(value, (CheckFailed, TargetError)) or checklist_ids(item) or needs_target(item)
    ):
        return report  # not a check of the target (the project's own tests): pytest's report
    path, lineno, _ = item.location
    header = ""
    if isinstance(value, TargetError) or (
        isinstance(value, BaseExceptionGroup) and not isinstance(value, CheckFailed)
    ):
        header = f"{item.name}: the target did not answer usably"
    text = failure_text(item, excinfo, header)
    if isinstance(value, CheckTimedOut):
        ids = checklist_ids(item)
        blocks = f"\nblocks checklist: {', '.join(ids)}" if ids else ""
        text = f"{item.name}: {value}{blocks}"
    elif isinstance(value, TargetError):
        text = _target_error_text(item, str(value))
    report.longrepr = PlainFailure(text, path, (lineno or 0) + 1)  # type: ignore[assignment]
    fact = failure_fact(item, excinfo, checklist_ids(item))
    report.user_properties.append((FACT_PROPERTY, json.dumps(fact.to_json())))
    return report


_WS_URL = re.compile(r"\bwss?://[^\s:,;]+(?::\d+)?[^\s,;]*")


def _target_error_text(item: pytest.Item, message: str) -> str:
    """A transport failure told like a check failure: the check, the items it blocks, what
    happened, and a way to reproduce (a curl WebSocket handshake when there is no curl line)."""
    lines = [f"{item.name}: the target did not answer usably"]
    ids = checklist_ids(item)
    if ids:
        lines.append(f"blocks checklist: {', '.join(ids)}")
    lines.append(f"got: {message}")
    match = _WS_URL.search(message)
    if "Reproduce with" not in message and match:
        url = match.group(0).rstrip(".:")
        http_url = "http" + url.removeprefix("ws")
        lines.append(
            "Reproduce with: curl -i -N -m 10 -H 'Connection: Upgrade' -H 'Upgrade: websocket' "
            "-H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: ZXRsdmVyaWZ5LXByb2JlIQ==' "
            f"{http_url}"
        )
    return "\n".join(lines)


# -- default report files -------------------------------------------------------------------------


def results_path(config: pytest.Config) -> Path:
    """Where checklist_results.json goes: beside the HTML report, else <rootdir>/reports."""
    htmlpath = getattr(config.option, "htmlpath", None)
    base = Path(htmlpath).parent if htmlpath else config.rootpath / "reports"
    if not base.is_absolute():
        base = Path(config.invocation_params.dir) / base
    return base / "checklist_results.json"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Default --html/--junitxml to reports/ (before pytest-html and junitxml read them)."""
    config.stash[OUTCOMES_KEY] = {}
    if hasattr(config, "workerinput"):
        return
    if (
        config.getini("etlplus_default_reports")
        and not _offline(config)
        and _targets_verification(config)
    ):
        reports = config.rootpath / "reports"
        if hasattr(config.option, "htmlpath") and not config.option.htmlpath:
            config.option.htmlpath = str(reports / "report.html")
            config.option.self_contained_html = True
        if hasattr(config.option, "xmlpath") and not config.option.xmlpath:
            config.option.xmlpath = str(reports / "junit.xml")
    config.pluginmanager.register(OutcomeRecorder(config), "etlverify-outcomes")
    if config.pluginmanager.hasplugin("html"):
        config.pluginmanager.register(HtmlChecklist(config), "etlverify-html")


def _targets_verification(config: pytest.Config) -> bool:
    """Whether this run points at the verification suites (their default: `testpaths`).

    The project's own test runs (`pytest tests`) then leave reports/ alone, so they never overwrite
    the evidence of the last gate run.
    """
    args = [a.split("::", 1)[0] for a in config.args if not a.startswith("-")]
    if not args:
        return True
    suites = (config.rootpath / "verification").resolve()
    invoked = Path(config.invocation_params.dir)
    for arg in args:
        path = (invoked / arg).resolve()
        if path == suites or suites in path.parents or path in suites.parents:
            return True
    return False


def _offline(config: pytest.Config) -> bool:
    return bool(config.getoption("etl_checklist") or config.option.collectonly)


# -- header ---------------------------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The settings with their sources (secrets redacted): what reproduces this run."""
    settings = get_settings(config)
    lines = ["etlverify settings (value [source]):"]
    lines += [f"  {name} = {value}  [{source}]" for name, value, source in settings.describe()]
    if settings.embedded:
        lines.append("etlverify target: embedded reference (started when a test needs it)")
    lines.append(
        "etlverify: functional checks pace themselves within the target's rate limits "
        "(X-RateLimit-*, Retry-After); what had to be paced is listed with the verdict"
    )
    lines += traffic_lines(config, settings)
    numprocesses = getattr(config.option, "numprocesses", None)
    if numprocesses and getattr(config.option, "dist", "no") != "loadgroup":
        lines.append("etlverify: with -n, add --dist loadgroup so destructive tests run serially")
    return lines


def traffic_lines(config: pytest.Config, settings: Settings) -> list[str]:
    """What the checks send the target when they are selected, in two lines: the load, the
    connection churn and the fuzzing of this run's profile, the destructive checks, and the
    gentler profile (a "read-only" post-deployment run once left a real ETL Plus not answering)."""
    profile = settings.load_profile
    sends: list[str] = []
    collector = config.stash.get(PERF_KEY, None)
    if collector is not None:
        plan = collector.plan
        jobs = round(plan.routes.rate_rps * plan.routes.duration_s / len(ROUTE_METRICS))
        sends.append(
            f"~{plan.routes.rate_rps:g} req/s for {plan.routes.duration_s:g} s of measured load "
            f"on {len(ROUTE_METRICS)} key routes (~{jobs} of them create jobs), then "
            f"{plan.users.users} users reading and {plan.pool.users} creating jobs, "
            f"{plan.users.duration_s:g} s each"
        )
    sends.append(
        f"{settings.connections} fresh connections one after another "
        f"(<= {settings.connections_budget_s:g} s)"
    )
    sends.append(
        f"hypothesis fuzzing, <= {settings.fuzz_examples} requests or "
        f"{settings.fuzz_budget_s:g} s a check"
        if settings.fuzz_allowed
        else "no fuzzing (skipped)"
    )
    first = (
        f"etlverify: the checks send, when selected (profile {settings.profile} "
        f"[{settings.source_of('profile')}]): " + "; ".join(sends)
    )
    if settings.embedded:
        destructive = "destructive checks on (the embedded reference: flags, config, restarts)"
    elif settings.allow_destructive:
        destructive = (
            f"destructive checks ON [{settings.source_of('allow_destructive')}]: flag and config "
            "changes, rollback, restarts"
        )
    else:
        destructive = (
            "destructive checks off (--allow-destructive: flag and config changes, rollback, "
            "restarts)"
        )
    gentler = PROFILES["production"]
    second = f"etlverify: {destructive}" + (
        f"; gentler: --profile production ({gentler.describe()})"
        if profile.name != gentler.name
        else ""
    )
    return [first, second]


def _target_lines(target: Target) -> list[str]:
    kind = "embedded reference" if target.embedded else "deployed"
    return [
        f"etlverify target: {target.base_url} ({kind}) version {target.version}, "
        f"build {target.commit}",
        f"  config sha256 {target.loaded_sha256('config')}, "
        f"flags sha256 {target.loaded_sha256('feature_flags')}"
        + (f", root {target.deploy_root}" if target.deploy_root else ""),
    ]


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    """After collection (the target is up by now if a test needs it): the target's identity."""
    run = get_run(config)
    return _target_lines(run.target) if run.target is not None else []


# -- --etl-checklist ------------------------------------------------------------------------------


def _tests_by_item(items: list[pytest.Item]) -> dict[str, list[str]]:
    by_item: dict[str, list[str]] = {}
    for item in items:
        for item_id in checklist_ids(item):
            by_item.setdefault(item_id, []).append(item.nodeid)
    return by_item


def pytest_collection_finish(session: pytest.Session) -> None:
    """With --etl-checklist: print the map of checklist items to the collected tests."""
    config = session.config
    if not config.getoption("etl_checklist"):
        return
    checklist = get_checklist(config)
    by_item = _tests_by_item(session.items)
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None:
        return
    tr.write_line("")
    for line in format_map(checklist, by_item):
        tr.write_line(line)
    untested = checklist.untested(by_item)
    counts = Counter(i.automation for i in checklist.items)
    tr.write_line("")
    tr.write_line(
        f"checklist: {len(checklist)} items ({counts['automated']} automated, "
        f"{counts['manual']} manual, {counts['n/a']} n/a); "
        f"{len(untested)} automated items have no collected test"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    """With --etl-checklist nothing runs."""
    return True if session.config.getoption("etl_checklist") else None


# -- outcomes, results, summary -------------------------------------------------------------------


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return ""


class OutcomeRecorder:
    """Folds each test's setup/call/teardown reports into one `TestOutcome` (controller or single
    process: xdist workers' reports arrive here too)."""

    def __init__(self, config: pytest.Config) -> None:
        self.outcomes = config.stash[OUTCOMES_KEY]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Record the outcome of one phase."""
        ids = tuple(
            i
            for key, value in report.user_properties
            if key == "checklist"
            for i in str(value).split()
        )
        prev = self.outcomes.get(report.nodeid)
        outcome: str | None = None
        reason = ""
        xfail = hasattr(report, "wasxfail")
        if report.when == "setup":
            if report.failed:
                outcome = "error"
            elif report.skipped:
                outcome, reason = (
                    ("xfailed", str(report.wasxfail))
                    if xfail
                    else ("skipped", _skip_reason(report))
                )
        elif report.when == "call":
            if report.passed:
                outcome = "xpassed" if xfail else "passed"
            elif report.failed:
                outcome = "failed"
            else:
                outcome, reason = (
                    ("xfailed", str(report.wasxfail))
                    if xfail
                    else ("skipped", _skip_reason(report))
                )
        elif report.failed and (prev is None or prev.outcome in ("passed", "xpassed")):
            outcome = "error"
        if outcome is not None:
            self.outcomes[report.nodeid] = TestOutcome(report.nodeid, outcome, reason, ids)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Start the clock for the results file."""
    session.config.stash[_START_KEY] = time.time()


_START_KEY = pytest.StashKey[float]()


def _results(config: pytest.Config) -> tuple[ItemRecord, ...]:
    """The checklist as the sign-off judged it (one model of the evidence: the terminal,
    checklist_results.json, summary.json and the report all read these records)."""
    summary = config.stash.get(SUMMARY_KEY, None)
    return summary.items if summary is not None else ()


def _has_checklist_tests(config: pytest.Config) -> bool:
    return any(o.item_ids for o in config.stash.get(OUTCOMES_KEY, {}).values())


def _target_of(config: pytest.Config) -> Target | None:
    run = get_run(config)
    if run.target is not None:
        return run.target
    return run.shared.started() if run.shared is not None else None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write checklist_results.json from the sign-off's judgement (trylast, registered before the
    sign-off plugin: its own trylast sessionfinish has judged by now)."""
    config = session.config
    if hasattr(config, "workerinput") or not _has_checklist_tests(config):
        return
    results = _results(config)
    if not results:
        return
    settings = get_settings(config)
    target = _target_of(config)
    counts = Counter(r.status.value for r in results)
    data = {
        "schema_version": 1,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.time() - config.stash.get(_START_KEY, time.time()), 1),
        "exit_status": int(session.exitstatus),
        "target": target.to_json() if target else None,
        "settings": [{"name": n, "value": v, "source": s} for n, v, s in settings.describe()],
        "counts": {s.value: counts.get(s.value, 0) for s in _STATUS_ORDER},
        "items": [_item_json(r) for r in results],
    }
    path = results_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _item_json(record: ItemRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "section": record.section,
        "heading": record.heading,
        "text": record.text,
        "automation": record.automation,
        "status": record.status.value,
        "reason": record.reason,
        "signed_by": record.signed_by,
        "tests": [
            {"nodeid": t.nodeid, "outcome": t.outcome, "reason": t.reason} for t in record.tests
        ],
    }


@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Checklist items by status, with the failed ones and the tests behind them (tryfirst: the
    verdict comes after it)."""
    if not _has_checklist_tests(config):
        return
    tr = terminalreporter
    results = _results(config)
    if not results:
        return
    counts = Counter(r.status for r in results)
    tr.section("etlverify checklist")
    target = _target_of(config)
    if target is not None:
        for line in _target_lines(target):
            tr.write_line(line)
    tr.write_line(
        "checklist items: "
        + ", ".join(f"{counts.get(s, 0)} {s.value.replace('-', ' ')}" for s in _STATUS_ORDER)
        + f" (of {len(results)})"
    )
    for result in results:
        if result.status is Status.FAILED:
            tr.write_line(f"FAILED  {result.id}: {result.text}", red=True)
            for test in result.tests:
                tr.write_line(f"    {test.outcome:<8} {test.nodeid}")
    for result in results:
        if result.status in (Status.SKIPPED, Status.INCONCLUSIVE):
            label = "SKIPPED" if result.status is Status.SKIPPED else "UNSURE "
            tr.write_line(f"{label} {result.id}: {result.reason}", yellow=True)
    files = []
    htmlpath = getattr(config.option, "htmlpath", None)
    xmlpath = getattr(config.option, "xmlpath", None)
    files += [str(p) for p in (htmlpath, xmlpath) if p]
    files.append(str(results_path(config)))
    tr.write_line("reports: " + ", ".join(files))


# -- pytest-html ----------------------------------------------------------------------------------


class HtmlChecklist:
    """pytest-html additions: a checklist column and the checklist table in the summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        """Add the Checklist column header."""
        cells.insert(2, '<th class="col-checklist">Checklist</th>')

    def pytest_html_results_table_row(
        self, report: pytest.TestReport | pytest.CollectReport, cells: list[str]
    ) -> None:
        """Add the test's checklist ids."""
        # collection errors arrive here too, as CollectReports without user_properties
        props = getattr(report, "user_properties", ())
        ids = " ".join(str(v) for k, v in props if k == "checklist")
        cells.insert(2, f'<td class="col-checklist">{html.escape(ids)}</td>')

    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
    ) -> None:
        """Add the verdict with a link to the sign-off report, the target, the checklist table."""
        config = session.config
        judged = config.stash.get(SUMMARY_KEY, None)
        if judged is not None:
            verdict = html.escape(judged.verdict.value)
            prefix.append(
                f"<p id='etlverify-verdict'><b>etlverify verdict: {verdict}</b> (exit code "
                f"{judged.exit_code}) - the sign-off report with the evidence: "
                "<a href='signoff.html'>signoff.html</a></p>"
            )
        target = _target_of(config)
        if target is not None:
            prefix.append(
                "<p>" + "<br>".join(html.escape(line) for line in _target_lines(target)) + "</p>"
            )
        if not _has_checklist_tests(config):
            return
        rows = []
        for result in _results(config):
            tests = "<br>".join(html.escape(f"{t.outcome}: {t.nodeid}") for t in result.tests)
            rows.append(
                f"<tr><td>{html.escape(result.id)}</td><td>{html.escape(result.text)}"
                f"</td><td>{result.status.value}</td><td>{html.escape(result.reason)}</td>"
                f"<td>{tests}</td></tr>"
            )
        postfix.append(
            "<h2>Checklist</h2><table id='etlverify-checklist'><thead><tr><th>Item</th>"
            "<th>Text</th><th>Status</th><th>Reason</th><th>Tests</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop the helper plugin objects (they hold the config)."""
    for name in ("etlverify-html", "etlverify-outcomes"):
        plugin = config.pluginmanager.get_plugin(name)
        if plugin is not None:
            config.pluginmanager.unregister(plugin)
