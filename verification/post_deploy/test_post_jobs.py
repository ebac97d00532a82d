"""Post-deployment functional testing: every ETL job type created, monitored and cancelled.

Checklist "Post-Deployment Validation / 1. Functional Testing": "Test all ETL job types (create,
monitor, cancel)". Lifecycle rules are contract section 4.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .support import TERMINAL, job_problems, lifecycle_problems

ITEM = "post.1_functional_testing.job_types_create"

pytestmark = [pytest.mark.post_deploy, pytest.mark.functional, pytest.mark.checklist(ITEM)]


def _job_types(settings: Any) -> list[str]:
    types = list(getattr(settings, "job_types", ()) or ("EXTRACT", "TRANSFORM", "LOAD", "FULL_ETL"))
    return [str(t) for t in types]


def test_every_job_type_runs_to_completion(
    etl_api: Any, etl_expect: Any, etl_jobs: Any, etl_settings: Any
) -> None:
    """Test all ETL job types (create, monitor): quick jobs of every type complete consistently."""
    types = _job_types(etl_settings)
    created = {t: etl_jobs.create(profile="quick", type=t) for t in types}
    problems: list[str] = []
    for job_type, job_id in created.items():
        final = etl_jobs.wait_for(job_id, statuses=set(TERMINAL), timeout=60)
        history = etl_jobs.history(job_id)
        for p in job_problems(final, final="completed"):
            problems.append(f"{job_type} {job_id}: {p}")
        for p in lifecycle_problems(history):
            problems.append(f"{job_type} {job_id}: {p}")
        if str(final.get("type", "")).lower() != job_type.lower():
            problems.append(f"{job_type} {job_id}: type {final.get('type')!r} in the job document")
        metrics = etl_api.get(f"/api/jobs/{job_id}/metrics")
        etl_expect.status(metrics, 200)
        m = metrics.json()
        for key in ("recordsProcessed", "recordsSuccessful", "recordsFailed"):
            if m.get(key) != final.get(key):
                problems.append(
                    f"{job_type} {job_id}: /metrics {key}={m.get(key)!r} but the job says "
                    f"{final.get(key)!r}"
                )
        status = etl_api.get(f"/api/jobs/{job_id}/status")
        etl_expect.status(status, 200)
        if status.json().get("status") != "completed":
            problems.append(f"{job_type} {job_id}: /status says {status.json().get('status')!r}")
    listing = etl_api.get("/api/jobs")
    etl_expect.status(listing, 200)
    etl_expect.json_fields(listing, {"jobs": list, "total": int})
    listed = {j.get("id"): j for j in listing.json()["jobs"] if isinstance(j, dict)}
    for job_type, job_id in created.items():
        entry = listed.get(job_id)
        if entry is None:
            problems.append(f"{job_type} {job_id}: not in GET /api/jobs")
        elif entry.get("status") != "completed":
            problems.append(
                f"{job_type} {job_id}: GET /api/jobs lists it as {entry.get('status')!r}"
            )
    etl_expect.that(
        not problems,
        what=f"quick jobs of types {', '.join(types)} complete with consistent documents",
        expected="status completed, monotone history, recordsProcessed = successful + failed, "
        "progress 100, timestamps set, listed",
        got="; ".join(problems),
    )


def test_every_job_type_can_be_cancelled(
    etl_api: Any, etl_expect: Any, etl_jobs: Any, etl_settings: Any
) -> None:
    """Test all ETL job types (cancel): a long job of every type cancels; a second cancel is 409."""
    types = _job_types(etl_settings)
    created = {t: etl_jobs.create(profile="long", type=t) for t in types}
    for job_type, job_id in created.items():
        etl_jobs.wait_for(job_id, statuses={"running"}, timeout=15)
        resp = etl_jobs.cancel(job_id)
        etl_expect.status(resp, 200)
        etl_expect.json_fields(resp, {"job_id": str, "status": str})
        body = resp.json()
        etl_expect.that(
            body["job_id"] == job_id and body["status"] == "cancelled",
            what=f"cancel answer for the {job_type} job",
            expected=f'{{"job_id": "{job_id}", "status": "cancelled"}}',
            got=str(body),
            resp=resp,
        )
    time.sleep(0.3)  # a cancelled job must stay cancelled: give a racing worker time to misbehave
    for job_type, job_id in created.items():
        final = etl_jobs.wait_for(job_id, statuses=set(TERMINAL), timeout=10)
        problems = job_problems(final, final="cancelled") + lifecycle_problems(
            etl_jobs.history(job_id)
        )
        etl_expect.that(
            not problems,
            what=f"the cancelled {job_type} job {job_id}",
            expected="status cancelled, consistent counters and timestamps",
            got="; ".join(problems),
        )
        again = etl_jobs.cancel(job_id)
        etl_expect.error_body(again, status=409, code="INVALID_JOB_STATE")


def test_failing_job_reports_its_error(etl_api: Any, etl_expect: Any, etl_jobs: Any) -> None:
    """Test all ETL job types (monitor): the failing profile ends failed, with an errorMessage."""
    job_id = etl_jobs.create(profile="failing", type="FULL_ETL")
    final = etl_jobs.wait_for(job_id, statuses=set(TERMINAL), timeout=60)
    problems = job_problems(final, final="failed") + lifecycle_problems(etl_jobs.history(job_id))
    etl_expect.that(
        not problems,
        what=f"the failing job {job_id}",
        expected="status failed with a non-empty errorMessage, consistent counters and timestamps",
        got="; ".join(problems),
    )
    etl_expect.error_body(etl_jobs.cancel(job_id), status=409, code="INVALID_JOB_STATE")


def test_cancel_of_unknown_job_is_404(etl_api: Any, etl_expect: Any) -> None:
    """Test all ETL job types (cancel): cancelling an unknown job answers 404 JOB_NOT_FOUND."""
    resp = etl_api.put("/api/jobs/etlv_no_such_job_0000", json={"status": "cancelled"})
    etl_expect.error_body(resp, status=404, code="JOB_NOT_FOUND")
