"""The verdict mapping: item statuses -> PROMOTE / DO NOT PROMOTE / INCOMPLETE -> exit code."""

from __future__ import annotations

import pytest

from etlverify.checklist import Item, load_checklist
from etlverify.report.summary import (
    Finding,
    ItemRecord,
    MetricRecord,
    PromotionVerdict,
    Status,
    TestRecord,
    TriggerRecord,
)
from etlverify.report.verdict import build_items, decide, exit_code_for, item_status

AUTO = Item(
    "post.x.y", "Post-Deployment Validation", "1. Functional Testing", "", "Do it", "automated"
)
MANUAL = Item("post.x.m", "S", "H", "", "Tick it", "manual", signed_by="operations")
NA = Item("post.x.n", "S", "H", "", "Skip it", "n/a", reason="not on this platform")


def t(outcome: str, reason: str = "", name: str = "test_a") -> TestRecord:
    return TestRecord(f"verification/test_x.py::{name}", outcome, reason)


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        (["passed"], Status.PASSED),
        (["passed", "passed"], Status.PASSED),
        (["passed", "skipped"], Status.PASSED),
        (["passed", "failed"], Status.FAILED),
        (["error"], Status.FAILED),
        (["inconclusive", "failed"], Status.FAILED),
        (["inconclusive", "passed"], Status.INCONCLUSIVE),
        (["skipped"], Status.SKIPPED),
        (["xfailed", "skipped"], Status.SKIPPED),
        (["xpassed"], Status.PASSED),
        (["not-run"], Status.NOT_RUN),
        (["not-run", "skipped"], Status.SKIPPED),
    ],
)
def test_item_status_from_outcomes(outcomes: list[str], status: Status) -> None:
    tests = [t(o, f"why {o}", f"test_{i}") for i, o in enumerate(outcomes)]
    assert item_status(AUTO, tests)[0] is status


def test_failed_reason_names_the_test_once() -> None:
    reason = item_status(AUTO, [t("failed", "test_a: GET /api/jobs answered HTTP 500\nexpected")])[
        1
    ]
    assert reason == "test_a: GET /api/jobs answered HTTP 500"


def test_skipped_reason_and_partial_pass_are_explained() -> None:
    assert item_status(AUTO, [t("skipped", "needs --deploy-root")]) == (
        Status.SKIPPED,
        "needs --deploy-root",
    )
    status, reason = item_status(AUTO, [t("passed"), t("skipped", "destructive", "test_b")])
    assert status is Status.PASSED
    assert reason == "1 of 2 tests passed, 1 skipped or not run: destructive"


def test_manual_na_and_not_run() -> None:
    assert item_status(MANUAL, []) == (Status.MANUAL, "signed by operations")
    assert item_status(NA, []) == (Status.NOT_APPLICABLE, "not on this platform")
    assert item_status(AUTO, [])[1] == "not in this run's selection"
    assert item_status(AUTO, [], selected=True)[1].startswith("selected, but")


def _record(status: Status, *, in_scope: bool = True, automation: str = "automated") -> ItemRecord:
    return ItemRecord(
        f"post.x.{status.value.replace('-', '_').replace('/', '')}",
        "S",
        "H",
        "text",
        automation,
        status,
        "reason",
        in_scope=in_scope,
    )


def test_all_passed_promotes() -> None:
    verdict, blocking, undecided = decide([_record(Status.PASSED), _record(Status.MANUAL)])
    assert (verdict, blocking, undecided) == (PromotionVerdict.PROMOTE, (), ())


@pytest.mark.parametrize("status", [Status.SKIPPED, Status.INCONCLUSIVE, Status.NOT_RUN])
def test_undecided_in_scope_items_make_it_incomplete(status: Status) -> None:
    verdict, blocking, undecided = decide([_record(Status.PASSED), _record(status)])
    assert verdict is PromotionVerdict.INCOMPLETE
    assert not blocking
    assert [f.kind for f in undecided] == ["item"]


def test_items_outside_the_selection_do_not_count() -> None:
    verdict, _, _ = decide([_record(Status.PASSED), _record(Status.NOT_RUN, in_scope=False)])
    assert verdict is PromotionVerdict.PROMOTE


def test_manual_items_never_block() -> None:
    manual = _record(Status.MANUAL, automation="manual")
    assert decide([_record(Status.PASSED), manual])[0] is PromotionVerdict.PROMOTE


