"""The promotion gate: the summaries of one pipeline run -> one verdict and one exit code.

``etlverify gate reports/`` reads the summaries the pipeline's steps wrote into ``reports/``
(`SOURCES`: ``summary.json`` from ``pytest -m post_deploy``, ``locust_summary.json`` from the Locust
run, ``watch_summary.json`` from ``etlverify watch``, ``rollout_summary.json`` from
``etlverify rollout``) and fails closed:

- every *required* source (``--require``, default: pytest) must have a summary; every summary
  present, required or not, is checked the same way before it counts;
- a summary is *refused* (one line naming the file and why) when it is missing, unreadable, not in
  the schema, has no or a partial ``run`` block (identity), finished longer ago than ``--max-age``
  (default 24 h) or in the future, comes from another pipeline run (``--run-id``, else
  ``ETLPLUS_PIPELINE_RUN_ID``; without either, summaries of different pipeline runs refuse the
  older), from another target (``--target``, else ``ETLPLUS_BASE_URL``; and the sources must agree
  with each other on the target), or records that its run stopped before it could judge (a usage or
  configuration error, an interrupt);
- the summaries that are accepted are merged with the rules of `etlverify.report.verdict`: the worst
  verdict wins (DO NOT PROMOTE > INCOMPLETE > PROMOTE).

Exit codes (`docs/exit-codes.md`), chosen so that none is one of pytest's own (0-5) or Locust's;
the first that applies, in this order:

====  ==============================================================================
14    usage: the gate's own arguments or environment are wrong (nothing was judged)
12    evidence: a summary is missing, unreadable, partial, stale, or from another run or target
13    target unreachable: an accepted summary says its run could not reach the target
10    DO NOT PROMOTE: a check failed, a metric is FAIL, a rollback trigger FIRED
11    INCOMPLETE: a person must decide (by default; ``--no-inconclusive-blocks`` /
      ``ETLPLUS_INCONCLUSIVE_BLOCKS=0`` makes it 0 with a warning line)
0     PROMOTE
====  ==============================================================================

With an accepted pytest summary the sign-off report (``signoff.html``) is written again with the
merged verdict, the gate's exit code and the refused evidence among the blocking findings.

Plain Python: no pytest, no locust.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from etlverify.checklist import load_checklist
from etlverify.durations import parse_duration
from etlverify.errors import EtlVerifyError
from etlverify.report.summary import (
    Finding,
    ItemRecord,
    MetricRecord,
    PromotionVerdict,
    RunIdentity,
    Status,
    Summary,
    SummaryError,
    TestRecord,
    TriggerRecord,
    load_summary,
    normalize_url,
    parse_run,
    parse_time,
    read_json,
)
from etlverify.report.verdict import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    decide,
    exit_code_for,
    missing_scope,
    worst,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = [
    "DEFAULT_MAX_AGE",
    "EXIT_GATE_DO_NOT_PROMOTE",
    "EXIT_GATE_EVIDENCE",
    "EXIT_GATE_INCOMPLETE",
    "EXIT_GATE_PROMOTE",
    "EXIT_GATE_UNREACHABLE",
    "EXIT_GATE_USAGE",
    "LOCUST_HTML",
    "LOCUST_SUMMARY",
    "PYTEST_SUMMARY",
    "SAME_RUN_HOURS",
    "SOURCES",
    "Evidence",
    "GateOptions",
    "GateResult",
    "GateUsageError",
    "load_locust",
    "load_source",
    "locust_part",
    "main_gate",
    "merge",
    "parse_max_age",
    "resolve_options",
    "run_gate",
    "same_run",
]

EXIT_GATE_PROMOTE = 0
EXIT_GATE_DO_NOT_PROMOTE = 10
EXIT_GATE_INCOMPLETE = 11
EXIT_GATE_EVIDENCE = 12
EXIT_GATE_UNREACHABLE = 13
EXIT_GATE_USAGE = 14

PYTEST_SUMMARY = "summary.json"
LOCUST_SUMMARY = "locust_summary.json"
WATCH_SUMMARY = "watch_summary.json"
ROLLOUT_SUMMARY = "rollout_summary.json"
LOCUST_HTML = "locust.html"
SIGNOFF_HTML = "signoff.html"
#: source name (``--require NAME``, ``run.tool``) -> the summary file it writes
SOURCES: dict[str, str] = {
    "pytest": PYTEST_SUMMARY,
    "locust": LOCUST_SUMMARY,
    "watch": WATCH_SUMMARY,
    "rollout": ROLLOUT_SUMMARY,
}
#: the step that writes each summary, for the lines that say one is missing
_STEPS = {
    "pytest": "python -m pytest -m post_deploy",
    "locust": "locust -f loadtests/etl.py",
    "watch": "etlverify watch",
    "rollout": "etlverify rollout",
}
DEFAULT_MAX_AGE = timedelta(hours=24)
#: a summary that finished further in the future than this is not trusted (clocks disagree)
CLOCK_SKEW = timedelta(minutes=5)
#: the pytest run's own report merges a Locust summary that started within this of it
SAME_RUN_HOURS = 6.0
_LOCUST_VERDICTS = {
    "PASS": PromotionVerdict.PROMOTE,
    "PROMOTE": PromotionVerdict.PROMOTE,
    "FAIL": PromotionVerdict.DO_NOT_PROMOTE,
    "DO NOT PROMOTE": PromotionVerdict.DO_NOT_PROMOTE,
    "INCONCLUSIVE": PromotionVerdict.INCOMPLETE,
    "INCOMPLETE": PromotionVerdict.INCOMPLETE,
}
#: a verification run's exit codes that mean it could not judge: usage or configuration error,
#: interrupted; nothing selected
_NOT_JUDGED = (EXIT_USAGE, 5)
#: how many missing items a scope refusal names before "and N more"
_SCOPE_NAMED = 5
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class GateUsageError(EtlVerifyError, ValueError):
    """The gate's own arguments or environment are wrong (exit `EXIT_GATE_USAGE`); one line."""


