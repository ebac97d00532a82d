"""Refusals are findings of their own: an HTTP answer is never filed as a lost connection, and a
refused request that a whole section needs (job creation answered 400) leads the verdict as one
finding naming the request, the answer and how many checks could not run (issue 14 item 4).

Inner `python -m pytest` runs with their reports in a temporary folder: one of a small suite that
needs no target, one of the real performance section against a reference whose job creation
answers 400 (the reference's error fault on /api/jobs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget

if TYPE_CHECKING:
    from collections.abc import Iterator

BASE_ARGS = (
    "-p", "etlverify.pytest_plugin", "-p", "no:locust", "-p", "no:cacheprovider",
    "-p", "no:benchmark", "-p", "no:xdist", "--strict-markers",
)  # fmt: skip
SECTION = Path(__file__).resolve().parents[2] / "verification" / "performance"
FORBIDDEN = ("Traceback", "Exception Group", "object at 0x", "TargetError", "SectionBlocked")

ANSWERS = """
import pytest

from etlverify.errors import TargetError

BODY = '{"status": "error", "code": "validation_error", "message": "unknown job type"}'

@pytest.mark.checklist("post.1_functional_testing.job_types_create")
def test_job_creation(request):
    raise TargetError(f"POST /api/jobs answered 400 {BODY!r}; the job could not be created")

@pytest.mark.checklist("post.1_functional_testing.validate_error_handling")
def test_job_status():
    raise TargetError(f"GET /api/jobs/x: expected 200, got HTTP 400 application/json: {BODY}")

@pytest.mark.checklist("post.1_functional_testing.websocket_real_time")
def test_websocket():
    raise TargetError("WebSocket ws://127.0.0.1:9/ws: no message within 3 s", kind="timeout")
"""


def _run(folder: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *BASE_ARGS,
            "--html",
            str(folder / "reports" / "report.html"),
            "--junitxml",
            str(folder / "reports" / "junit.xml"),
            *args,
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _summary(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "reports" / "summary.json").read_text())
    return data


def test_http_answers_are_not_lost_connections(tmp_path: Path) -> None:
    (tmp_path / "test_answers.py").write_text(ANSWERS, encoding="utf-8")
    code, out = _run(tmp_path, "test_answers.py")
    assert code == 1, out
    primary = {c["kind"]: c for c in _summary(tmp_path)["primary_findings"]}
    assert set(primary) == {"http", "transport"}, primary
    answered = primary["http"]
    assert answered["sentence"].startswith(
        "2 check(s) got an HTTP answer they could not go on from (HTTP 400 validation_error"
    )
    assert len(answered["checks"]) == 2
    lost = primary["transport"]
    assert lost["checks"] == ["test_answers.py::test_websocket"]
    assert "validation_error" not in json.dumps(lost)


@pytest.fixture(scope="module")
def refusing_target() -> Iterator[EmbeddedTarget]:
    """A reference whose /api/jobs routes answer 400 (stopped by PID at teardown)."""
    target = EmbeddedTarget(enable_faults=True, config_overrides=SUITE_CONFIG_OVERRIDES)
    target.start()
    try:
        body = {"errors": {"fraction": 1.0, "status": 400, "route_prefix": "/api/jobs"}}
        resp = httpx.post(f"{target.base_url}/api/_faults", json=body, timeout=5)
        assert resp.status_code == 200, resp.text
        yield target
    finally:
        target.stop()


def test_refused_job_creation_leads_as_one_finding(
    tmp_path: Path, refusing_target: EmbeddedTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETLPLUS_BASELINE_CACHE", str(tmp_path / "cache"))
    shutil.copytree(SECTION, tmp_path / "performance", ignore=shutil.ignore_patterns("__pycache__"))
    code, out = _run(
        tmp_path,
        "--base-url", refusing_target.base_url, "--baseline", "machine",
        "--perf-duration", "4", "-p", "no:randomly", "performance",
    )  # fmt: skip
    assert code == 1, out
    summary = _summary(tmp_path)
    checks = [t for i in summary["items"] for t in i["tests"] if t["nodeid"].startswith("perf")]
    failed = {t["nodeid"] for t in checks if t["outcome"] == "failed"}
    assert len(failed) == 8, out
    first, *rest = summary["primary_findings"]
    assert first["kind"] == "section-blocked"
    assert first["sentence"] == (
        "job creation refused: POST /api/jobs answered 400 INVALID_INPUT (Injected fault: HTTP "
        "400); the performance section (8 checks) could not run"
    )
    assert set(first["checks"]) == failed
    assert first["first_check"] in {n.rsplit("::", 1)[-1] for n in failed}
    assert not [c for c in rest if set(c["checks"]) & failed], rest  # not repeated
    assert "1. job creation refused: POST /api/jobs answered 400 INVALID_INPUT" in out
    assert "lost their connection" not in out
    html = (tmp_path / "reports" / "signoff.html").read_text(encoding="utf-8")
    assert "job creation refused: POST /api/jobs answered 400 INVALID_INPUT" in html
    for text in (out, json.dumps(summary), html):
        for word in FORBIDDEN:
            assert word not in text, word
