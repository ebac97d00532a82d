"""The promotion gate: merge a run's pytest and Locust summaries into one verdict and exit code.

``etlverify gate reports/`` reads ``reports/summary.json`` (written by ``pytest -m post_deploy``)
and ``reports/locust_summary.json`` (written by the Locust scenario), whichever exist, and
decides with the rules of `etlverify.report.verdict`:

- the merged verdict is the worst of the two (DO NOT PROMOTE > INCOMPLETE > PROMOTE);
- a source that could not judge (its exit code 2 or 3: configuration error, target unreachable)
  blocks, and its code wins: 2 before 3, both before the verdict's code;
- otherwise 1 for DO NOT PROMOTE, 4 for INCOMPLETE when inconclusive blocks
  (``--inconclusive-blocks``, ETLPLUS_INCONCLUSIVE_BLOCKS, else what the pytest run recorded),
  0 otherwise.

Neither file: exit 2 with one line. A file that is not JSON or not in the schema: exit 2 naming it.
A Locust summary whose run started more than `SAME_RUN_HOURS` away from the pytest run is from
another run: it is left out, with a line saying so. When the pytest summary exists, the sign-off
report (``signoff.html``) is written again with the merged verdict and the Locust section.

Plain Python: no pytest, no locust.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from etlverify.report.summary import (
    Finding,
    MetricRecord,
    PromotionVerdict,
    Summary,
    SummaryError,
    TriggerRecord,
    load_summary,
    read_json,
)
from etlverify.report.verdict import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    decide,
    exit_code_for,
    worst,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = [
    "LOCUST_HTML",
    "LOCUST_SUMMARY",
    "PYTEST_SUMMARY",
    "SAME_RUN_HOURS",
    "GateResult",
    "locust_part",
    "merge",
    "run_gate",
    "same_run",
]

PYTEST_SUMMARY = "summary.json"
LOCUST_SUMMARY = "locust_summary.json"
LOCUST_HTML = "locust.html"
SIGNOFF_HTML = "signoff.html"
#: a Locust run that started further than this from the pytest run is not "the same run"
SAME_RUN_HOURS = 6.0
_LOCUST_VERDICTS = {
    "PASS": PromotionVerdict.PROMOTE,
    "PROMOTE": PromotionVerdict.PROMOTE,
    "FAIL": PromotionVerdict.DO_NOT_PROMOTE,
    "DO NOT PROMOTE": PromotionVerdict.DO_NOT_PROMOTE,
    "INCONCLUSIVE": PromotionVerdict.INCOMPLETE,
    "INCOMPLETE": PromotionVerdict.INCOMPLETE,
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class GateResult:
    """The merged summary, its exit code, and the lines the gate prints."""

    def __init__(self, summary: Summary, lines: list[str]) -> None:
        self.summary = summary
        self.lines = lines

    @property
    def exit_code(self) -> int:
        """The process exit code."""
        return self.summary.exit_code


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _locust_started(data: Mapping[str, Any], path: Path) -> datetime | None:
    run = data.get("run")
    started = _parse_time(run.get("started_at")) if isinstance(run, dict) else None
    if started is None:
        try:
            started = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except OSError:
            return None
    return started


def same_run(pytest_started: str, locust_started: datetime | None) -> bool:
    """True when the two runs started within `SAME_RUN_HOURS` of each other (unknown: True)."""
    start = _parse_time(pytest_started)
    if start is None or locust_started is None:
        return True
    return abs((locust_started - start).total_seconds()) <= SAME_RUN_HOURS * 3600.0


def load_locust(path: Path) -> dict[str, Any]:
    """Read and check a Locust summary; `SummaryError` naming the file when it is not one."""
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
                MetricRecord.from_json(metric, "locust")
            for trigger in data.get("triggers", []):
                TriggerRecord.from_json(trigger, "locust")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            problem = f"bad metric or trigger: {exc}"
    if problem is not None:
        raise SummaryError(f"{path}: not a Locust summary (schema 1): {problem}")
    assert isinstance(data, dict)
    return data


def locust_part(
    data: Mapping[str, Any], *, html: str | None = None
) -> tuple[PromotionVerdict, tuple[Finding, ...], tuple[Finding, ...], int | None, dict[str, Any]]:
    """A Locust summary judged on its own: verdict, blocking, undecided, error code, and the
    ``locust`` object of a merged summary (for the report)."""
    metrics = tuple(MetricRecord.from_json(m, "locust") for m in data.get("metrics", []))
    triggers = tuple(TriggerRecord.from_json(t, "locust") for t in data.get("triggers", []))
    code = data.get("exit_code")
    raw = data.get("verdict")
    blocking: list[Finding] = []
    undecided: list[Finding] = []
    error_code = None
    if code in (EXIT_USAGE, EXIT_UNREACHABLE):
        error_code = int(code)
        what = "configuration error" if code == EXIT_USAGE else "target unreachable"
        blocking.append(
            Finding("error", "", f"{what}: {data.get('error') or 'see its output'}", "locust")
        )
    elif raw is None:
        undecided.append(
            Finding("run", "", "no baseline verdict (no baseline, or a recording run)", "locust")
        )
    elif code == 1 and _LOCUST_VERDICTS[str(raw)] is not PromotionVerdict.DO_NOT_PROMOTE:
        messages = "; ".join(str(m) for m in data.get("messages") or []) or "exit code 1"
        blocking.append(Finding("run", "", f"the Locust run failed: {messages}", "locust"))
    elif raw in ("INCONCLUSIVE", "INCOMPLETE") and not any(
        m.verdict == "INCONCLUSIVE" for m in metrics
    ):
        undecided.append(Finding("environment", "", "baseline comparison INCONCLUSIVE", "locust"))
    own, b, u = decide((), metrics, triggers, extra_blocking=blocking, extra_undecided=undecided)
    if raw in ("FAIL", "DO NOT PROMOTE") and not b:
        b = (Finding("run", "", "the Locust baseline comparison is FAIL", "locust"),)
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


def _blocks_setting(cli: bool | None, env: Mapping[str, str]) -> bool | None:
    if cli is not None:
        return cli
    raw = env.get("ETLPLUS_INCONCLUSIVE_BLOCKS")
    if raw is None:
        return None
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SummaryError(
        f"env ETLPLUS_INCONCLUSIVE_BLOCKS: expected a boolean (1/0, true/false), got {raw!r}"
    )


def merge(
    pytest_summary: Summary | None,
    locust: Mapping[str, Any] | None,
    *,
    inconclusive_blocks: bool | None = None,
    locust_html: str | None = None,
    locust_note: str = "",
) -> Summary:
    """One summary from either or both sources (at least one must be given)."""
    if pytest_summary is None and locust is None:
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
    if locust is not None:
        verdict, b, u, error_code, locust_info = locust_part(locust, html=locust_html)
        if locust_note:
            locust_info["note"] = locust_note
        verdicts.append(verdict)
        blocking += b
        undecided += u
        if error_code is not None:
            errors.append(error_code)
        metrics += [MetricRecord.from_json(m, "locust") for m in locust.get("metrics", [])]
        triggers += [TriggerRecord.from_json(t, "locust") for t in locust.get("triggers", [])]
    blocks = inconclusive_blocks
    if blocks is None:
        blocks = pytest_summary.inconclusive_blocks if pytest_summary else False
    verdict = worst(verdicts)
    if errors:
        verdict = PromotionVerdict.DO_NOT_PROMOTE
    error_code = EXIT_USAGE if EXIT_USAGE in errors else (errors[0] if errors else None)
    code = exit_code_for(verdict, inconclusive_blocks=blocks, error_code=error_code)
    if base is None:
        fp = dict(locust.get("fingerprint") or {}) if locust else {}
        fingerprint = {
            "target_url": (locust or {}).get("run", {}).get("host") if locust else None,
            "target_version": fp.get("target_version"),
            "build_commit": fp.get("build_commit"),
            "flags_sha256": fp.get("flags_sha256"),
            "flags": fp.get("flags") or {},
            "suite_version": fp.get("suite_version"),
        }
        base = Summary(
            verdict=verdict,
            exit_code=code,
            fingerprint=fingerprint,
            kind="locust",
            performance={"available": False, "reason": "only the Locust run reported"},
        )
    return replace(
        base,
        verdict=verdict,
        exit_code=code,
        blocking=tuple(blocking),
        undecided=tuple(undecided),
        metrics=tuple(metrics),
        triggers=tuple(triggers),
        kind="merged" if pytest_summary is not None and locust is not None else base.kind,
        inconclusive_blocks=blocks,
        locust=locust_info,
    )


def run_gate(
    directory: Path,
    *,
    inconclusive_blocks: bool | None = None,
    render: bool = True,
    env: Mapping[str, str] | None = None,
) -> GateResult:
    """Read the summaries in `directory`, merge them, write signoff.html again; `SummaryError`
    (one line naming the file or folder) for exit code 2."""
    environ = os.environ if env is None else env
    blocks = _blocks_setting(inconclusive_blocks, environ)
    if not directory.is_dir():
        raise SummaryError(f"{directory}: no such directory")
    pytest_path, locust_path = directory / PYTEST_SUMMARY, directory / LOCUST_SUMMARY
    if not pytest_path.exists() and not locust_path.exists():
        raise SummaryError(
            f"{directory}: neither {PYTEST_SUMMARY} (pytest -m post_deploy) nor {LOCUST_SUMMARY} "
            "(the Locust run) is there; nothing to judge"
        )
    pytest_summary = load_summary(pytest_path) if pytest_path.exists() else None
    locust = load_locust(locust_path) if locust_path.exists() else None
    lines: list[str] = []
    sources = []
    note = ""
    if pytest_summary is not None:
        sources.append(
            f"{pytest_path} (pytest {pytest_summary.finished_at or '?'}: "
            f"{pytest_summary.verdict.value})"
        )
    html = None
    if locust is not None:
        started = _locust_started(locust, locust_path)
        if pytest_summary is not None and not same_run(pytest_summary.started_at, started):
            lines.append(
                f"  left out {locust_path}: its run started {started:%Y-%m-%d %H:%M} UTC, more "
                f"than {SAME_RUN_HOURS:g} h from the pytest run ({pytest_summary.started_at})"
                if started
                else f"  left out {locust_path}: another run"
            )
            locust = None
        else:
            sources.append(f"{locust_path} (locust: {locust.get('verdict') or 'no verdict'})")
            if (directory / LOCUST_HTML).exists():
                html = LOCUST_HTML
            else:
                note = f"{LOCUST_HTML} is not in {directory}"
    if pytest_summary is None and locust is None:
        raise SummaryError(f"{directory}: no summary of this run left to judge")
    merged = merge(
        pytest_summary, locust, inconclusive_blocks=blocks, locust_html=html, locust_note=note
    )
    head = [f"etlverify gate: {merged.verdict.value} (exit code {merged.exit_code})"]
    head += [f"  source: {s}" for s in sources]
    lines = head + lines
    if merged.blocking:
        lines.append("  blocking:")
        lines += [f"    {f.line()}" for f in merged.blocking]
    if merged.undecided:
        lines.append("  for a person to decide:")
        lines += [f"    {f.line()}" for f in merged.undecided]
    if merged.verdict is PromotionVerdict.INCOMPLETE and merged.exit_code == 0:
        lines.append(
            "  warning: INCOMPLETE does not block (exit 0); --inconclusive-blocks or "
            "ETLPLUS_INCONCLUSIVE_BLOCKS=1 makes it exit 4"
        )
    if render and pytest_summary is not None:
        from etlverify.report.signoff import write_signoff

        write_signoff(directory / SIGNOFF_HTML, merged)
        lines.append(f"  sign-off report: {directory / SIGNOFF_HTML}")
    return GateResult(merged, lines)


def main_gate(
    directory: Path,
    *,
    inconclusive_blocks: bool | None = None,
    render: bool = True,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The `etlverify gate` command: print the verdict and reasons, return the exit code."""
    stdout = out or sys.stdout
    stderr = err or sys.stderr
    try:
        result = run_gate(directory, inconclusive_blocks=inconclusive_blocks, render=render)
    except SummaryError as exc:
        print(f"etlverify gate: {exc}", file=stderr)
        return EXIT_USAGE
    for line in result.lines:
        print(line, file=stdout)
    return result.exit_code
