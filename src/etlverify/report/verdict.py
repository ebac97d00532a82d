"""Where the promotion verdict is decided: item statuses, PROMOTE / DO NOT PROMOTE / INCOMPLETE,
and the exit code. The rules are documented in docs/exit-codes.md and docs/report-schema.md.

Item status (automated items; from the outcomes of the tests behind the item in this run):

- **failed** - any test behind it failed or errored (setup, call or teardown; an unexpected pass
  under strict xfail is a failure too);
- **inconclusive** - otherwise, any test could not decide (a performance verdict INCONCLUSIVE:
  skipped as such, or failed only because ``--inconclusive-blocks`` turns it into a failure);
- **passed** - otherwise, at least one test passed (others skipped: the reason says which);
- **skipped** - every test behind it was skipped (or xfailed), with the reasons;
- **not-run** - no test behind it ran: either the item was outside this run's selection (not in
  scope, does not count), or its tests were selected but the run ended first (in scope);
- manual items are **manual** (a person ticks them on the sign-off sheet), n/a items **n/a**.

Verdict (only automated items *in scope* count: those with a test selected in this run):

1. **DO NOT PROMOTE** when anything blocks: a failed item, a failed test that names no checklist
   item, a performance metric FAIL (pytest or Locust), a rollback trigger FIRED, or an error that
   kept the run from judging (target unreachable, configuration error).
2. **INCOMPLETE** when nothing blocks but a person must decide: a skipped, inconclusive or
   selected-but-not-run item, an INCONCLUSIVE metric, a performance environment that differs from
   the baseline's in a way that makes numbers incomparable, or a run that verified no item at all.
3. **PROMOTE** otherwise. Manual items never block: they are listed to tick on the sign-off sheet.
   A rollback trigger that could not be observed (UNKNOWN) is shown but does not decide.

Exit codes of a verification run: 0 PROMOTE, 1 DO NOT PROMOTE, 2 usage or configuration error,
3 target unreachable, 11 INCOMPLETE when inconclusive blocks (``--inconclusive-blocks`` /
ETLPLUS_INCONCLUSIVE_BLOCKS; outside pytest's own 0-5, the same number as the gate's INCOMPLETE),
else 0 for INCOMPLETE with a warning. `etlverify gate` has its own table (`etlverify.gate`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from etlverify.report.causes import findings_of
from etlverify.report.summary import (
    Finding,
    ItemRecord,
    MetricRecord,
    PromotionVerdict,
    Status,
    TestRecord,
    TriggerRecord,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from etlverify.checklist import Checklist, Item
    from etlverify.report.causes import Cause

__all__ = [
    "EXIT_CHECKS_FAILED",
    "EXIT_INCONCLUSIVE",
    "EXIT_PROMOTE",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "build_items",
    "decide",
    "exit_code_for",
    "fold_blocking",
    "item_status",
    "missing_scope",
    "worst",
]

EXIT_PROMOTE = 0
EXIT_CHECKS_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
#: not 4: pytest answers a usage error with 4 (docs/exit-codes.md)
EXIT_INCONCLUSIVE = 11

FAILED_OUTCOMES = frozenset({"failed", "error"})
PASSED_OUTCOMES = frozenset({"passed", "xpassed"})
SKIPPED_OUTCOMES = frozenset({"skipped", "xfailed"})
INCONCLUSIVE = "inconclusive"
NOT_RUN = "not-run"


def _first_line(text: str, limit: int = 200) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _failure_line(test: TestRecord) -> str:
    """``name: first line of the failure`` (CheckFailed texts already start with the name)."""
    name = test.nodeid.rsplit("::", 1)[-1]
    first = _first_line(test.reason) or test.outcome
    return first if first.startswith(name) else f"{name}: {first}"


def item_status(
    item: Item, tests: Sequence[TestRecord], *, selected: bool = False
) -> tuple[Status, str]:
    """The status of `item` and its reason, from the tests behind it (see the module docstring)."""
    if item.automation == "manual":
        return Status.MANUAL, f"signed by {item.signed_by}" if item.signed_by else ""
    if item.automation == "n/a":
        return Status.NOT_APPLICABLE, item.reason
    if not tests:
        if selected:
            return Status.NOT_RUN, "selected, but the run ended before its tests ran"
        return Status.NOT_RUN, "not in this run's selection"
    kinds = {t.outcome for t in tests}
    failed = [t for t in tests if t.outcome in FAILED_OUTCOMES]
    if failed:
        why = "; ".join(_failure_line(t) for t in failed)
        return Status.FAILED, why
    unsure = [t for t in tests if t.outcome == INCONCLUSIVE]
    if unsure:
        return Status.INCONCLUSIVE, "; ".join(
            sorted({_first_line(t.reason) or "inconclusive" for t in unsure})
        )
    others = [t for t in tests if t.outcome not in PASSED_OUTCOMES]
    reasons = sorted({_first_line(t.reason) for t in others if t.reason})
    if kinds & PASSED_OUTCOMES:
        if not others:
            return Status.PASSED, ""
        passed = len(tests) - len(others)
        note = f"{passed} of {len(tests)} tests passed, {len(others)} skipped or not run"
        return Status.PASSED, note + (f": {'; '.join(reasons)}" if reasons else "")
    if kinds <= {NOT_RUN}:
        return Status.NOT_RUN, "selected, but the run ended before its tests ran"
    if item.optional:
        # "Set up Slack webhook for alerts (optional)": not set up is a choice, not a gap
        return Status.NOT_APPLICABLE, "optional, not set up: " + ("; ".join(reasons) or "skipped")
    return Status.SKIPPED, "; ".join(reasons) or "skipped"


def build_items(
    checklist: Checklist,
    tests_by_item: Mapping[str, Sequence[TestRecord]],
    selected: Iterable[str] = (),
) -> tuple[ItemRecord, ...]:
    """Every checklist item, in checklist order, with its status in this run.

    `tests_by_item` maps item ids to the tests behind them that produced an outcome (tests selected
    but never run appear with outcome ``not-run``); `selected` are item ids with a selected test.
    """
    chosen = set(selected)
    out = []
    for item in checklist.items:
        tests = tuple(tests_by_item.get(item.id, ()))
        in_scope = item.automated and (item.id in chosen or bool(tests))
        status, reason = item_status(item, tests, selected=item.id in chosen)
        out.append(
            ItemRecord(
                id=item.id,
                section=item.section,
                heading=item.heading,
                text=item.text,
                automation=item.automation,
                status=status,
                reason=reason,
                signed_by=item.signed_by,
                in_scope=in_scope,
                tests=tests,
            )
        )
    return tuple(out)


def _metric_text(m: MetricRecord) -> str:
    def fmt(value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value:.3g} {m.unit}".strip() if abs(value) < 10 else f"{value:.1f} {m.unit}"

    parts = []
    if m.change_pct is not None:
        parts.append(f"{m.change_pct:+.1f}%")
    if m.tolerance:
        parts.append(f"tolerance {m.tolerance}")
    if m.p_value is not None:
        parts.append(f"p={m.p_value:.3g}")
    numbers = f"{fmt(m.current)} vs baseline {fmt(m.baseline)}"
    if m.current is None and m.baseline is None:
        return m.reason
    return f"{numbers} ({', '.join(parts)}) - {m.reason}" if parts else f"{numbers} - {m.reason}"


def decide(
    items: Sequence[ItemRecord],
    metrics: Sequence[MetricRecord] = (),
    triggers: Sequence[TriggerRecord] = (),
    *,
    unmapped_tests: Sequence[TestRecord] = (),
    extra_blocking: Sequence[Finding] = (),
    extra_undecided: Sequence[Finding] = (),
    verified_elsewhere: bool = False,
) -> tuple[PromotionVerdict, tuple[Finding, ...], tuple[Finding, ...]]:
    """The verdict, the blocking findings and the undecided ones (rules in the module docstring).

    `verified_elsewhere`: the source judged something itself (a watch or rollout that ended
    PASS), so a run with no items and no metrics of its own is not "nothing verified"."""
    blocking: list[Finding] = list(extra_blocking)
    undecided: list[Finding] = []
    scoped = [i for i in items if i.automation == "automated" and i.in_scope]
    for item in scoped:
        if item.status is Status.FAILED:
            blocking.append(Finding("item", item.id, f"failed - {item.text}: {item.reason}"))
        elif item.status is Status.INCONCLUSIVE:
            undecided.append(Finding("item", item.id, f"inconclusive - {item.reason}"))
        elif item.status is Status.SKIPPED:
            undecided.append(Finding("item", item.id, f"skipped - {item.reason}"))
        elif item.status is Status.NOT_RUN:
            undecided.append(Finding("item", item.id, f"not run - {item.reason}"))
    for test in unmapped_tests:
        if test.outcome in FAILED_OUTCOMES:
            blocking.append(
                Finding(
                    "test",
                    test.nodeid,
                    f"{test.outcome} (names no checklist item): {_first_line(test.reason)}",
                )
            )
    for metric in metrics:
        ref = f"{metric.stat} {metric.metric}"
        if metric.verdict == "FAIL":
            blocking.append(Finding("metric", ref, _metric_text(metric), metric.source))
        elif metric.verdict == "INCONCLUSIVE":
            undecided.append(Finding("metric", ref, _metric_text(metric), metric.source))
    for trigger in triggers:
        if trigger.state == "FIRED":
            blocking.append(
                Finding("trigger", trigger.name, f"FIRED - {trigger.reason}", trigger.source)
            )
    undecided.extend(extra_undecided)
    verified = (
        verified_elsewhere
        or any(i.status is Status.PASSED for i in scoped)
        or any(m.verdict == "PASS" for m in metrics)
    )
    if not blocking and not undecided and not verified:
        undecided.append(Finding("run", "", "no automated checklist item was verified"))
    if blocking:
        verdict = PromotionVerdict.DO_NOT_PROMOTE
    elif undecided:
        verdict = PromotionVerdict.INCOMPLETE
    else:
        verdict = PromotionVerdict.PROMOTE
    return verdict, tuple(blocking), tuple(undecided)


def fold_blocking(
    blocking: Sequence[Finding], items: Sequence[ItemRecord], primary: Sequence[Cause]
) -> tuple[Finding, ...]:
    """Blocking findings with each failed item told once, pointing at the primary findings behind
    it ("failed - <item>: see primary finding 1") instead of repeating every check's failure."""
    numbers = findings_of(primary)
    by_id = {i.id: i for i in items}
    out = []
    for finding in blocking:
        item = by_id.get(finding.ref) if finding.kind == "item" else None
        if item is None:
            out.append(finding)
            continue
        failed = [t for t in item.tests if t.outcome in FAILED_OUTCOMES]
        refs = sorted({n for t in failed for n in numbers.get(t.nodeid, ())})
        if not refs or len(refs) > 5 or not failed:
            out.append(finding)
            continue
        which = ", ".join(str(n) for n in refs)
        plural = "s" if len(refs) > 1 else ""
        out.append(
            Finding(
                finding.kind,
                finding.ref,
                f"failed - {item.text} ({len(failed)} check(s); primary finding{plural} {which})",
                finding.source,
            )
        )
    return tuple(out)


