"""Sign-off: the run's evidence -> reports/summary.json, reports/signoff.html, verdict, exit code.

Only in a *verification run* (a selected test names a checklist item; ``pytest tests`` never is):

- every test report's evidence is kept (failure text with expected/got, response excerpt and curl
  line; skip reasons; captured stdout; ``user_properties`` such as measured figures and
  performance verdicts), redacted (`etlverify.report.evidence.scrub`);
- at session end the checklist is judged into a `Summary` (`etlverify.report.verdict`), the
  performance comparison of the run is taken from the performance plugin (`PERF_KEY`, or a
  hand-over through `record_performance`), and summary.json and signoff.html are written beside
  the other reports;
- the exit code becomes the gate's: 0 PROMOTE, 1 DO NOT PROMOTE, 3 target unreachable (kept),
  11 INCOMPLETE when inconclusive blocks (else 0), 2 when the run could not start (kept).

Options: ``--operator NAME`` (ETLPLUS_OPERATOR, default $USER) and ``--signoff ROLE=NAME``
(repeatable; ETLPLUS_SIGNOFF, ``;``-separated).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from etlverify.errors import in_words
from etlverify.pytest_plugin._state import OUTCOMES_KEY, SUMMARY_KEY
from etlverify.pytest_plugin.markers import checklist_ids, get_checklist
from etlverify.pytest_plugin.options import get_settings
from etlverify.pytest_plugin.reporting import results_path
from etlverify.pytest_plugin.target import get_run
from etlverify.pytest_plugin.targethealth import FACT_PROPERTY, current_health
from etlverify.report.causes import FailureFact, diagnose
from etlverify.report.evidence import performance_lines, scrub, section_evidence, truncate
from etlverify.report.perfdata import fold_first_use
from etlverify.report.summary import (
    Finding,
    PromotionVerdict,
    Summary,
    TestRecord,
    write_summary,
)
from etlverify.report.verdict import (
    EXIT_CHECKS_FAILED,
    EXIT_INCONCLUSIVE,
    EXIT_PROMOTE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    build_items,
    decide,
    exit_code_for,
    fold_blocking,
    missing_scope,
)

if TYPE_CHECKING:
    from collections.abc import Generator, Sequence
    from pathlib import Path

    from etlverify.baseline import Baseline, Comparison
    from etlverify.measure import RunResult
    from etlverify.report.summary import ItemRecord, RunIdentity
    from etlverify.target import Target

__all__ = ["SIGNOFF_KEY", "PerfHandOver", "SignoffState", "get_signoff", "record_performance"]

SUMMARY_NAME = "summary.json"
SIGNOFF_NAME = "signoff.html"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class PerfHandOver:
    """What a performance plugin hands over when it does not expose its own collector."""

    comparison: Comparison | None
    run: RunResult | None
    baseline: Baseline | None = None
    baseline_path: Path | None = None
    reason: str = ""
    #: a machine baseline's first-use run (`PerfCollector.first_use_json`), said once
    first_use: dict[str, Any] | None = None
    #: the host's contention per group (`PerfCollector.host_json`): measure the measurer
    host: dict[str, Any] | None = None


@dataclass
class _Evidence:
    duration_s: float = 0.0
    failure: str = ""
    blocks: list[str] = field(default_factory=list)
    perf_verdicts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SignoffState:
    """Per-run facts of the sign-off (controller or single process)."""

    operator: str
    operator_source: str
    signoff: tuple[tuple[str, str], ...]
    started_at: str
    secrets: tuple[str, ...]
    #: nodeid -> checklist ids of every selected test (not known on an xdist controller)
    selected: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: tests collected but deselected (``-m``, ``-k``, ``--deselect``; None on an xdist controller)
    deselected: int | None = None
    evidence: dict[str, _Evidence] = field(default_factory=dict)
    verification: bool = False
    summary: Summary | None = None
    summary_path: Path | None = None
    signoff_path: Path | None = None
    perf: PerfHandOver | None = None
    note: str = ""
    #: every failed check, classified (`etlverify.pytest_plugin.targethealth.failure_fact`)
    facts: list[FailureFact] = field(default_factory=list)


SIGNOFF_KEY = pytest.StashKey[SignoffState]()


def get_signoff(config: pytest.Config) -> SignoffState | None:
    """The run's sign-off state (None on xdist workers)."""
    return config.stash.get(SIGNOFF_KEY, None)