# -- options ---------------------------------------------------------------------------------------


def parse_max_age(text: str, source: str = "--max-age") -> timedelta:
    """``90s``, ``30m``, ``6h``, ``2d``, ``1h30m`` (`etlverify.durations`) -> timedelta;
    `GateUsageError`."""
    try:
        return timedelta(seconds=parse_duration(text or "", source))
    except ValueError as exc:
        raise GateUsageError(str(exc)) from None


def _age_text(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} d"


@dataclass(frozen=True)
class GateOptions:
    """What the gate requires and checks; see `resolve_options`."""

    require: tuple[str, ...] = ("pytest",)
    max_age: timedelta = DEFAULT_MAX_AGE
    #: the pipeline run every summary must come from (None: they must agree with each other)
    run_id: str | None = None
    #: the target every summary must have verified (None: they must agree with each other)
    target: str | None = None
    inconclusive_blocks: bool = True
    #: accept a pytest run narrower than the post-deployment scope (said in the verdict)
    allow_partial: bool = False


def _blocks_setting(cli: bool | None, env: Mapping[str, str]) -> bool:
    if cli is not None:
        return cli
    raw = env.get("ETLPLUS_INCONCLUSIVE_BLOCKS")
    if raw is None:
        return True  # fail closed: INCOMPLETE blocks unless someone says it does not
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise GateUsageError(
        f"env ETLPLUS_INCONCLUSIVE_BLOCKS: expected a boolean (1/0, true/false), got {raw!r}"
    )


def resolve_options(
    *,
    require: Sequence[str] | None = None,
    max_age: str | timedelta | None = None,
    run_id: str | None = None,
    target: str | None = None,
    inconclusive_blocks: bool | None = None,
    allow_partial: bool = False,
    env: Mapping[str, str] | None = None,
) -> GateOptions:
    """Command line first, then the environment (``ETLPLUS_PIPELINE_RUN_ID``,
    ``ETLPLUS_BASE_URL``, ``ETLPLUS_INCONCLUSIVE_BLOCKS``), then the defaults."""
    environ = os.environ if env is None else env
    sources = tuple(dict.fromkeys(require)) if require else ("pytest",)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise GateUsageError(
            f"--require {unknown[0]}: unknown source (known: {', '.join(SOURCES)})"
        )
    if isinstance(max_age, timedelta):
        age = max_age
    elif max_age is None:
        age = DEFAULT_MAX_AGE
    else:
        age = parse_max_age(max_age)
    expected_run = (run_id or "").strip() or environ.get("ETLPLUS_PIPELINE_RUN_ID", "").strip()
    expected_target = (target or "").strip() or environ.get("ETLPLUS_BASE_URL", "").strip()
    if expected_target and not re.match(r"^https?://[^/\s]+", expected_target, re.IGNORECASE):
        where = "--target" if target else "env ETLPLUS_BASE_URL"
        raise GateUsageError(f"{where}: expected an http(s) URL, got {expected_target!r}")
    return GateOptions(
        require=sources,
        max_age=age,
        run_id=expected_run or None,
        target=normalize_url(expected_target) if expected_target else None,
        inconclusive_blocks=_blocks_setting(inconclusive_blocks, environ),
        allow_partial=allow_partial,
    )


# -- reading the summaries ----------------------------------------------------------------------