def exit_code_for(
    verdict: PromotionVerdict, *, inconclusive_blocks: bool, error_code: int | None = None
) -> int:
    """The process exit code: an error's own code (2 or 3) first, then the verdict's."""
    if error_code in (EXIT_USAGE, EXIT_UNREACHABLE):
        return error_code
    if verdict is PromotionVerdict.DO_NOT_PROMOTE:
        return EXIT_CHECKS_FAILED
    if verdict is PromotionVerdict.INCOMPLETE:
        return EXIT_INCONCLUSIVE if inconclusive_blocks else EXIT_PROMOTE
    return EXIT_PROMOTE


def worst(verdicts: Iterable[PromotionVerdict]) -> PromotionVerdict:
    """The most severe verdict (PROMOTE for none)."""
    return max(verdicts, key=lambda v: v.rank, default=PromotionVerdict.PROMOTE)


def missing_scope(items: Iterable[ItemRecord], required: Iterable[str]) -> list[str]:
    """The `required` item ids (in their order) that no test of this run was selected for.

    Scope is evidence: a run narrowed by ``-k``, ``-m`` or a path judged only what it selected,
    so `etlverify gate` refuses it for the scope it did not cover (unless ``--allow-partial``).
    An item absent from `items` (a summary of an older checklist) is missing too.
    """
    covered = {i.id for i in items if i.in_scope}
    return [r for r in required if r not in covered]