def record_performance(
    config: pytest.Config,
    comparison: Comparison | None,
    run: RunResult | None,
    *,
    baseline: Baseline | None = None,
    baseline_path: Path | None = None,
    reason: str = "",
) -> None:
    """Hand the run's performance comparison to the sign-off report (call before session end).

    Not needed when the performance plugin's collector (`PERF_KEY`) is active: it is read directly.
    """
    state = get_signoff(config)
    if state is not None:
        state.perf = PerfHandOver(comparison, run, baseline, baseline_path, reason)


# -- options ---------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--operator`` and ``--signoff ROLE=NAME``."""
    group = parser.getgroup("etlverify-signoff", "etlverify sign-off report")
    group.addoption(
        "--operator",
        dest="etl_operator",
        metavar="NAME",
        default=None,
        help="who ran the verification, for the sign-off report (default $USER) "
        "[env ETLPLUS_OPERATOR]",
    )
    group.addoption(
        "--signoff",
        dest="etl_signoff",
        action="append",
        metavar="ROLE=NAME",
        default=None,
        help="a name for a sign-off role (Deployment Lead, Operations Lead, Development Lead, "
        "Quality Assurance); repeatable; unnamed roles get blank lines "
        "[env ETLPLUS_SIGNOFF, ';'-separated]",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Resolve the sign-off options (bad role: one-line usage error) and start recording."""
    if hasattr(config, "workerinput"):
        return
    from etlverify.report.fingerprint import operator_name
    from etlverify.report.signoff import parse_signoff

    cli: list[str] = config.getoption("etl_signoff") or []
    env = os.environ.get("ETLPLUS_SIGNOFF", "")
    try:
        names = parse_signoff(
            [e for e in env.split(";") if e.strip()], "env ETLPLUS_SIGNOFF"
        ) + parse_signoff(cli)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    merged = dict(names)  # CLI entries come last and win
    settings = get_settings(config)
    operator, source = operator_name(config.getoption("etl_operator"), os.environ)
    config.stash[SIGNOFF_KEY] = SignoffState(
        operator=operator,
        operator_source=source,
        signoff=tuple(merged.items()),
        started_at=_now(),
        secrets=tuple(s for s in (settings.password, settings.token) if s),
    )
    config.pluginmanager.register(_Recorder(config), "etlverify-signoff-recorder")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop the recorder (it holds the config)."""
    plugin = config.pluginmanager.get_plugin("etlverify-signoff-recorder")
    if plugin is not None:
        config.pluginmanager.unregister(plugin)


# -- superseded evidence, and a summary for a run that stops early -------------------------------

#: the reports this run rewrites; removed before it starts, so none of an older run is left beside
#: this run's junit.xml and report.html
_SUPERSEDED = (SUMMARY_NAME, SIGNOFF_NAME, "checklist_results.json")
_EARLY_KEY = pytest.StashKey[str]()  # when the run started (UTC, ISO 8601), set before configure
_NOT_RUNS = ("help", "version", "showfixtures", "show_fixtures_per_test", "markers")


def _judges_nothing(config: pytest.Config) -> bool:
    """--help, --version, --fixtures, --markers and the offline runs leave reports/ alone."""
    option = config.option
    return any(getattr(option, name, False) for name in _NOT_RUNS) or bool(
        option.collectonly
        or getattr(option, "setupplan", False)
        or getattr(option, "setuponly", False)
        or getattr(option, "etl_checklist", False)
    )


def _writes_evidence(config: pytest.Config) -> bool:
    """Whether this run's summary belongs in reports/: it points at the verification suites, or
    it turned out to be a verification run (a selected test names a checklist item)."""
    from etlverify.pytest_plugin.reporting import _targets_verification

    state = config.stash.get(SIGNOFF_KEY, None)
    if state is not None and state.verification:
        return True
    try:
        return _targets_verification(config)
    except (OSError, ValueError):
        return False


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_cmdline_main(config: pytest.Config) -> Generator[None, int | pytest.ExitCode, int]:
    """Before the run: remove the summaries it will rewrite. After it: if it stopped before
    writing its own (a usage error in the options, the settings or the baseline, Ctrl-C before
    the tests were selected, an unreachable target at session start, nothing collected), write
    summary.json with the reason and keep the exit code.

    trylast: the innermost wrapper, so a `pytest.UsageError` is seen here with its message before
    `options.pytest_cmdline_main` turns it into exit code 2.
    """
    if hasattr(config, "workerinput") or _judges_nothing(config):
        return (yield)
    config.stash[_EARLY_KEY] = _now()
    if _writes_evidence(config):
        folder = _reports_dir(config)
        for name in _SUPERSEDED:
            with contextlib.suppress(OSError):
                (folder / name).unlink(missing_ok=True)
    try:
        ret = yield
    except pytest.UsageError as exc:
        _stopped(config, EXIT_USAGE, "usage error: " + "; ".join(str(a) for a in exc.args))
        raise
    code = int(ret)
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        _stopped(config, code, _STOPPED_REASONS.get(code, f"pytest ended with exit status {code}"))
    return ret


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> Generator[None]:
    """A command line pytest cannot parse (``--no-such-option``) ends the run right after this hook
    with pytest's exit code 4, before any hook that could write a summary. So once every option
    is known (the conftests are loaded), parse the command line the way pytest is about to, and if
    it fails, remove the summaries of an older run and write one that says why.

    Only a plugin loaded before the conftests (the ``pytest11`` entry point, ``-p``) gets here.
    """
    result = yield
    ns = early_config.known_args_namespace
    if getattr(ns, "help", False) or getattr(ns, "version", False):
        return result
    import copy

    try:
        parser.parse(list(args), namespace=copy.copy(early_config.option))
    except pytest.UsageError as exc:
        lines = [ln for a in exc.args for ln in str(a).splitlines() if ln.strip()]
        why = next((ln.split(" error: ", 1)[1] for ln in lines if " error: " in ln), None)
        _unparsable(early_config, ns, why or "; ".join(lines[:1]))
    except Exception:  # PrintHelp and the like: pytest's own parse decides
        pass
    return result


def _unparsable(config: pytest.Config, ns: Any, message: str) -> None:
    """Supersede the reports of an older run and leave a summary naming the usage error."""
    from pathlib import Path

    invoked = Path(config.invocation_params.dir)
    htmlpath = getattr(ns, "htmlpath", None)
    folder = Path(htmlpath).parent if htmlpath else config.rootpath / "reports"
    folder = folder if folder.is_absolute() else invoked / folder
    suites = (config.rootpath / "verification").resolve()
    paths = [str(a).split("::", 1)[0] for a in getattr(ns, "file_or_dir", None) or []]
    points = not paths or any(
        (p := (invoked / a).resolve()) == suites or suites in p.parents or p in suites.parents
        for a in paths
    )
    if not points:
        return
    for name in _SUPERSEDED:
        with contextlib.suppress(OSError):
            (folder / name).unlink(missing_ok=True)
    started = _now()
    base_url = getattr(ns, "etlplus_base_url", None) or os.environ.get("ETLPLUS_BASE_URL") or None
    secrets = tuple(
        v for v in (os.environ.get("ETLPLUS_TOKEN"), os.environ.get("ETLPLUS_PASSWORD")) if v
    )
    text = scrub(f"usage error: {message}", secrets)
    finding = Finding("error", "", f"the run could not judge: {text}")
    summary = Summary(
        verdict=PromotionVerdict.INCOMPLETE,
        exit_code=EXIT_USAGE,
        undecided=(finding,),
        fingerprint={"target_url": base_url, "embedded": base_url is None},
        started_at=started,
        finished_at=started,
        performance={"available": False, "reason": "the run stopped before it measured"},
        error={"exit_code": int(pytest.ExitCode.USAGE_ERROR), "message": text},
        run=_run_block(None, started, started, base_url),
    )
    with contextlib.suppress(OSError):
        write_summary(folder / SUMMARY_NAME, summary)


_STOPPED_REASONS = {
    2: "interrupted before the tests were selected or judged (Ctrl-C, or errors during "
    "collection: see the run's output)",
    3: "pytest ended with exit status 3 before judging (target unreachable, or an internal "
    "error: see the run's output)",
    4: "usage error (see the run's output)",
    5: "no test was collected or selected: nothing was verified",
}


def _stopped(config: pytest.Config, code: int, reason: str) -> None:
    """summary.json for a run that ended without judging, unless the run wrote its own."""
    state = config.stash.get(SIGNOFF_KEY, None)
    if (state is not None and state.summary is not None) or not _writes_evidence(config):
        return
    from etlverify import __version__
    from etlverify.pytest_plugin._state import RUN_KEY
    from etlverify.report.fingerprint import operator_name

    secrets = [os.environ.get(v, "") for v in ("ETLPLUS_TOKEN", "ETLPLUS_PASSWORD")]
    if state is not None:
        secrets += state.secrets
    message = scrub(reason, tuple(s for s in secrets if s))
    cli_url = getattr(config.option, "etlplus_base_url", None)
    base_url = cli_url or os.environ.get("ETLPLUS_BASE_URL") or None
    run = config.stash.get(RUN_KEY, None)
    started = state.started_at if state is not None else config.stash.get(_EARLY_KEY, _now())
    finished = _now()
    kept = code if code in (EXIT_USAGE, EXIT_UNREACHABLE, 5) else EXIT_USAGE
    unreachable = kept == EXIT_UNREACHABLE
    finding = Finding("error", "", f"the run could not judge: {message}")
    operator = operator_name(getattr(config.option, "etl_operator", None), os.environ)[0]
    summary = Summary(
        verdict=PromotionVerdict.DO_NOT_PROMOTE if unreachable else PromotionVerdict.INCOMPLETE,
        exit_code=kept,
        blocking=(finding,) if unreachable else (),
        undecided=() if unreachable else (finding,),
        fingerprint={
            "target_url": base_url,
            "embedded": base_url is None,
            "suite_version": __version__,
            "operator": operator,
            "run_id": run.run_id if run is not None else "",
        },
        kind="pytest",
        started_at=started,
        finished_at=finished,
        signoff=state.signoff if state is not None else (),
        performance={"available": False, "reason": "the run stopped before it measured"},
        error={"exit_code": code, "message": message},
        run=_run_block(run, started, finished, base_url),
    )
    folder = _reports_dir(config)
    with contextlib.suppress(OSError):
        write_summary(folder / SUMMARY_NAME, summary)
    if state is not None:
        state.summary_path = folder / SUMMARY_NAME


def _run_block(run: Any, started: str, finished: str, base_url: str | None) -> RunIdentity:
    """The identity of a run that never reached its target (no version or build known)."""
    from etlverify.report.summary import RunIdentity as Identity
    from etlverify.report.summary import run_identity

    data = run_identity(
        tool="pytest",
        run_id=run.run_id if run is not None else None,
        started_at=started,
        finished_at=finished,
        target_url=base_url,
        embedded=base_url is None,
    )
    return Identity.from_json(data)


def _identity(config: pytest.Config, state: SignoffState, finished: str) -> RunIdentity:
    """The ``run`` block of this run's summary: its id, times and the target it verified."""
    from etlverify.report.summary import RunIdentity as Identity
    from etlverify.report.summary import run_identity, target_facts

    settings = get_settings(config)
    target = _target(config)
    data = run_identity(
        tool="pytest",
        run_id=get_run(config).run_id,
        started_at=state.started_at,
        finished_at=finished,
        target_url=target.base_url if target is not None else settings.base_url,
        embedded=target.embedded if target is not None else settings.base_url is None,
        facts=target_facts(target.status) if target is not None else None,
    )
    return Identity.from_json(data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _offline(config: pytest.Config) -> bool:
    """Runs that judge nothing: --collect-only, --setup-plan, --etl-checklist."""
    option = config.option
    return bool(
        option.collectonly
        or getattr(option, "setupplan", False)
        or getattr(option, "setuponly", False)
        or config.getoption("etl_checklist", False)
    )


def _reports_dir(config: pytest.Config) -> Path:
    return results_path(config).parent


# -- recording ---------------------------------------------------------------------------------


class _Recorder:
    """Keeps the evidence of every test report (controller or single process)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.state = config.stash[SIGNOFF_KEY]

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """After selection: which tests (and so which items) this run selected."""
        if _offline(self.config):
            return
        self.state.selected = {item.nodeid: checklist_ids(item) for item in items}
        if any(self.state.selected.values()):
            self.state.verification = True
            # A stale verdict from an earlier run must never be read as this run's.
            # (Usually gone already: the pytest_cmdline_main wrapper removes them before the run;
            # not when the run does not point at the verification suites but selects their items.)
            folder = _reports_dir(self.config)
            for name in _SUPERSEDED:
                with contextlib.suppress(OSError):
                    (folder / name).unlink(missing_ok=True)

    def pytest_deselected(self, items: Sequence[pytest.Item]) -> None:
        """Count what `-m`, `-k` and `--deselect` left out (the run's selection is evidence)."""
        self.state.deselected = (self.state.deselected or 0) + len(items)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Generator[None]:
        """The last word: after pytest's own summary line, the verdict and the sign-off report
        (tryfirst wrapper: outside the terminal reporter's, which prints that line)."""
        result = yield
        state = self.state
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        _own_exit_line(tr)
        if state.summary is not None and tr is not None:
            summary = state.summary
            tr.write_line(
                f"etlverify: {summary.verdict.value} (exit code {summary.exit_code}) - "
                f"sign-off report: {state.signoff_path}",
                bold=True,
                **_colour(summary),
            )
        return result

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Keep duration, failure text, captured output and user properties (redacted)."""
        ev = self.state.evidence.setdefault(report.nodeid, _Evidence())
        if report.failed:
            for key, value in report.user_properties:
                if key == FACT_PROPERTY:
                    with contextlib.suppress(ValueError, TypeError):
                        self.state.facts.append(FailureFact.from_json(json.loads(str(value))))
        ev.duration_s += float(getattr(report, "duration", 0.0) or 0.0)
        secrets = self.state.secrets
        if report.failed:
            text = scrub(report.longreprtext, secrets)
            if report.when != "call":
                text = f"[{report.when}] {text}"
            ev.failure = truncate((ev.failure + "\n" + text).strip())
        if report.when == "teardown" or (report.when == "setup" and not report.passed):
            # the last report of a test carries every section captured so far
            ev.blocks = [truncate(scrub(b, secrets)) for b in section_evidence(report.sections)]
            for key, value in report.user_properties:
                if key == "checklist":
                    continue
                if key == FACT_PROPERTY:
                    continue
                if key == "performance":
                    lines, verdicts = performance_lines(value)
                    ev.perf_verdicts += verdicts
                    if lines:
                        ev.blocks.append(truncate(scrub("measured:\n" + "\n".join(lines), secrets)))
                    continue
                ev.blocks.append(truncate(scrub(f"{key} = {value}", secrets)))


def _own_exit_line(tr: Any) -> None:
    """A `pytest.exit(message)` of the plugin (unreachable target) in its own words.

    pytest would print it at unconfigure as ``! _pytest.outcomes.Exit: <message> !``: a class
    name is not for people. The terminal reporter keeps it in ``_keyboardinterrupt_memo`` (no
    public hook lets a plugin word it), so the line is printed here and the memo dropped.
    """
    memo = getattr(tr, "_keyboardinterrupt_memo", None)
    crash = getattr(memo, "reprcrash", None)
    message = str(getattr(crash, "message", ""))
    prefix = "_pytest.outcomes.Exit: "
    if tr is None or not message.startswith(prefix):
        return
    tr.write_line(message.removeprefix(prefix), red=True, bold=True)
    tr._keyboardinterrupt_memo = None


# -- judging -----------------------------------------------------------------------------------


def _test_record(nodeid: str, outcome: str, reason: str, ev: _Evidence | None) -> TestRecord:
    """One test's record; `outcome` becomes ``inconclusive`` where the performance verdict is."""
    ev = ev or _Evidence()
    verdicts = {str(v.get("verdict")) for v in ev.perf_verdicts}
    if outcome == "skipped" and reason.startswith("INCONCLUSIVE"):
        outcome = "inconclusive"
    elif outcome == "failed" and "INCONCLUSIVE" in verdicts and "FAIL" not in verdicts:
        outcome = "inconclusive"  # failed only because --inconclusive-blocks says so
    if outcome in ("failed", "error", "inconclusive") and ev.failure:
        reason = ev.failure
    return TestRecord(nodeid, outcome, reason, round(ev.duration_s, 3), tuple(ev.blocks))


def _target(config: pytest.Config) -> Target | None:
    run = get_run(config)
    if run.target is not None:
        return run.target
    return run.shared.started() if run.shared is not None else None


def _flags(target: Target | None, token: str | None, timeout: float) -> tuple[dict[str, Any], str]:
    """GET /api/flags at the end of the run (the flag states the verdict is about)."""
    if target is None:
        return {}, "no target was reached"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.get(target.base_url + "/api/flags", headers=headers, timeout=min(timeout, 5.0))
        body = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        return {}, f"GET /api/flags failed at the end of the run: {in_words(exc)}"
    if not isinstance(body, dict):
        return {}, f"GET /api/flags answered HTTP {resp.status_code} at the end of the run"
    return body, "GET /api/flags at the end of the run"


def _perf_source(config: pytest.Config, state: SignoffState) -> PerfHandOver | None:
    if state.perf is not None:
        return state.perf
    try:
        from etlverify.pytest_plugin.performance import PERF_KEY
    except ImportError:  # pragma: no cover - the module ships with the plugin
        return None
    collector = config.stash.get(PERF_KEY, None)
    if collector is None:
        return None
    path = getattr(collector.settings, "baseline", None)
    if not collector.groups:
        return PerfHandOver(
            None,
            None,
            collector.baseline,
            path,
            "no performance test ran in this run (they are marked `performance`)",
        )
    comparison = collector.comparison or collector.judge()
    run = collector.run_result()
    reason = "" if comparison is not None else collector.no_baseline_reason()
    return PerfHandOver(
        comparison,
        run,
        collector.baseline,
        path,
        reason,
        collector.first_use_json(),
        collector.host_json(),
    )


def _inconclusive_blocks(config: pytest.Config) -> bool:
    try:
        from etlverify.pytest_plugin.performance import PERF_KEY

        collector = config.stash.get(PERF_KEY, None)
    except ImportError:  # pragma: no cover
        collector = None
    if collector is not None:
        return bool(collector.settings.inconclusive_blocks)
    if config.getoption("inconclusive_blocks", None):
        return True
    raw = os.environ.get("ETLPLUS_INCONCLUSIVE_BLOCKS", "").strip().lower()
    return raw in _TRUE


def _performance(
    config: pytest.Config, state: SignoffState
) -> tuple[dict[str, Any], Any, Any, list[Finding]]:
    from etlverify.report.perfdata import metric_records, performance_section, trigger_records

    try:
        perf = _perf_source(config, state)
    except Exception as exc:  # the report must be written whatever broke
        perf = PerfHandOver(None, None, reason=f"performance data could not be read: {exc}")
    if perf is None:
        return (
            {"available": False, "reason": "the performance plugin is not active in this run"},
            (),
            (),
            [],
        )
    section = performance_section(
        comparison=perf.comparison,
        run=perf.run,
        baseline=perf.baseline,
        baseline_path=perf.baseline_path,
        unavailable=perf.reason,
        first_use=perf.first_use,
        host=perf.host,
    )
    env_findings = [
        Finding(
            "environment",
            m.field,
            f"differs from the baseline ({m.baseline} -> {m.current}): numbers not comparable",
        )
        for m in (perf.comparison.environment if perf.comparison is not None else ())
        if m.severity.value == "error"
    ]
    return (
        section,
        metric_records(perf.comparison, "pytest"),
        trigger_records(perf.comparison, "pytest"),
        env_findings,
    )


def _build(session: pytest.Session, exitstatus: int, state: SignoffState) -> Summary:
    config = session.config
    settings = get_settings(config)
    run = get_run(config)
    outcomes = config.stash.get(OUTCOMES_KEY, {})
    by_item: dict[str, list[TestRecord]] = {}
    unmapped: list[TestRecord] = []
    for nodeid, outcome in outcomes.items():
        ids = outcome.item_ids or state.selected.get(nodeid, ())
        record = _test_record(nodeid, outcome.outcome, outcome.reason, state.evidence.get(nodeid))
        if not ids:
            unmapped.append(record)
        for item_id in ids:
            by_item.setdefault(item_id, []).append(record)
    for nodeid, ids in state.selected.items():
        if nodeid not in outcomes:
            for item_id in ids:
                by_item.setdefault(item_id, []).append(TestRecord(nodeid, "not-run"))
    selected_items = {i for ids in state.selected.values() for i in ids}
    checklist = get_checklist(config)
    known = {i for i in by_item if i in checklist}
    items = build_items(checklist, {k: by_item[k] for k in known}, selected_items & known)
    perf, metrics, triggers, env_findings = _performance(config, state)
    blocking: list[Finding] = []
    error: dict[str, Any] | None = None
    status = int(exitstatus)
    if status == EXIT_UNREACHABLE or (status == 2 and not outcomes):
        message = run.target_error or (
            "pytest ended with exit status 3 (target unreachable, or an internal error)"
            if status == EXIT_UNREACHABLE
            else "the run was interrupted before any test ran (collection errors?)"
        )
        error = {"exit_code": status, "message": scrub(message, state.secrets)}
        blocking.append(Finding("error", "", error["message"]))
    verdict, blocks, undecided = decide(
        items,
        metrics,
        triggers,
        unmapped_tests=unmapped,
        extra_blocking=blocking,
        extra_undecided=env_findings,
    )
    undecided = fold_first_use(undecided, perf.get("first_use"))  # said once, not per metric
    primary = diagnose(_facts(state, by_item))
    blocks = fold_blocking(blocks, items, primary)
    blocks_setting = _inconclusive_blocks(config)
    code = _exit_code(session, status, verdict, blocks_setting, bool(outcomes))
    if code == EXIT_CHECKS_FAILED and verdict is not PromotionVerdict.DO_NOT_PROMOTE:
        # pytest saw a failure the checklist does not explain: fail closed, and say so.
        blocks = (*blocks, Finding("run", "", "pytest reported failures (exit status 1)"))
        verdict = PromotionVerdict.DO_NOT_PROMOTE
    target = _target(config)
    health = current_health(config)
    token = settings.token
    flags, flags_source = _flags(target, token, settings.request_timeout)
    from etlverify.report.fingerprint import build_fingerprint

    baseline = perf.get("baseline") if isinstance(perf, dict) else None
    fingerprint = build_fingerprint(
        target=target,
        base_url=settings.base_url,
        flags=flags,
        flags_source=flags_source,
        root=config.rootpath,
        operator=state.operator,
        settings=settings.describe(),
        baseline=baseline,
        run_id=run.run_id,
    )
    finished = _now()
    return Summary(
        verdict=verdict,
        exit_code=code,
        blocking=blocks,
        undecided=undecided,
        items=items,
        metrics=tuple(metrics),
        triggers=tuple(triggers),
        fingerprint=fingerprint,
        kind="pytest",
        inconclusive_blocks=blocks_setting,
        started_at=state.started_at,
        finished_at=finished,
        signoff=state.signoff,
        performance=perf,
        error=error,
        unmapped_tests=tuple(unmapped),
        run=_identity(config, state, finished),
        primary=primary,
        health=health.summary() if health is not None else {},
        pacing=tuple(p.line() for p in health.pacing.values()) if health is not None else (),
        selection=_selection(config, state, items, checklist.post_deploy_scope()),
    )


def _selection(
    config: pytest.Config,
    state: SignoffState,
    items: Sequence[ItemRecord],
    required: Sequence[str],
) -> dict[str, Any]:
    """What this run selected, and the post-deployment items it left out (``selection``)."""
    option = config.option
    missing = missing_scope(items, required)
    return {
        "markexpr": getattr(option, "markexpr", "") or None,
        "keyword": getattr(option, "keyword", "") or None,
        "deselect": list(getattr(option, "deselect", None) or []),
        "args": [str(a) for a in config.args],
        "selected_tests": len(state.selected) if state.selected else None,
        "deselected_tests": state.deselected,
        "required_scope": "post_deploy",
        "required_items": len(required),
        "missing_items": missing,
    }


def _facts(state: SignoffState, by_item: dict[str, list[TestRecord]]) -> list[FailureFact]:
    """The classified failures, plus a plain one for a failed test that left none."""
    facts = list(state.facts)
    known = {f.nodeid for f in facts}
    for records in by_item.values():
        for record in records:
            if record.outcome in ("failed", "error") and record.nodeid not in known:
                known.add(record.nodeid)
                line = next((ln for ln in record.reason.splitlines() if ln.strip()), "failed")
                name = record.nodeid.rsplit("::", 1)[-1]
                facts.append(FailureFact(record.nodeid, name, "contract", line.strip()[:300]))
    return facts


def _exit_code(
    session: pytest.Session, status: int, verdict: PromotionVerdict, blocks: bool, ran: bool
) -> int:
    """The gate's exit code for this run (see the module docstring)."""
    if status == EXIT_UNREACHABLE:
        return EXIT_UNREACHABLE
    interrupted = status == pytest.ExitCode.INTERRUPTED
    if interrupted and not (ran and isinstance(session.shouldstop, str) and session.shouldstop):
        return EXIT_USAGE  # Ctrl-C or collection errors: pytest's own 2, kept
    if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and not interrupted:
        return status if status in (EXIT_USAGE,) else EXIT_CHECKS_FAILED
    code = exit_code_for(verdict, inconclusive_blocks=blocks)
    if status == pytest.ExitCode.TESTS_FAILED and code == EXIT_PROMOTE:
        return EXIT_CHECKS_FAILED
    return code


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Judge once, write summary.json and signoff.html, and set the gate's exit code (tryfirst:
    pytest-html's report and checklist_results.json are written from this judgement)."""
    config = session.config
    state = get_signoff(config)
    if state is None or hasattr(config, "workerinput") or _offline(config):
        return
    if int(session.exitstatus) == pytest.ExitCode.USAGE_ERROR:
        return  # a UsageError (e.g. a broken baseline): pytest_cmdline_main writes it, with why
    outcomes = config.stash.get(OUTCOMES_KEY, {})
    if not (state.verification or any(o.item_ids for o in outcomes.values())):
        return
    state.verification = True
    summary = _build(session, int(session.exitstatus), state)
    folder = _reports_dir(config)
    state.summary_path = folder / SUMMARY_NAME
    state.signoff_path = folder / SIGNOFF_NAME
    write_summary(state.summary_path, summary)
    try:
        _write_report(state.signoff_path, summary)
    except Exception as exc:  # summary.json and the exit code still count
        state.note = f"signoff.html could not be written: {type(exc).__name__}: {exc}"
    state.summary = summary
    config.stash[SUMMARY_KEY] = summary
    session.exitstatus = summary.exit_code


def _write_report(path: Path, summary: Summary) -> None:
    """Render the sign-off report; with a Locust summary of the same run, the merged view."""
    from etlverify.gate import LOCUST_HTML, LOCUST_SUMMARY, load_locust, merge, same_run
    from etlverify.report.signoff import write_signoff
    from etlverify.report.summary import SummaryError

    shown = summary
    locust_path = path.parent / LOCUST_SUMMARY
    if locust_path.exists():
        try:
            locust = load_locust(locust_path)
        except SummaryError:
            locust = None
        if locust is not None:
            from etlverify.gate import _locust_started

            if same_run(summary.started_at, _locust_started(locust, locust_path)):
                html = LOCUST_HTML if (path.parent / LOCUST_HTML).exists() else None
                shown = merge(
                    summary,
                    locust,
                    inconclusive_blocks=summary.inconclusive_blocks,
                    locust_html=html,
                    locust_note="merged by the pytest run; `etlverify gate` decides",
                )
    write_signoff(path, shown)


_MAX_FINDINGS = 12


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The verdict: primary findings (root cause first), what blocks, what a person must decide."""
    state = get_signoff(config)
    if state is None or state.summary is None:
        return
    summary = state.summary
    tr = terminalreporter
    colour = _colour(summary)
    tr.section("etlverify verdict", bold=True, **colour)
    tr.write_line(f"{summary.verdict.value} (exit code {summary.exit_code})", bold=True, **colour)
    if summary.primary:
        tr.write_line("primary findings (root cause first):")
        for number, cause in enumerate(summary.primary[:_MAX_FINDINGS], 1):
            tr.write_line(f"  {number}. {cause.sentence}", red=True)
            extra = [ln for ln in cause.lines if ln != cause.sentence]
            for line in extra[:3]:
                tr.write_line(f"       {line}")
            if len(extra) > 3:
                tr.write_line(f"       ... and {len(extra) - 3} more (summary.json)")
        if len(summary.primary) > _MAX_FINDINGS:
            rest = len(summary.primary) - _MAX_FINDINGS
            tr.write_line(f"  ... and {rest} more findings (summary.json, signoff.html)")
    _blocking(tr, summary.blocking)
    _lines(tr, "for a person to decide", summary.undecided, yellow=True)
    if summary.pacing:
        tr.write_line("paced to stay within the target's rate limits:")
        for line in summary.pacing:
            tr.write_line(f"  {line}")
    if summary.verdict is PromotionVerdict.INCOMPLETE and summary.exit_code == EXIT_PROMOTE:
        tr.write_line(
            "warning: INCOMPLETE does not block (exit 0); --inconclusive-blocks makes it exit "
            f"{EXIT_INCONCLUSIVE}; `etlverify gate` decides in CI",
            yellow=True,
        )
    cov = summary.coverage
    missing = summary.selection.get("missing_items") or []
    if missing:
        required = int(summary.selection.get("required_items") or 0)
        tr.write_line(
            f"scope: partial: this run covered {required - len(missing)} of {required} "
            "post-deployment checklist items; `etlverify gate` refuses it as evidence unless "
            "--allow-partial (summary.json `selection.missing_items` names the rest)",
            yellow=True,
        )
    if cov["outside_selection"]:
        tr.write_line(
            f"scope: {cov['in_scope']} of {cov['automated']} automated checklist items were in "
            f"this run's selection; the other {cov['outside_selection']} are reported as not run"
        )
    tr.write_line(f"summary: {state.summary_path}")
    if state.note:
        tr.write_line(state.note, red=True)


def _colour(summary: Summary) -> dict[str, bool]:
    return {
        PromotionVerdict.PROMOTE: {"green": True},
        PromotionVerdict.DO_NOT_PROMOTE: {"red": True},
        PromotionVerdict.INCOMPLETE: {"yellow": True},
    }[summary.verdict]


def _blocking(tr: Any, findings: Sequence[Finding]) -> None:
    """Blocking findings; failed items that point at primary findings are listed once, short."""
    if not findings:
        return
    items = [f for f in findings if f.kind == "item" and "primary finding" in f.text]
    others = [f for f in findings if f not in items]
    _lines(tr, "blocking", others, red=True)
    if items:
        tr.write_line(f"blocking checklist items ({len(items)}), by primary finding:")
        for finding in items[: _MAX_FINDINGS * 2]:
            tr.write_line(f"  {finding.ref}: {finding.text.removeprefix('failed - ')}", red=True)
        if len(items) > _MAX_FINDINGS * 2:
            tr.write_line(f"  ... and {len(items) - _MAX_FINDINGS * 2} more (summary.json)")


def _lines(tr: Any, title: str, findings: Sequence[Finding], **markup: bool) -> None:
    if not findings:
        return
    tr.write_line(f"{title}:")
    for finding in findings[:20]:
        tr.write_line(f"  {finding.line()}", **markup)
    if len(findings) > 20:
        tr.write_line(f"  ... and {len(findings) - 20} more (summary.json)")
