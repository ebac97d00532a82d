"""A run against the embedded reference: failures without tracebacks, summary, report files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE_ARGS = (
    "-p",
    "etlverify.pytest_plugin",
    "-p",
    "no:locust",
    "-p",
    "no:cacheprovider",
    "-p",
    "no:benchmark",
    "--strict-markers",
)

SUITE = """
import pytest

@pytest.mark.post_deploy
@pytest.mark.checklist("post.1_functional_testing.validate_error_handling")
def test_unknown_job_is_404(etl_api, etl_expect):
    etl_expect.error_body(etl_api.get("/api/jobs/etlv_missing"), 404, "JOB_NOT_FOUND")

@pytest.mark.checklist("post.1_functional_testing.job_types_create")
def test_wrong_expectation(etl_api, etl_expect):
    etl_expect.status(etl_api.get("/api/jobs/etlv_missing"), 200)

@pytest.mark.checklist("post.1_functional_testing.websocket_real_time")
def test_ws_never_answers(etl_target):
    from etlverify.errors import TargetError
    raise TargetError(f"WebSocket {etl_target.ws_url}: no message within 3 s")

@pytest.mark.checklist("pre.3_monitoring_setup.configure_log_rotation")
def test_skipped(etl_target):
    pytest.skip("optional: no Slack webhook configured")

@pytest.mark.destructive
@pytest.mark.checklist("deploy.phase1.1_3_feature_flag.feature_flag_loading")
def test_flags_roundtrip(etl_flags):
    etl_flags.set({"new_logger_system": True}, {"new_logger_system": 10})
    assert etl_flags.read()["flags"]["new_logger_system"] is True
"""


@dataclass(frozen=True)
class InnerRun:
    """One inner pytest run: its folder, exit code and output."""

    path: Path
    ret: int
    stdout: pytest.LineMatcher
    text: str


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory: pytest.TempPathFactory) -> InnerRun:
    """One inner run against the embedded reference, shared by the checks below (it takes a few
    seconds: the reference starts once for the module, not per check)."""
    path = tmp_path_factory.mktemp("embedded_run")
    (path / "test_suite.py").write_text(textwrap.dedent(SUITE), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *BASE_ARGS, "-rA", "-p", "no:xdist"],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    text = proc.stdout + proc.stderr
    return InnerRun(path, proc.returncode, pytest.LineMatcher(text.splitlines()), text)


def test_outcomes(embedded_run: InnerRun) -> None:
    assert embedded_run.ret == 1
    embedded_run.stdout.fnmatch_lines(["*= 2 failed, 2 passed, 1 skipped in *"])


def test_check_failed_has_expected_got_curl_and_no_traceback(
    embedded_run: InnerRun,
) -> None:
    out = embedded_run.text
    embedded_run.stdout.fnmatch_lines(
        [
            "test_wrong_expectation: GET /api/jobs/etlv_missing answered HTTP 404",
            "blocks checklist: post.1_functional_testing.job_types_create",
            "expected: HTTP 200",
            "got:      HTTP 404",
            'response: HTTP 404 application/json: {"status":"error"*',
            "Reproduce with: curl -sS -i -m 10 http://127.0.0.1:*/api/jobs/etlv_missing*",
        ]
    )
    assert "Traceback" not in out
    assert "def test_wrong_expectation" not in out  # no source excerpt either


def test_target_error_names_check_items_and_a_handshake_to_reproduce(
    embedded_run: InnerRun,
) -> None:
    """A transport failure reads like a check failure: check, blocked items, what came back, and
    a curl WebSocket handshake to reproduce it; no traceback."""
    embedded_run.stdout.fnmatch_lines(
        [
            "*test_ws_never_answers: the target did not answer usably",
            "blocks checklist: post.1_functional_testing.websocket_real_time",
            "got: WebSocket ws://127.0.0.1:*/ws: no message within 3 s",
            "Reproduce with: curl -i -N * -H 'Upgrade: websocket' *http://127.0.0.1:*/ws",
        ]
    )
    assert "raise TargetError" not in embedded_run.text


def test_summary_lists_checklist_items(embedded_run: InnerRun) -> None:
    embedded_run.stdout.fnmatch_lines(
        [
            "*etlverify checklist*",
            "etlverify target: http://127.0.0.1:* (embedded reference) version *",
            "checklist items: 2 passed, 2 failed, 1 skipped, * manual, * n/a, * not run (of 131)",
            "FAILED  post.1_functional_testing.job_types_create: Test all ETL job types*",
            "    failed   test_suite.py::test_wrong_expectation",
            "SKIPPED pre.3_monitoring_setup.configure_log_rotation: optional: no Slack webhook*",
            "reports: *report.html, *junit.xml, *checklist_results.json",
        ]
    )
    embedded_run.stdout.fnmatch_lines(
        ["etlverify settings (value [source]):", "  request_timeout = 10  [default]"]
    )


def test_reports_written(embedded_run: InnerRun) -> None:
    reports = embedded_run.path / "reports"
    html = (reports / "report.html").read_text(encoding="utf-8")
    assert "etlverify-checklist" in html
    assert "post.1_functional_testing.job_types_create" in html
    junit = ET.parse(reports / "junit.xml").getroot()
    props = [p.get("value") for p in junit.iter("property") if p.get("name") == "checklist"]
    assert "post.1_functional_testing.validate_error_handling" in props
    data = json.loads((reports / "checklist_results.json").read_text(encoding="utf-8"))
    status = {i["id"]: i["status"] for i in data["items"]}
    assert status["post.1_functional_testing.validate_error_handling"] == "passed"
    assert status["post.1_functional_testing.job_types_create"] == "failed"
    assert status["pre.3_monitoring_setup.configure_log_rotation"] == "skipped"
    assert status["comms.post_deployment.document_lessons_learned"] == "manual"
    assert data["target"]["embedded"] is True
    assert data["counts"]["failed"] == 2


def test_embedded_root_removed(embedded_run: InnerRun) -> None:
    line = next(x for x in embedded_run.text.splitlines() if ", root /" in x)
    root = Path(line.rsplit(", root ", 1)[1].strip())
    assert root.name == "deployment"
    assert not root.exists()
