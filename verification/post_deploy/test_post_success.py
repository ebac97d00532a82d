"""Success metrics: the deployment success criteria, judged on what this run saw.

Checklist "Success Metrics / Deployment Success Criteria". Uptime is sampled for the whole session
by the `uptime_sampler` fixture; these checks judge the samples taken so far (restarts made on
purpose by the rollback suites are marked planned and not counted).
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.faults import fault_windows

from .support import TERMINAL, job_problems

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from .support import AppLog, UptimeSampler

pytestmark = [pytest.mark.post_deploy]

#: error lines of the reference target that destructive checks cause on purpose (invalid files)
_SUITE_CAUSED_MESSAGES = ("reload rejected", "Feature flags reload rejected")


@pytest.mark.monitoring
@pytest.mark.deployment_state
@pytest.mark.checklist("success.deployment_success.uptime_99_9")
def test_uptime_during_the_run(uptime_sampler: UptimeSampler, etl_expect: Any) -> None:
    """System uptime > 99.9% during deployment: /api/health sampled every 0.5 s through the run."""
    for _ in range(6):  # at least a few samples, even when this test runs first
        uptime_sampler.probe()
        time.sleep(0.2)
    samples = uptime_sampler.snapshot()
    counted = [s for s in samples if not s.planned]
    ok = sum(s.ok for s in counted)
    availability = 100.0 * ok / len(counted) if counted else 0.0
    span = samples[-1].at - samples[0].at if samples else 0.0
    # each distinct failure once (while the target is known down every sample says the same)
    failures = list(dict.fromkeys(s.detail for s in counted if not s.ok))
    print(
        f"uptime: {ok}/{len(counted)} health probes ok over {span:.0f} s = {availability:.3f}% "
        f"({len(samples) - len(counted)} taken during planned restarts, not counted)"
    )
    etl_expect.that(
        availability > 99.9,
        what=f"availability over {len(counted)} health probes in {span:.0f} s",
        expected="> 99.9% of probes answered HTTP 200",
        got=f"{availability:.3f}%; failures: {', '.join(failures[:5])}",
    )


@pytest.mark.monitoring
@pytest.mark.deployment_state
@pytest.mark.checklist("success.deployment_success.no_critical_errors")
def test_no_critical_errors_in_logs(
    app_log: AppLog, run_started: datetime, etl_api: Any, etl_expect: Any, etl_settings: Any
) -> None:
    """No critical errors in application logs: no FATAL, no ERROR the suite did not cause itself."""
    suite_ids = {t.correlation_id for t in list(getattr(etl_api, "timings", ()))}
    induced = fault_windows()
    destructive = bool(getattr(etl_settings, "destructive_allowed", False))
    lines = app_log.lines(since=run_started)
    critical, caused = [], 0
    for line in lines:
        if line.level not in ("ERROR", "FATAL"):
            continue
        suite_job = line.context.get("jobId", "").startswith("etlv_")
        suite_request = line.correlation_id in suite_ids
        suite_file = destructive and any(m in line.message for m in _SUITE_CAUSED_MESSAGES)
        # while this run had the target's fault switches on, its errors are the ones we asked for
        at = line.timestamp.timestamp()
        suite_fault = any(start <= at <= end for start, end in induced)
        if line.level == "ERROR" and (suite_job or suite_request or suite_file or suite_fault):
            caused += 1
            continue
        critical.append(f"{line.file}:{line.number} {line.raw[:200]}")
    print(
        f"log: {len(lines)} lines since the run started, {caused} ERROR lines caused by the suite"
    )
    etl_expect.that(
        not critical,
        what=f"ERROR/FATAL lines in {app_log.path.name}* since the run started",
        expected="none but those the suite caused (its correlation ids, its etlv_ jobs, "
        "invalid files it wrote, faults it switched on)",
        got=f"{len(critical)}: " + " || ".join(critical[:5]),
    )


def _alert_sizes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in (root / "logs").glob("alerts_*.log")}


def _alerts_since(root: Path, sizes: dict[Path, int]) -> list[str]:
    lines: list[str] = []
    for path in sorted((root / "logs").glob("alerts_*.log")):
        with path.open("rb") as fh:
            fh.seek(sizes.get(path, 0))
            lines += fh.read().decode("utf-8", "replace").splitlines()
    return lines


@pytest.mark.monitoring
@pytest.mark.deployment_state
@pytest.mark.checklist("success.deployment_success.monitoring_alerts_informational")
def test_monitoring_alerts_are_informational(
    etl_ops: Any, etl_deploy_root: Path, etl_expect: Any
) -> None:
    """All monitoring alerts are informational only: `monitor check` finds no WARNING/CRITICAL.

    The first pass also reports log lines written since the last pass (this run's own error
    answers among them; those are judged by the no-critical-errors check), so the verdict is the
    second pass: anything still firing then is a standing condition.
    """
    first = etl_ops.monitor("check", timeout=60)
    sizes = _alert_sizes(etl_deploy_root)
    second = etl_ops.monitor("check", timeout=60)
    new = _alerts_since(etl_deploy_root, sizes)
    firing = [ln for ln in new if "[WARNING]" in ln or "[CRITICAL]" in ln]
    print(
        f"monitor check: first pass exit {first.returncode}, second pass exit {second.returncode}"
    )
    etl_expect.that(
        second.returncode == 0 and not firing,
        what="`monitor check` on the deployed target",
        expected="exit 0 and only INFO alerts",
        got=f"exit {second.returncode}; {len(firing)} alerts: "
        + " | ".join(firing[:5])
        + (f"; output: {(second.stdout or '')[-300:]}" if second.returncode else ""),
    )
    etl_expect.that(
        bool(new),
        what="the monitor wrote its alerts file",
        expected="new lines in logs/alerts_*.log",
        got="none",
    )


@pytest.mark.functional
@pytest.mark.checklist("success.deployment_success.user_facing_functionality")
def test_user_facing_end_to_end(etl_api: Any, etl_ws: Any, etl_jobs: Any, etl_expect: Any) -> None:
    """User-facing functionality works as expected: create, watch over WS, complete, list."""
    job_id = f"etlv_e2e_{uuid.uuid4().hex[:12]}"
    ws = etl_ws()
    ws.subscribe(job_ids=[job_id])
    etl_jobs.create(profile="quick", type="FULL_ETL", job_id=job_id)
    pushed = ws.collect(
        lambda m: (
            m.get("type") == "job_status_update" and (m.get("data") or {}).get("status") in TERMINAL
        ),
        timeout=60,
    )
    final_push = pushed[-1]["data"]["status"]
    doc = etl_jobs.wait_for(job_id, statuses=set(TERMINAL), timeout=30)
    problems = job_problems(doc, final="completed")
    if final_push != "completed":
        problems.append(f"WebSocket pushed {final_push!r} as the last status")
    listing = etl_api.get("/api/jobs")
    etl_expect.status(listing, 200)
    ids = {j.get("id") for j in etl_expect.json_fields(listing, {"jobs": list})["jobs"]}
    if job_id not in ids:
        problems.append("the job is not in GET /api/jobs")
    monitor = etl_api.get("/api/monitor/jobs")
    etl_expect.status(monitor, 200)
    etl_expect.that(
        not problems,
        what=f"end-to-end job {job_id}",
        expected="pushed and REST status completed, consistent document, listed",
        got="; ".join(problems),
    )
