"""Verification runs against the embedded reference end in summary.json, signoff.html and the gate's
exit code: PROMOTE on a healthy target, DO NOT PROMOTE naming the item and its evidence when the
reference's faults are on, no secret anywhere in reports/, usage errors exit 2, unreachable 3."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

from .conftest import (
    ERRORS_ITEM,
    PASSWORD_CANARY,
    TOKEN_CANARY,
    Run,
    _env,
    run_suite,
)

OWN_SUITE = """
import pytest

@pytest.mark.checklist("post.1_functional_testing.validate_error_handling")
def test_error_body(etl_api, etl_expect):
    print("measured: unknown job answered in time")
    etl_expect.error_body(etl_api.get("/api/jobs/etlv_missing"), 404, "JOB_NOT_FOUND")

@pytest.mark.checklist("post.1_functional_testing.configuration_hot_reloading")
def test_needs_a_person(etl_target):
    pytest.skip("needs --deploy-root of a real deployment")
"""


def test_healthy_target_promotes(promote_run: Run) -> None:
    assert promote_run.ret == 0, promote_run.out
    summary = promote_run.summary
    assert summary["verdict"] == "PROMOTE"
    assert summary["exit_code"] == 0
    items = {i["id"]: i for i in summary["items"]}  # type: ignore[attr-defined]
    assert items[ERRORS_ITEM]["status"] == "passed"
    assert len(items[ERRORS_ITEM]["tests"]) == 2
    # honest about the subset: the other automated items are not run and not in scope
    assert items["post.1_functional_testing.websocket_real_time"]["status"] == "not-run"
    assert summary["coverage"]["in_scope"] == 1  # type: ignore[index]
    assert summary["fingerprint"]["operator"] == "Robin Ops"  # type: ignore[index]
    assert summary["fingerprint"]["target_version"]  # type: ignore[index]
    html = promote_run.html
    assert '<div class="word" id="verdict-word">PROMOTE</div>' in html
    assert "Dana Quinn" in html
    assert "Performance data is not available for this run" in html
    assert "PROMOTE (exit code 0)" in promote_run.out


def test_no_secret_in_any_report(promote_run: Run, fault_run: Run) -> None:
    for run in (promote_run, fault_run):
        files = [p for p in run.reports.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"summary.json", "signoff.html", "junit.xml"}
        for path in files:
            data = path.read_bytes()
            for canary in (TOKEN_CANARY, PASSWORD_CANARY):
                assert canary.encode() not in data, f"{canary} in {path}"
        assert TOKEN_CANARY not in run.out


def test_faults_on_do_not_promote_naming_the_item_and_its_evidence(fault_run: Run) -> None:
    assert fault_run.ret == 1, fault_run.out
    summary = fault_run.summary
    assert summary["verdict"] == "DO NOT PROMOTE"
    blocking = summary["blocking"]
    assert [f["ref"] for f in blocking] == [ERRORS_ITEM]  # type: ignore[union-attr,index]
    item = next(i for i in summary["items"] if i["id"] == ERRORS_ITEM)  # type: ignore[attr-defined]
    assert item["status"] == "failed"
    reasons = "\n".join(t["reason"] for t in item["tests"])
    assert "expected:" in reasons
    assert "500" in reasons
    assert "Reproduce with: curl" in reasons
    html = fault_run.html
    assert '<div class="word" id="verdict-word">DO NOT PROMOTE</div>' in html
    assert f'data-item="{ERRORS_ITEM}" data-status="failed"' in html
    assert "Reproduce with: curl" in html
    assert "DO NOT PROMOTE (exit code 1)" in fault_run.out


def test_skipped_item_is_incomplete_and_the_setting_decides(tmp_path: Path) -> None:
    (tmp_path / "test_own.py").write_text(textwrap.dedent(OWN_SUITE))
    run = run_suite(tmp_path, "-p", "etlverify.pytest_plugin")
    assert run.ret == 0, run.out
    assert run.summary["verdict"] == "INCOMPLETE"
    assert "warning: INCOMPLETE does not block (exit 0)" in run.out
    evidence = next(
        t["evidence"]
        for i in run.summary["items"]  # type: ignore[attr-defined]
        for t in i["tests"]
        if t["outcome"] == "passed"
    )
    assert any("measured: unknown job answered in time" in e for e in evidence)
    blocking = run_suite(
        tmp_path, "-p", "etlverify.pytest_plugin", env=_env(ETLPLUS_INCONCLUSIVE_BLOCKS="1")
    )
    assert blocking.ret == 11, blocking.out  # not 4: pytest's own usage error
    assert blocking.summary["exit_code"] == 11


def test_project_tests_keep_pytest_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text("def test_a():\n    assert False\n")
    run = run_suite(tmp_path, "-p", "etlverify.pytest_plugin")
    assert run.ret == 1
    assert not (run.reports / "summary.json").exists()
    assert "etlverify verdict" not in run.out


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("--request-timeout", "abc"), "ERROR: --request-timeout: expected seconds > 0, got 'abc'"),
        (("--signoff", "QAA=Dana"), "ERROR: --signoff: unknown role 'QAA'"),
    ],
)
def test_usage_errors_exit_2_in_one_line(tmp_path: Path, args: tuple[str, ...], line: str) -> None:
    (tmp_path / "test_own.py").write_text(textwrap.dedent(OWN_SUITE))
    run = run_suite(tmp_path, "-p", "etlverify.pytest_plugin", *args)
    assert run.ret == 2, run.out
    assert "Traceback" not in run.out
    lines = [ln for ln in run.out.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert lines[0].startswith(line)


def test_unreachable_target_exits_3_with_a_summary(tmp_path: Path) -> None:
    (tmp_path / "test_own.py").write_text(textwrap.dedent(OWN_SUITE))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "summary.json").write_text('{"verdict": "PROMOTE"}')  # stale
    run = run_suite(tmp_path, "-p", "etlverify.pytest_plugin", "--base-url", "http://127.0.0.1:9")
    assert run.ret == 3, run.out
    # one line in our words; no `! _pytest.outcomes.Exit: ... !` (a class name is not for people)
    assert "_pytest.outcomes" not in run.out
    assert "Exit:" not in run.out
    assert "etlverify: target http://127.0.0.1:9 is unreachable: connection refused" in run.out
    summary = run.summary
    assert summary["verdict"] == "DO NOT PROMOTE"
    assert summary["exit_code"] == 3
    assert "unreachable" in summary["error"]["message"]  # type: ignore[index]
    gate = subprocess.run(
        [sys.executable, "-m", "etlverify.cli", "gate", str(run.reports), "--no-html"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gate.returncode == 13, gate.stdout + gate.stderr  # the gate's "target unreachable"