def load_source(path: Path, source: str = "locust") -> dict[str, Any]:
    """Read and check a Locust (or watch) summary; `SummaryError` naming the file if not one."""
    data = read_json(path)
    problem = None
    if not isinstance(data, dict):
        problem = f"expected a JSON object, got {type(data).__name__}"
    elif data.get("schema_version") != 1:
        problem = f"schema_version {data.get('schema_version')!r} is not supported (expected 1)"
    elif data.get("verdict") is not None and data.get("verdict") not in _LOCUST_VERDICTS:
        problem = f"unknown verdict {data.get('verdict')!r}"
    elif not isinstance(data.get("metrics", []), list) or not isinstance(
        data.get("triggers", []), list
    ):
        problem = "'metrics' and 'triggers' must be lists"
    elif data.get("exit_code") is not None and (
        isinstance(data["exit_code"], bool) or not isinstance(data["exit_code"], int)
    ):
        problem = f"exit_code must be an integer, got {data['exit_code']!r}"
    if problem is None:
        try:
            for metric in data.get("metrics", []):
                MetricRecord.from_json(metric, source)
            for trigger in data.get("triggers", []):
                TriggerRecord.from_json(trigger, source)
            parse_run(data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            problem = f"bad metric, trigger or run block: {exc}"
    if problem is not None:
        raise SummaryError(f"{path}: not a {source} summary (schema 1): {problem}")
    assert isinstance(data, dict)
    return data


def load_locust(path: Path) -> dict[str, Any]:
    """Read and check a Locust summary; `SummaryError` naming the file when it is not one."""
    return load_source(path, "locust")


def _locust_started(data: Mapping[str, Any], path: Path) -> datetime | None:
    run = data.get("run")
    started = parse_time(run.get("started_at")) if isinstance(run, dict) else None
    if started is None:
        try:
            started = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except OSError:
            return None
    return started


def same_run(pytest_started: str, locust_started: datetime | None) -> bool:
    """True when the two runs started within `SAME_RUN_HOURS` of each other (unknown: True).

    Used by the pytest run's own sign-off report; the gate decides on run identities instead.
    """
    start = parse_time(pytest_started)
    if start is None or locust_started is None:
        return True
    return abs((locust_started - start).total_seconds()) <= SAME_RUN_HOURS * 3600.0


@dataclass
class Evidence:
    """One source's summary as the gate found it: accepted (`problem` empty) or refused."""

    source: str
    path: Path
    required: bool
    summary: Summary | None = None
    data: dict[str, Any] | None = None
    identity: RunIdentity | None = None
    #: ``missing``, ``unreadable``, ``unidentified``, ``partial``, ``stale``, ``other run``,
    #: ``other target``, ``incomplete``; empty when accepted
    status: str = ""
    problem: str = ""

    @property
    def accepted(self) -> bool:
        """True when this summary counts towards the verdict."""
        return not self.status

    def refuse(self, status: str, problem: str) -> None:
        """Refuse this summary (the first reason found is kept)."""
        if not self.status:
            self.status, self.problem = status, problem

    def line(self) -> str:
        """One line for people: the file, whether it counts, and why not."""
        need = "required" if self.required else "present, so checked"
        if self.accepted:
            ident = self.identity
            assert ident is not None
            pipeline = f", pipeline run {ident.pipeline_run_id}" if ident.pipeline_run_id else ""
            return (
                f"used {self.path} ({self.source} run {ident.id}{pipeline}, finished "
                f"{ident.finished_at}, target {ident.target_url or '?'}): {self.verdict_text()}"
            )
        return f"REFUSED {self.path} ({self.source}, {need}): {self.status}: {self.problem}"

    def verdict_text(self) -> str:
        """The source's own verdict, as it wrote it."""
        if self.summary is not None:
            return self.summary.verdict.value
        return str((self.data or {}).get("verdict") or "no verdict")

    @property
    def finished(self) -> datetime | None:
        """When the run that wrote it finished."""
        return parse_time(self.identity.finished_at) if self.identity else None


def _load(source: str, directory: Path, required: bool) -> Evidence:
    path = directory / SOURCES[source]
    ev = Evidence(source, path, required)
    if not directory.is_dir():
        ev.refuse("missing", f"there is no folder {directory}")
        return ev
    if not path.exists():
        ev.refuse(
            "missing",
            f"`{_STEPS[source]}` wrote no summary (it did not run, or stopped before it wrote one; "
            "its own output says why)",
        )
        return ev
    try:
        if source == "pytest":
            ev.summary = load_summary(path)
            ev.identity = ev.summary.run
        else:
            ev.data = load_source(path, source)
            ev.identity = parse_run(ev.data)
    except SummaryError as exc:
        ev.refuse("unreadable", str(exc).removeprefix(f"{path}: "))
    except ValueError as exc:
        ev.refuse("unreadable", str(exc))
    return ev


def _check_identity(ev: Evidence, options: GateOptions, now: datetime) -> None:
    """Refuse `ev` if its identity is missing, partial, too old or of another run or target."""
    ident = ev.identity
    if not ev.accepted:
        return
    if ident is None:
        ev.refuse(
            "unidentified",
            "it has no `run` block (written by an older etlverify, or not by this pipeline's "
            "run), so it cannot be shown to be this run's evidence; run the step again",
        )
        return
    missing = ident.missing()
    if missing:
        ev.refuse("partial", f"its run block lacks {', '.join(missing)}")
        return
    if ident.tool != ev.source:
        ev.refuse("partial", f"run.tool is {ident.tool!r}, expected {ev.source!r}")
        return
    finished = parse_time(ident.finished_at)
    assert finished is not None
    if finished > now + CLOCK_SKEW:
        ev.refuse(
            "stale",
            f"it finished at {ident.finished_at}, in the future of this gate's clock "
            f"({now:%Y-%m-%dT%H:%M:%SZ}): not trusted",
        )
        return
    age = now - finished
    if age > options.max_age:
        ev.refuse(
            "stale",
            f"its run {ident.id} finished at {ident.finished_at}, {_age_text(age)} ago, "
            f"longer ago than --max-age {_age_text(options.max_age)}",
        )
        return
    if options.run_id is not None and ident.pipeline_run_id != options.run_id:
        got = ident.pipeline_run_id or "none (ETLPLUS_PIPELINE_RUN_ID was not set when it ran)"
        ev.refuse(
            "stale",
            f"it is from another pipeline run: {got}; this gate judges pipeline run "
            f"{options.run_id}",
        )
        return
    _check_judged(ev)
    target = options.target
    if ev.accepted and target is not None and normalize_url(ident.target_url) != target:
        ev.refuse(
            "other target",
            f"it verified {ident.target_url or 'no named target'}; this gate judges {target}",
        )


def _check_judged(ev: Evidence) -> None:
    """Refuse a summary whose run stopped before it could judge (usage error, interrupt)."""
    if ev.summary is not None:
        error = ev.summary.error or {}
        code = ev.summary.exit_code
        if code in _NOT_JUDGED or (error and error.get("exit_code") != EXIT_UNREACHABLE):
            message = str(error.get("message") or "see the run's output")
            ev.refuse(
                "incomplete",
                f"the pytest run stopped before it could judge (exit code {code}): {message}",
            )
    elif ev.data is not None and ev.data.get("exit_code") == _error_codes(ev.source)[0]:
        message = str(ev.data.get("error") or ev.data.get("reason") or "see the run's output")
        ev.refuse(
            "incomplete",
            f"the {ev.source} run stopped before it could judge (exit code "
            f"{ev.data.get('exit_code')}): {message}",
        )


def _error_codes(source: str) -> tuple[int, int]:
    """(usage, unreachable) exit codes of a source: Locust keeps 2/3 (as the verification run);
    the watch and the rollout use the gate's family, 14/13 (docs/exit-codes.md)."""
    if source in ("watch", "rollout"):
        return EXIT_GATE_USAGE, EXIT_GATE_UNREACHABLE
    return EXIT_USAGE, EXIT_UNREACHABLE


def _scope_gap(ev: Evidence, required: Sequence[str]) -> list[str]:
    """The post-deployment items an accepted pytest summary's run did not select."""
    if ev.source != "pytest" or ev.summary is None or not ev.accepted or ev.summary.error:
        return []  # a run that could not judge (unreachable target) is decided by its error
    return missing_scope(ev.summary.items, required)


def _scope_text(ev: Evidence, missing: Sequence[str], required: Sequence[str]) -> str:
    """`summary.json covers 1 of 34 post-deployment items (-k ...); not covered: a, b, ...`."""
    assert ev.summary is not None
    sel = ev.summary.selection
    how = [
        f"{flag} {sel[key]!s}"
        for flag, key in (("-m", "markexpr"), ("-k", "keyword"))
        if sel.get(key)
    ]
    if sel.get("deselect"):
        how.append(f"--deselect x{len(sel['deselect'])}")
    names = ", ".join(missing[:_SCOPE_NAMED])
    more = f" and {len(missing) - _SCOPE_NAMED} more" if len(missing) > _SCOPE_NAMED else ""
    return (
        f"its run covered {len(required) - len(missing)} of {len(required)} post-deployment "
        f"checklist items"
        + (f" (selected with {' '.join(how)})" if how else "")
        + f"; not covered: {names}{more}"
    )


def _check_scope(evidence: list[Evidence], options: GateOptions) -> list[str]:
    """Scope is evidence: refuse a pytest run narrower than the post-deployment scope, or (with
    ``--allow-partial``) accept it and return the line that says so."""
    required = load_checklist().post_deploy_scope()
    lines: list[str] = []
    for ev in evidence:
        missing = _scope_gap(ev, required)
        if not missing:
            continue
        text = _scope_text(ev, missing, required)
        if options.allow_partial:
            lines.append(f"PARTIAL (--allow-partial): {ev.path.name}: {text}")
        else:
            ev.refuse(
                "partial scope",
                f"{text}; run `{_STEPS['pytest']}` without -k/-m/path narrowing, or accept a "
                "narrower run with --allow-partial",
            )
    return lines


def _check_together(evidence: list[Evidence]) -> None:
    """Accepted summaries must come from one pipeline run and one target."""
    accepted = [e for e in evidence if e.accepted]
    if len(accepted) < 2:
        return
    newest = max(accepted, key=lambda e: e.finished or datetime.min.replace(tzinfo=UTC))
    assert newest.identity is not None
    for ev in accepted:
        assert ev.identity is not None
        if ev is not newest and ev.identity.pipeline_run_id != newest.identity.pipeline_run_id:
            ev.refuse(
                "stale",
                f"it is from pipeline run {ev.identity.pipeline_run_id or 'none'}, the newer "
                f"{newest.path.name} from {newest.identity.pipeline_run_id or 'none'}: not one run",
            )
    accepted = [e for e in evidence if e.accepted]
    anchor = next((e for e in accepted if e.source == "pytest"), accepted[0] if accepted else None)
    if anchor is None or anchor.identity is None:
        return
    for ev in accepted:
        if ev is anchor or ev.identity is None:
            continue
        same = _same_target(anchor.identity, ev.identity)
        if same is True:
            continue
        mine, theirs = ev.identity, anchor.identity
        if same is None:  # one of them names no target: which one did what cannot be shown
            for lacking, other in ((ev, anchor), (anchor, ev)):
                ident = lacking.identity
                if ident is not None and not (ident.target_url or ident.target_fingerprint):
                    lacking.refuse(
                        "partial",
                        f"it names no target (URL or fingerprint), so it cannot be shown to have "
                        f"verified the target of {other.path.name}",
                    )
        else:
            ev.refuse(
                "other target",
                f"it verified {mine.target_url or '?'} (fingerprint "
                f"{mine.target_fingerprint or '?'}), {anchor.path.name} verified "
                f"{theirs.target_url or '?'} (fingerprint {theirs.target_fingerprint or '?'})",
            )


def _same_target(a: RunIdentity, b: RunIdentity) -> bool | None:
    if a.target_fingerprint and b.target_fingerprint:
        return a.target_fingerprint == b.target_fingerprint
    url_a, url_b = normalize_url(a.target_url), normalize_url(b.target_url)
    if url_a and url_b:
        return url_a == url_b
    return None


# -- merging -----------------------------------------------------------------------------------


def locust_part(
    data: Mapping[str, Any], *, html: str | None = None, source: str = "locust"
) -> tuple[PromotionVerdict, tuple[Finding, ...], tuple[Finding, ...], int | None, dict[str, Any]]:
    """A Locust (or watch) summary judged on its own: verdict, blocking, undecided, error code, and
    the ``locust`` object of a merged summary (for the report)."""
    metrics = tuple(MetricRecord.from_json(m, source) for m in data.get("metrics", []))
    triggers = tuple(TriggerRecord.from_json(t, source) for t in data.get("triggers", []))
    code = data.get("exit_code")
    raw = data.get("verdict")
    blocking: list[Finding] = []
    undecided: list[Finding] = []
    error_code = None
    usage, unreachable = _error_codes(source)
    if code in (usage, unreachable):
        # in the verification run's family from here on (`merge` and `_gate_code` read it so)
        error_code = EXIT_USAGE if code == usage else EXIT_UNREACHABLE
        what = "configuration error" if code == usage else "target unreachable"
        blocking.append(
            Finding("error", "", f"{what}: {data.get('error') or 'see its output'}", source)
        )
    elif raw is None:
        undecided.append(
            Finding("run", "", "no baseline verdict (no baseline, or a recording run)", source)
        )
    elif code == 1 and _LOCUST_VERDICTS[str(raw)] is not PromotionVerdict.DO_NOT_PROMOTE:
        messages = "; ".join(str(m) for m in data.get("messages") or []) or "exit code 1"
        blocking.append(Finding("run", "", f"the {source} run failed: {messages}", source))
    elif raw in ("INCONCLUSIVE", "INCOMPLETE") and not any(
        m.verdict == "INCONCLUSIVE" for m in metrics
    ):
        reasons = [str(r) for r in data.get("incomplete") or [] if r]
        if not reasons and data.get("reason"):  # rate limited, interrupted, a worker missing
            reasons = [str(data["reason"])]
        text = "; ".join(reasons) if reasons else f"baseline comparison {raw}"
        undecided.append(Finding("run" if reasons else "environment", "", text, source))
    own, b, u = decide(
        (),
        metrics,
        triggers,
        extra_blocking=blocking,
        extra_undecided=undecided,
        # a watch or rollout that PASSed judged its triggers or cohorts itself
        verified_elsewhere=source in ("watch", "rollout") and raw == "PASS",
    )
    if raw in ("FAIL", "DO NOT PROMOTE") and not b:
        said = "; ".join(str(m) for m in data.get("messages") or [] if m)
        text = (
            f"the {source} run is FAIL: {said}"
            if said
            else (f"the {source} baseline comparison is FAIL")
        )
        b = (Finding("run", "", text, source),)
        own = PromotionVerdict.DO_NOT_PROMOTE
    info = {
        "promotion": own.value,
        "verdict": raw,
        "exit_code": code,
        "baseline": data.get("baseline"),
        "html": html,
        "fingerprint": data.get("fingerprint") or {},
        "run": data.get("run") or {},
        "measured": data.get("measured") or [],
        "messages": data.get("messages") or [],
    }
    return own, b, u, error_code, info


#: a watch item's status -> the item's status in the merged summary (None: keep the item's own)
_WATCH_STATUS = {"PASS": Status.PASSED, "FAIL": Status.FAILED}


def watch_items(
    items: Sequence[ItemRecord], judged: Sequence[Mapping[str, Any]], *, source: str = "watch"
) -> tuple[tuple[ItemRecord, ...], list[Finding]]:
    """The checklist items a watch or a rollout is the evidence for
    (`etlverify.watch.report.WATCH_ITEMS`, `etlverify.rollout.report.ROLLOUT_ITEMS`):
    PASS and FAIL decide the item (a FAIL blocks); a watch shorter than the item asks for (SHORT),
    INCONCLUSIVE or N/A is attached as evidence and the item keeps its own status (a manual item
    stays for a person to confirm). Items of the pytest run that FAILED stay FAILED."""
    by_id = {str(j.get("id")): j for j in judged if isinstance(j, Mapping)}
    out: list[ItemRecord] = []
    found: list[Finding] = []
    for item in items:
        j = by_id.get(item.id)
        if j is None:
            out.append(item)
            continue
        status = str(j.get("status", ""))
        reason = f"etlverify {source}: {status}: {j.get('reason', '')}"
        outcome = {"PASS": "passed", "FAIL": "failed", "N/A": "skipped"}.get(status, "inconclusive")
        record = TestRecord(nodeid=f"etlverify {source}", outcome=outcome, reason=reason)
        new_status = _WATCH_STATUS.get(status)
        if item.status is Status.FAILED or new_status is None:
            out.append(replace(item, tests=(*item.tests, record)))
            continue
        out.append(replace(item, status=new_status, reason=reason, tests=(*item.tests, record)))
        if new_status is Status.FAILED:
            found.append(Finding("item", item.id, reason, source))
    return tuple(out), found


def merge(
    pytest_summary: Summary | None,
    locust: Mapping[str, Any] | None,
    *,
    inconclusive_blocks: bool | None = None,
    locust_html: str | None = None,
    locust_note: str = "",
    others: Mapping[str, Mapping[str, Any]] | None = None,
) -> Summary:
    """One summary from the sources given (at least one): the pytest summary, the Locust summary,
    and `others` (source name -> a summary in the Locust shape, e.g. a watch step's).

    Its ``exit_code`` is in the verification run's family (`etlverify.report.verdict`); the gate
    replaces it with its own (`run_gate`)."""
    extra = dict(others or {})
    if pytest_summary is None and locust is None and not extra:
        raise ValueError("merge() needs at least one summary")
    verdicts: list[PromotionVerdict] = []
    blocking: list[Finding] = []
    undecided: list[Finding] = []
    errors: list[int] = []
    base = pytest_summary
    if pytest_summary is not None:
        verdicts.append(pytest_summary.verdict)
        blocking += pytest_summary.blocking
        undecided += pytest_summary.undecided
        if pytest_summary.exit_code in (EXIT_USAGE, EXIT_UNREACHABLE):
            errors.append(pytest_summary.exit_code)
    locust_info: dict[str, Any] | None = None
    metrics = list(pytest_summary.metrics) if pytest_summary else []
    triggers = list(pytest_summary.triggers) if pytest_summary else []
    parts: list[tuple[str, Mapping[str, Any]]] = [("locust", locust)] if locust is not None else []
    parts += sorted(extra.items())
    for source, data in parts:
        html = locust_html if source == "locust" else None
        verdict, b, u, error_code, info = locust_part(data, html=html, source=source)
        if source == "locust":
            locust_info = info
            if locust_note:
                locust_info["note"] = locust_note
        verdicts.append(verdict)
        blocking += b
        undecided += u
        if error_code is not None:
            errors.append(error_code)
        metrics += [MetricRecord.from_json(m, source) for m in data.get("metrics", [])]
        triggers += [TriggerRecord.from_json(t, source) for t in data.get("triggers", [])]
    for source in ("watch", "rollout"):
        long_run = extra.get(source)
        if base is not None and long_run is not None:
            items, found = watch_items(base.items, long_run.get("items") or [], source=source)
            base = replace(base, items=items)
            blocking += found
            if found:
                verdicts.append(PromotionVerdict.DO_NOT_PROMOTE)
    blocks = inconclusive_blocks
    if blocks is None:
        blocks = pytest_summary.inconclusive_blocks if pytest_summary else False
    verdict = worst(verdicts)
    if errors:
        verdict = PromotionVerdict.DO_NOT_PROMOTE
    error_code = EXIT_USAGE if EXIT_USAGE in errors else (errors[0] if errors else None)
    code = exit_code_for(verdict, inconclusive_blocks=blocks, error_code=error_code)
    if base is None:
        first = locust if locust is not None else parts[0][1]
        fp = dict(first.get("fingerprint") or {})
        raw_run = first.get("run")
        run: dict[str, Any] = raw_run if isinstance(raw_run, dict) else {}
        fingerprint = {
            "target_url": run.get("target_url") or run.get("host"),
            "target_version": fp.get("target_version"),
            "build_commit": fp.get("build_commit"),
            "flags_sha256": fp.get("flags_sha256"),
            "flags": fp.get("flags") or {},
            "suite_version": fp.get("suite_version"),
        }
        try:
            identity = parse_run(first)
        except ValueError:
            identity = None
        base = Summary(
            verdict=verdict,
            exit_code=code,
            fingerprint=fingerprint,
            kind="locust",
            performance={"available": False, "reason": "only the Locust run reported"},
            run=identity,
            started_at=identity.started_at if identity else "",
            finished_at=(identity.finished_at or "") if identity else "",
        )
    return replace(
        base,
        verdict=verdict,
        exit_code=code,
        blocking=tuple(blocking),
        undecided=tuple(undecided),
        metrics=tuple(metrics),
        triggers=tuple(triggers),
        kind="merged" if pytest_summary is not None and parts else base.kind,
        inconclusive_blocks=blocks,
        locust=locust_info,
    )


# -- the gate ------------------------------------------------------------------------------------


class GateResult:
    """The merged summary (None when no summary was accepted), the gate's exit code, the evidence
    as found, and the lines the gate prints."""

    def __init__(
        self,
        summary: Summary | None,
        exit_code: int,
        evidence: list[Evidence],
        lines: list[str],
    ) -> None:
        self.summary = summary
        self.exit_code = exit_code
        self.evidence = evidence
        self.lines = lines

    @property
    def verdict(self) -> PromotionVerdict:
        """The gate's verdict (never PROMOTE on refused evidence)."""
        if self.summary is None:
            return PromotionVerdict.DO_NOT_PROMOTE
        return self.summary.verdict

    @property
    def refused(self) -> list[Evidence]:
        """The summaries that did not count, with why."""
        return [e for e in self.evidence if not e.accepted]


def _gate_code(merged: Summary | None, refused: bool, blocks: bool) -> int:
    if refused or merged is None:
        return EXIT_GATE_EVIDENCE
    if merged.exit_code == EXIT_UNREACHABLE:
        return EXIT_GATE_UNREACHABLE
    if merged.verdict is PromotionVerdict.DO_NOT_PROMOTE:
        return EXIT_GATE_DO_NOT_PROMOTE
    if merged.verdict is PromotionVerdict.INCOMPLETE:
        return EXIT_GATE_INCOMPLETE if blocks else EXIT_GATE_PROMOTE
    return EXIT_GATE_PROMOTE


def run_gate(
    directory: Path,
    *,
    options: GateOptions | None = None,
    render: bool = True,
    env: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> GateResult:
    """Check and merge the summaries in `directory` (module docstring); write signoff.html again
    when the pytest summary counts. `GateUsageError` only for bad options or environment."""
    opts = options if options is not None else resolve_options(env=env)
    clock = now or datetime.now(UTC)
    evidence = [
        _load(source, directory, source in opts.require)
        for source in SOURCES
        if source in opts.require or (directory / SOURCES[source]).exists()
    ]
    for ev in evidence:
        _check_identity(ev, opts, clock)
    _check_together(evidence)
    partial = _check_scope(evidence, opts)
    used = {e.source: e for e in evidence if e.accepted}
    refused = [e for e in evidence if not e.accepted]
    pytest_ev = used.get("pytest")
    locust_ev = used.get("locust")
    html = None
    note = ""
    if locust_ev is not None:
        if (directory / LOCUST_HTML).exists():
            html = LOCUST_HTML
        else:
            note = f"{LOCUST_HTML} is not in {directory}"
    merged: Summary | None = None
    if used:
        merged = merge(
            pytest_ev.summary if pytest_ev is not None else None,
            locust_ev.data if locust_ev is not None else None,
            inconclusive_blocks=opts.inconclusive_blocks,
            locust_html=html,
            locust_note=note,
            others={s: e.data for s, e in used.items() if s not in ("pytest", "locust") and e.data},
        )
    code = _gate_code(merged, bool(refused), opts.inconclusive_blocks)
    if merged is not None:
        findings = tuple(
            Finding("evidence", e.path.name, f"{e.status}: {e.problem}", e.source) for e in refused
        )
        verdict = PromotionVerdict.DO_NOT_PROMOTE if refused else merged.verdict
        selection = dict(merged.selection)
        if partial:
            selection["partial"] = partial
        merged = replace(
            merged,
            verdict=verdict,
            exit_code=code,
            blocking=findings + merged.blocking,
            selection=selection,
        )
    verdict = merged.verdict if merged is not None else PromotionVerdict.DO_NOT_PROMOTE
    lines = [f"etlverify gate: {verdict.value} (exit code {code})"]
    required = ", ".join(opts.require)
    lines.append(
        f"  requires: {required}; max age {_age_text(opts.max_age)}; pipeline run "
        f"{opts.run_id or '(any, but one)'}; target {opts.target or '(any, but one)'}"
    )
    lines += [f"  {e.line()}" for e in evidence]
    lines += [f"  {line}" for line in partial]
    if merged is not None:
        rest = [f for f in merged.blocking if f.kind != "evidence"]
        if rest:
            lines.append("  blocking:")
            lines += [f"    {f.line()}" for f in rest]
        if merged.undecided:
            lines.append("  for a person to decide:")
            lines += [f"    {f.line()}" for f in merged.undecided]
    if refused:
        lines.append(
            "  the refused evidence decides: run the steps that wrote it again, in this pipeline "
            "run, against this target"
        )
    elif merged is not None and merged.verdict is PromotionVerdict.INCOMPLETE and code == 0:
        lines.append(
            "  warning: INCOMPLETE does not block (exit 0) because --no-inconclusive-blocks or "
            "ETLPLUS_INCONCLUSIVE_BLOCKS=0 says so"
        )
    signoff = directory / SIGNOFF_HTML
    if render and merged is not None and pytest_ev is not None:
        from etlverify.report.signoff import write_signoff

        try:
            write_signoff(signoff, merged)
        except OSError as exc:
            lines.append(f"  sign-off report: {signoff} could not be written: {exc}")
        else:
            lines.append(f"  sign-off report: {signoff}")
    elif signoff.exists() and pytest_ev is None:
        lines.append(
            f"  {signoff} is not this run's sign-off report: its pytest summary is refused"
        )
    return GateResult(merged, code, evidence, lines)


def main_gate(
    directory: Path,
    *,
    require: Sequence[str] | None = None,
    max_age: str | None = None,
    run_id: str | None = None,
    target: str | None = None,
    inconclusive_blocks: bool | None = None,
    allow_partial: bool = False,
    render: bool = True,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The `etlverify gate` command: print the verdict and reasons, return the exit code."""
    stdout = out or sys.stdout
    stderr = err or sys.stderr
    try:
        options = resolve_options(
            require=require,
            max_age=max_age,
            run_id=run_id,
            target=target,
            inconclusive_blocks=inconclusive_blocks,
            allow_partial=allow_partial,
        )
        result = run_gate(directory, options=options, render=render)
    except GateUsageError as exc:
        print(f"etlverify gate: {exc}", file=stderr)
        return EXIT_GATE_USAGE
    except SummaryError as exc:  # not expected: every summary problem is a refusal line
        print(f"etlverify gate: {exc}", file=stderr)
        return EXIT_GATE_EVIDENCE
    for line in result.lines:
        print(line, file=stdout)
    return result.exit_code
