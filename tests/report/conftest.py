"""Builders of summaries for the report tests (no pytest run, no target)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.checklist import load_checklist
from etlverify.report.summary import (
    MetricRecord,
    PromotionVerdict,
    Summary,
    TestRecord,
    TriggerRecord,
)
from etlverify.report.verdict import build_items, decide, exit_code_for

if TYPE_CHECKING:
    from collections.abc import Callable

ERRORS_ITEM = "post.1_functional_testing.validate_error_handling"
JOBS_ITEM = "post.1_functional_testing.job_types_create"

FAILURE = (
    "test_unknown_job_is_404: GET /api/jobs/etlv_missing answered HTTP 500\n"
    "blocks checklist: post.1_functional_testing.validate_error_handling\n"
    "expected: HTTP 404\ngot:      HTTP 500\n"
    'response: HTTP 500 application/json: {"status":"error","code":"INTERNAL_ERROR"}\n'
    "Reproduce with: curl -sS -i -m 10 http://127.0.0.1:1/api/jobs/etlv_missing"
)


ROOT = Path(__file__).resolve().parents[2]
ERRORS_SUITE = ROOT / "verification" / "post_deploy" / "test_post_errors.py"
#: two quick checks of the real suite; the verdict is judged on this selection only
SELECTION = "test_unknown_job_is_404_naming_the_job or test_invalid_json_is_400"
TOKEN_CANARY = "etlvCanaryTok3n-7f3a9c1e"
PASSWORD_CANARY = "etlvCanaryPassw0rd-51b2d8"
BASE_ARGS = (
    "-p", "no:locust", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:benchmark",
    "--strict-markers",
)  # fmt: skip

FAULTS_PLUGIN = '''
import pytest

@pytest.fixture(scope="session", autouse=True)
def _error_fault(etl_api):
    """Every /api/jobs request answers 500 (the reference's error fault)."""
    resp = etl_api.post(
        "/api/_faults",
        json={"errors": {"fraction": 1.0, "status": 500, "route_prefix": "/api/jobs"}},
    )
    assert resp.status_code in (200, 204), resp.text
    yield
    etl_api.delete("/api/_faults")
'''


@dataclass(frozen=True)
class Run:
    """One inner verification run."""

    ret: int
    out: str
    reports: Path

    @property
    def summary(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.reports / "summary.json").read_text())
        return data

    @property
    def html(self) -> str:
        return (self.reports / "signoff.html").read_text(encoding="utf-8")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETLPLUS_", "PYTEST_"))}
    env.update(extra)
    return env


def run_suite(
    folder: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Run:
    """`python -m pytest ...` with its reports in `folder/reports`."""
    reports = folder / "reports"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *BASE_ARGS,
            "--html",
            str(reports / "report.html"),
            "--self-contained-html",
            "--junitxml",
            str(reports / "junit.xml"),
            *args,
        ],
        cwd=cwd or folder,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    return Run(proc.returncode, proc.stdout + proc.stderr, reports)


@pytest.fixture(scope="session")
def promote_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The real suite's error checks against the healthy embedded reference, secrets set to
    canaries (the token wins over the password, so no login is attempted)."""
    folder = tmp_path_factory.mktemp("promote")
    env = _env(ETLPLUS_TOKEN=TOKEN_CANARY, ETLPLUS_USERNAME="ops", ETLPLUS_PASSWORD=PASSWORD_CANARY)
    return run_suite(
        folder,
        str(ERRORS_SUITE),
        "-m",
        "post_deploy",
        "-k",
        SELECTION,
        "--operator",
        "Robin Ops",
        "--signoff",
        "QA=Dana Quinn",
        env=env,
        cwd=ROOT,
    )


@pytest.fixture(scope="session")
def fault_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The same checks with the reference's error fault on every /api/jobs request."""
    folder = tmp_path_factory.mktemp("faults")
    (folder / "etlv_faults_plugin.py").write_text(FAULTS_PLUGIN)
    env = _env(PYTHONPATH=str(folder), ETLPLUS_TOKEN=TOKEN_CANARY)
    return run_suite(
        folder,
        str(ERRORS_SUITE),
        "-k",
        SELECTION,
        "--embedded-faults",
        "-p",
        "etlv_faults_plugin",
        env=env,
        cwd=ROOT,
    )


def plot_series() -> dict[str, Any]:
    """Series like perfdata.performance_section() makes."""
    q = [50.0, 75.0, 90.0, 95.0, 99.0, 99.9]
    return {
        "latency": [
            {
                "metric": "GET /api/jobs",
                "quantiles": q,
                "current_ms": [3.0, 3.5, 4.2, 5.0, 8.0, 12.0],
                "baseline_ms": [2.9, 3.3, 4.0, 4.8, 7.5, 11.0],
            }
        ],
        "ws_latency": [
            {
                "metric": "ws: push cancelled",
                "quantiles": q,
                "current_ms": [2.0, 2.5, 3.0, 4.0, 6.0, 9.0],
                "baseline_ms": None,
            }
        ],
        "throughput": [
            {
                "metric": "GET /api/jobs",
                "t_s": [1, 3, 5],
                "rps": [20.0, 21.0, 19.5],
                "errors": [0, 0, 0],
                "baseline_rps": 20.2,
            }
        ],
        "server": {
            "interval_s": 0.5,
            "memory_t_s": [0.0, 0.5, 1.0],
            "memory_mb": [40.0, 40.5, 40.7],
            "cpu_t_s": [0.0, 0.5, 1.0],
            "cpu_percent": [5.0, 12.0, 9.0],
        },
    }


def make_summary(
    outcomes: dict[str, list[tuple[str, str]]] | None = None,
    *,
    metrics: tuple[MetricRecord, ...] = (),
    triggers: tuple[TriggerRecord, ...] = (),
    blocks: bool = False,
    performance: dict[str, Any] | None = None,
    started_at: str = "2025-01-31T12:00:00Z",
    full_scope: bool = True,
) -> Summary:
    """A pytest summary judged with the real rules; `outcomes`: item id -> [(outcome, reason)].

    `full_scope`: every other post-deployment item passed too, as in a whole `-m post_deploy`
    run (the gate refuses a narrower one); False: only the items of `outcomes` were selected."""
    outcomes = outcomes if outcomes is not None else {ERRORS_ITEM: [("passed", "")]}
    tests = {
        item: [
            TestRecord(f"verification/test_x.py::test_{i}", o, r, 0.1, ("stdout call:\n42 ms",))
            for i, (o, r) in enumerate(pairs)
        ]
        for item, pairs in outcomes.items()
    }
    if full_scope:
        for n, item in enumerate(load_checklist().post_deploy_scope()):
            tests.setdefault(item, [TestRecord(f"verification/test_s.py::test_{n}", "passed")])
    items = build_items(load_checklist(), tests, tests)
    verdict, blocking, undecided = decide(items, metrics, triggers)
    return Summary(
        verdict=verdict,
        exit_code=exit_code_for(verdict, inconclusive_blocks=blocks),
        blocking=blocking,
        undecided=undecided,
        items=items,
        metrics=metrics,
        triggers=triggers,
        fingerprint={
            "target_url": "http://127.0.0.1:1",
            "target_version": "2.4.0-reference",
            "build_commit": "abc123",
            "config_sha256": "c" * 64,
            "flags_sha256": "f" * 64,
            "flags": {"flags": {"new_logger_system": False}, "rollout_percentages": {}},
            "suite_version": "0.1.0",
            "suite_commit": "d" * 40,
            "operator": "tester",
        },
        inconclusive_blocks=blocks,
        started_at=started_at,
        finished_at=started_at,
        signoff=(("Quality Assurance", "Dana Quinn"),),
        performance=performance
        if performance is not None
        else {"available": False, "reason": "no performance test ran in this run"},
    )


def locust_summary(
    verdict: str | None = "PASS",
    exit_code: int = 0,
    started_at: str = "2025-01-31T12:05:00Z",
    **extra: Any,
) -> dict[str, Any]:
    """A Locust summary as etlverify.locust_support writes it."""
    metric = {
        "metric": "HTTP Aggregated",
        "stat": "p95",
        "verdict": "FAIL" if verdict == "FAIL" else "PASS",
        "reason": "significant change beyond tolerance" if verdict == "FAIL" else "ok",
        "baseline": 10.0,
        "current": 30.0 if verdict == "FAIL" else 10.5,
        "unit": "ms",
        "change_pct": 200.0 if verdict == "FAIL" else 5.0,
        "tolerance": "10%",
        "p_value": 0.008,
        "test": "Mann-Whitney",
        "baseline_windows": 5,
        "current_windows": 5,
    }
    data = {
        "schema_version": 1,
        "verdict": verdict,
        "exit_code": exit_code,
        "metrics": [metric] if verdict is not None else [],
        "triggers": [
            {"name": "unavailability", "state": "CLEAR", "reason": "no outage", "value": 0.0}
        ],
        "fingerprint": {"target_version": "2.4.0-reference"},
        "run": {"host": "http://127.0.0.1:1", "started_at": started_at},
        "messages": [],
    }
    data.update(extra)
    return data


@pytest.fixture
def write_json() -> Callable[[Path, Any], Path]:
    """Write a JSON document to a path."""

    def write(path: Path, data: Any) -> Path:
        path.write_text(json.dumps(data), encoding="utf-8")
        return path

    return write


@pytest.fixture
def promote() -> Summary:
    """A passing pytest summary."""
    summary = make_summary()
    assert summary.verdict is PromotionVerdict.PROMOTE
    return summary