def test_failure_beats_everything() -> None:
    verdict, blocking, undecided = decide(
        [_record(Status.FAILED), _record(Status.SKIPPED), _record(Status.PASSED)]
    )
    assert verdict is PromotionVerdict.DO_NOT_PROMOTE
    assert [f.ref for f in blocking] == ["post.x.failed"]
    assert [f.ref for f in undecided] == ["post.x.skipped"]


def test_unmapped_failed_test_blocks() -> None:
    verdict, blocking, _ = decide([_record(Status.PASSED)], unmapped_tests=[t("failed", "boom")])
    assert verdict is PromotionVerdict.DO_NOT_PROMOTE
    assert blocking[0].kind == "test"


def _metric(verdict: str, source: str = "pytest") -> MetricRecord:
    return MetricRecord(source, "GET /api/jobs", "p95", verdict, "why", 8.0, 12.0, "ms", 50.0)


def test_metrics_and_triggers() -> None:
    passed = [_record(Status.PASSED)]
    assert decide(passed, [_metric("PASS")])[0] is PromotionVerdict.PROMOTE
    assert decide(passed, [_metric("INCONCLUSIVE")])[0] is PromotionVerdict.INCOMPLETE
    verdict, blocking, _ = decide(passed, [_metric("FAIL", "locust")])
    assert verdict is PromotionVerdict.DO_NOT_PROMOTE
    assert blocking[0].line().startswith("[locust] metric p95 GET /api/jobs: 12.0 ms vs baseline")
    fired = TriggerRecord("pytest", "memory_sustained", "FIRED", "above 95% for 70 s")
    unknown = TriggerRecord("pytest", "database_connection_failures", "UNKNOWN", "no samples")
    assert decide(passed, (), [unknown])[0] is PromotionVerdict.PROMOTE
    assert decide(passed, (), [fired, unknown])[0] is PromotionVerdict.DO_NOT_PROMOTE


def test_nothing_verified_is_incomplete() -> None:
    verdict, _, undecided = decide([_record(Status.NOT_RUN, in_scope=False)])
    assert verdict is PromotionVerdict.INCOMPLETE
    assert undecided[0].text == "no automated checklist item was verified"


def test_errors_block() -> None:
    error = Finding("error", "", "target unreachable")
    assert decide([_record(Status.PASSED)], extra_blocking=[error])[0] is (
        PromotionVerdict.DO_NOT_PROMOTE
    )


@pytest.mark.parametrize(
    ("verdict", "blocks", "error", "code"),
    [
        (PromotionVerdict.PROMOTE, False, None, 0),
        (PromotionVerdict.PROMOTE, True, None, 0),
        (PromotionVerdict.DO_NOT_PROMOTE, False, None, 1),
        (PromotionVerdict.INCOMPLETE, False, None, 0),
        (PromotionVerdict.INCOMPLETE, True, None, 11),  # not 4: pytest's usage error
        (PromotionVerdict.DO_NOT_PROMOTE, True, 3, 3),
        (PromotionVerdict.DO_NOT_PROMOTE, False, 2, 2),
    ],
)
def test_exit_codes(verdict: PromotionVerdict, blocks: bool, error: int | None, code: int) -> None:
    assert exit_code_for(verdict, inconclusive_blocks=blocks, error_code=error) == code


def test_build_items_covers_the_whole_checklist_in_order() -> None:
    checklist = load_checklist()
    item_id = "post.1_functional_testing.validate_error_handling"
    items = build_items(checklist, {item_id: [t("passed")]}, {item_id})
    assert [i.id for i in items] == list(checklist.ids)
    by_id = {i.id: i for i in items}
    assert by_id[item_id].status is Status.PASSED
    assert by_id[item_id].in_scope
    manual = [i for i in items if i.automation == "manual"]
    assert manual
    assert all(i.status is Status.MANUAL and not i.in_scope for i in manual)


def test_optional_item_not_set_up_is_not_applicable() -> None:
    """An item the checklist marks optional, whose checks skip (not set up), does not make the run
    INCOMPLETE: it is n/a with the skip's reason. A non-optional item stays skipped."""
    optional = Item("pre.x.s", "S", "H", "", "Slack (optional)", "automated", optional=True)
    tests = [t("skipped", "no Slack webhook configured", name="test_slack")]
    status, reason = item_status(optional, tests)
    assert status is Status.NOT_APPLICABLE
    assert "optional, not set up: no Slack webhook configured" in reason
    assert item_status(AUTO, tests)[0] is Status.SKIPPED
    slack = [i for i in load_checklist().items if i.id == "pre.3_monitoring_setup.set_up_slack"]
    assert slack[0].optional
