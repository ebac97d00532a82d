"""The README's promotion pipeline, end to end, against real references over the network.

One reference (A) is verified by every step of one pipeline run, as the README writes it: the
pytest verification (a narrowed selection, accepted with `--allow-partial`, so the test stays
short), headless Locust with a baseline it recorded first, a short `etlverify watch` and a one-step
`etlverify rollout`. `etlverify gate reports/ --require pytest --require locust --require watch
--require rollout` must use all four summaries and PROMOTE: every source builds the same target
fingerprint (`etlverify.report.summary.target_facts` + `run_identity`), although the rollout
changed a flag in between. The same folder with the pytest step run against a second reference
(B) must be refused: the other summaries verified another target.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget

from .conftest import BASE_ARGS, ERRORS_SUITE, ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

PIPELINE = "ci-pipeline-e2e-1"
LOCUST_SHORT = ("-t", "12s", "--etl-warmup", "2", "--etl-windows", "5")
# A wide tolerance: this test checks the pipeline's identities, not a shared machine's noise.
LOCUST_LENIENT = (
    "--etl-tolerance",
    "p50@HTTP Aggregated:200%,+20ms; p95@HTTP Aggregated:200%,+50ms; error_rate:+1pp",
    "--etl-response-time-trigger",
    "500%,+50ms",
)
WATCH_SHORT = (
    "--for", "24s", "--window", "6s", "--probe-every", "0.5s", "--metrics-every", "2s",
    "--job-every", "6s", "--baseline-windows", "2", "--trigger-windows", "2",
)  # fmt: skip
ONE_STEP_PLAN = """
hold = "4s"
window = "1s"
rate = 40.0

[[step]]
component = "logger"
percent = 25
checks = false
"""


def _env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ETLPLUS_", "PYTEST_", "LOCUST_"))
    }
    env["ETLPLUS_PIPELINE_RUN_ID"] = PIPELINE
    return env


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    return proc


def _pytest_step(target: EmbeddedTarget, reports: Path) -> subprocess.CompletedProcess[str]:
    return _run(
        [
            sys.executable,
            "-m",
            "pytest",
            *BASE_ARGS,
            str(ERRORS_SUITE),
            "-m",
            "post_deploy",
            "-k",
            "test_unknown_route_is_404_not_found",
            "--base-url",
            target.base_url,
            "--html",
            str(reports / "report.html"),
            "--self-contained-html",
            "--junitxml",
            str(reports / "junit.xml"),
        ],
        cwd=ROOT,
        timeout=180,
    )


def _locust(target: EmbeddedTarget, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "loadtests" / "etl.py"),
            "--config",
            str(ROOT / "loadtests" / "locust.conf"),
            "--headless",
            "--host",
            target.base_url,
            *LOCUST_SHORT,
            *args,
        ],
        cwd=folder,
        timeout=120,
    )


def _etlverify(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "etlverify", *args], cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def targets() -> Iterator[tuple[EmbeddedTarget, EmbeddedTarget]]:
    """Two references on their own ports and deployment folders: A (verified) and B (another)."""
    started: list[EmbeddedTarget] = []
    try:
        for _ in range(2):
            target = EmbeddedTarget(config_overrides=SUITE_CONFIG_OVERRIDES)
            target.start()
            started.append(target)
        yield started[0], started[1]
    finally:
        for target in started:
            target.stop()


@pytest.fixture(scope="module")
def pipeline(
    targets: tuple[EmbeddedTarget, EmbeddedTarget], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Every step of one pipeline run against A; the folder that holds `reports/`."""
    a, _ = targets
    folder = tmp_path_factory.mktemp("pipeline")
    reports = folder / "reports"
    reports.mkdir()
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "etlverify",
            "watch",
            *WATCH_SHORT,
            "--base-url",
            a.base_url,
            "--state",
            str(folder / "watch-state"),
            "--reports",
            str(reports),
        ],
        cwd=folder,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        step = _pytest_step(a, reports)
        assert step.returncode == 0, step.stdout[-3000:]
        watch_out, _ = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 0, watch_out[-3000:]
    baseline = folder / "locust-staging.json"
    record = _locust(a, folder, "--etl-record", "--etl-baseline", str(baseline))
    assert record.returncode == 0, record.stdout[-2000:] + record.stderr[-2000:]
    judged = _locust(
        a,
        folder,
        "--etl-baseline",
        str(baseline),
        *LOCUST_LENIENT,
        "--etl-summary",
        str(reports / "locust_summary.json"),
    )
    assert judged.returncode == 0, judged.stdout[-2000:] + judged.stderr[-2000:]
    (folder / "plan.toml").write_text(ONE_STEP_PLAN, encoding="utf-8")
    rollout = _etlverify(
        "rollout", str(folder / "plan.toml"), "--no-checks", "--base-url", a.base_url,
        "--deploy-root", str(a.root), "--state", str(folder / "rollout-state"),
        "--reports", str(reports), cwd=folder,
    )  # fmt: skip
    assert rollout.returncode == 0, rollout.stdout[-3000:]
    return folder


def _gate(reports: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _etlverify(
        "gate", str(reports), "--no-html", "--require", "pytest", "--require", "locust",
        "--require", "watch", "--require", "rollout", *extra, cwd=reports.parent, timeout=60,
    )  # fmt: skip


def test_one_target_every_source_promotes(pipeline: Path) -> None:
    reports = pipeline / "reports"
    fingerprints = {
        name: json.loads((reports / name).read_text())["run"]["target_fingerprint"]
        for name in (
            "summary.json",
            "locust_summary.json",
            "watch_summary.json",
            "rollout_summary.json",
        )
    }
    assert len(set(fingerprints.values())) == 1, fingerprints
    gate = _gate(reports, "--allow-partial")
    assert gate.returncode == 0, gate.stdout + gate.stderr
    lines = gate.stdout.splitlines()
    assert lines[0] == "etlverify gate: PROMOTE (exit code 0)", gate.stdout
    used = [line for line in lines if line.strip().startswith("used ")]
    assert len(used) == 4, gate.stdout
    assert f"pipeline run {PIPELINE}" in used[0]
    assert any(line.strip().startswith("PARTIAL (--allow-partial)") for line in lines)
    # without --allow-partial the narrowed pytest run is refused, naming the missing scope
    narrow = _gate(reports)
    assert narrow.returncode == 12, narrow.stdout
    assert "partial scope: its run covered" in narrow.stdout


def test_another_target_is_refused(
    pipeline: Path, targets: tuple[EmbeddedTarget, EmbeddedTarget], tmp_path: Path
) -> None:
    """The pytest step against B, the other steps' summaries of A: one pipeline run, two targets."""
    _, b = targets
    reports = tmp_path / "reports"
    reports.mkdir()
    for name in ("locust_summary.json", "watch_summary.json", "rollout_summary.json"):
        (reports / name).write_bytes((pipeline / "reports" / name).read_bytes())
    step = _pytest_step(b, reports)
    assert step.returncode == 0, step.stdout[-3000:]
    gate = _gate(reports, "--allow-partial")
    assert gate.returncode == 12, gate.stdout
    refused = [line for line in gate.stdout.splitlines() if "REFUSED" in line]
    assert len(refused) == 3, gate.stdout
    assert all("other target: it verified" in line for line in refused), refused
    assert all(b.base_url in line for line in refused), refused
