"""Contract section 4 (jobs): creation, reads, metrics, cancel, lifecycle and persistence."""

from __future__ import annotations

import itertools
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from contract_support import (
    LONG_PROFILE,
    QUICK_PROFILE,
    TERMINAL,
    TRANSITIONS,
    Api,
    TargetFactory,
    assert_error,
    is_int,
    is_number,
    parse_iso,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(90)

JOB_FIELDS = {
    "jobId",
    "type",
    "status",
    "createdAt",
    "startedAt",
    "completedAt",
    "progressPercent",
    "currentStep",
    "recordsProcessed",
    "recordsSuccessful",
    "recordsFailed",
    "executionTimeMs",
}
STATUSES = {"pending", "scheduled", "running", "completed", "failed", "cancelled"}


def _uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _unset_or_iso(value: Any) -> None:
    if value is None:
        return
    parse_iso(value)
    assert not str(value).startswith("1970-01-01"), f"epoch must be reported as null: {value!r}"


def _check_job_detail(job: dict[str, Any], job_id: str) -> None:
    missing = JOB_FIELDS - set(job)
    assert not missing, f"job detail lacks {sorted(missing)}: {job}"
    assert job["jobId"] == job_id, job
    assert job["status"] in STATUSES, job
    assert job["type"] == job["type"].lower(), job
    parse_iso(job["createdAt"])
    _unset_or_iso(job["startedAt"])
    _unset_or_iso(job["completedAt"])
    pct = job["progressPercent"]
    assert is_number(pct), job
    assert 0 <= pct <= 100, job
    assert job["currentStep"] is None or isinstance(job["currentStep"], str), job
    for key in ("recordsProcessed", "recordsSuccessful", "recordsFailed"):
        assert is_int(job[key]), job
        assert job[key] >= 0, job
    assert job["recordsProcessed"] == job["recordsSuccessful"] + job["recordsFailed"], job
    etm = job["executionTimeMs"]
    assert is_number(etm), job
    assert etm >= 0, job
    if "errorMessage" in job:
        assert job["errorMessage"] is None or isinstance(job["errorMessage"], str), job


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("EXTRACT", "extract"),
        ("transform", "transform"),
        ("Load", "load"),
        ("full_etl", "full_etl"),
        ("FULL_ETL", "full_etl"),
    ],
)
def test_create_each_type_case_insensitive(api: Api, sent: str, expected: str) -> None:
    """§4: the four types are accepted in any case; the answer has job_id, status, lower type."""
    r = api.post(
        "/api/jobs",
        json={"type": sent, "source_config": QUICK_PROFILE, "target_config": "sink=memory"},
    )
    assert r.status_code in (200, 201), r.text
    body = r.json()
    assert isinstance(body["job_id"], str), body
    assert body["job_id"], body
    assert body["status"] in ("pending", "scheduled"), body
    assert body["type"] == expected, body
    job = api.job(body["job_id"])
    assert job["type"] == expected, job


def test_create_with_job_id(api: Api) -> None:
    """§4: a client-chosen job_id matching ^[A-Za-z0-9_-]{1,64}$ is used as the id."""
    job_id = _uid("Client-ID")
    assert api.create_job(job_id=job_id) == job_id
    assert api.job(job_id)["jobId"] == job_id


def test_list_jobs(api: Api) -> None:
    """§4: GET /api/jobs gives {"jobs": [{id, status, type, createdAt}], "total"}."""
    job_id = api.create_job("LOAD")
    body = api.get_json("/api/jobs")
    assert isinstance(body["jobs"], list), body
    assert isinstance(body["total"], int), body
    assert body["total"] >= len(body["jobs"]) >= 1, body
    for item in body["jobs"]:
        assert {"id", "status", "type", "createdAt"} <= set(item), item
        assert item["status"] in STATUSES, item
        parse_iso(item["createdAt"])
    mine = [j for j in body["jobs"] if j["id"] == job_id]
    assert len(mine) == 1, body
    assert mine[0]["type"] == "load", mine


def test_job_detail_and_status_routes(api: Api) -> None:
    """§4: GET /api/jobs/{id} and /status give the full detail with valid types and timestamps."""
    job_id = api.create_job()
    _check_job_detail(api.job(job_id), job_id)
    _check_job_detail(api.get_json(f"/api/jobs/{job_id}/status"), job_id)


def test_quick_job_completes(api: Api) -> None:
    """§4: a job runs to completed: progress 100, both times set, records consistent."""
    job_id = api.create_job("FULL_ETL")
    job = api.wait_status(job_id, TERMINAL)
    _check_job_detail(job, job_id)
    assert job["status"] == "completed", job
    assert job["progressPercent"] == 100, job
    assert job["recordsProcessed"] > 0, job
    started, done, created = (parse_iso(job[k]) for k in ("startedAt", "completedAt", "createdAt"))
    assert created <= started <= done, job
    assert not job.get("errorMessage"), job


def test_pending_job_times_are_null(api: Api) -> None:
    """§4: an unset time is null: a job not yet finished has completedAt null."""
    job_id = api.create_job("EXTRACT", LONG_PROFILE)
    try:
        job = api.job(job_id)
        assert job["status"] in ("pending", "scheduled", "running"), job
        assert job["completedAt"] is None, job
        if job["status"] in ("pending", "scheduled"):
            assert job["startedAt"] is None, job
    finally:
        api.cancel(job_id)


def test_job_metrics(api: Api) -> None:
    """§4: GET /api/jobs/{id}/metrics gives the records, processingRate, successRate, time."""
    job_id = api.create_job()
    job = api.wait_status(job_id, TERMINAL)
    m = api.get_json(f"/api/jobs/{job_id}/metrics")
    assert m["jobId"] == job_id, m
    assert m["status"] == job["status"] == "completed", m
    for key in ("recordsProcessed", "recordsSuccessful", "recordsFailed"):
        assert isinstance(m[key], int), m
        assert m[key] == job[key], (m, job)
    for key in ("processingRate", "successRate", "executionTimeMs"):
        assert is_number(m[key]), m
    assert m["processingRate"] > 0, m
    assert 0 <= m["successRate"] <= 100, m
    expected = 100.0 * m["recordsSuccessful"] / m["recordsProcessed"]
    assert abs(m["successRate"] - expected) < 0.5, m
    if m["executionTimeMs"] > 0:
        rate = m["recordsProcessed"] / (m["executionTimeMs"] / 1000)
        assert rate / 3 <= m["processingRate"] <= rate * 3, (m, rate)


def test_unknown_job_routes_are_404(api: Api) -> None:
    """§4: every job route answers 404 JOB_NOT_FOUND for an unknown id."""
    for path in ("/api/jobs/nope_1", "/api/jobs/nope_1/status", "/api/jobs/nope_1/metrics"):
        body = assert_error(api.get(path), 404, "JOB_NOT_FOUND")
        assert body["context"].get("jobId") == "nope_1", body
    assert_error(api.cancel("nope_1"), 404, "JOB_NOT_FOUND")


def test_cancel_running_job(api: Api) -> None:
    """§4: PUT {"status": "cancelled"} cancels a long job (200); it stays so, records stop."""
    job_id = api.create_job("EXTRACT", LONG_PROFILE)
    api.wait_status(job_id, {"running"})
    r = api.cancel(job_id)
    assert r.status_code == 200, r.text
    assert r.json() == {"job_id": job_id, "status": "cancelled"} or (
        r.json()["job_id"] == job_id and r.json()["status"] == "cancelled"
    ), r.json()
    job = api.job(job_id)
    assert job["status"] == "cancelled", job
    first = job["recordsProcessed"]
    time.sleep(0.4)
    later = api.job(job_id)
    assert later["status"] == "cancelled", later
    assert later["recordsProcessed"] == first, (job, later)
    assert later["completedAt"] is not None, later


def test_cancel_pending_job(api: Api) -> None:
    """§4: a job may be cancelled right after creation (pending|running -> cancelled)."""
    job_id = api.create_job("FULL_ETL", LONG_PROFILE)
    r = api.cancel(job_id)
    assert r.status_code == 200, r.text
    assert api.job(job_id)["status"] == "cancelled"


def test_cancel_terminal_job_is_409(api: Api) -> None:
    """§4: cancelling a completed, failed or cancelled job answers 409 INVALID_JOB_STATE."""
    done = api.create_job()
    failed = api.create_job("FULL_ETL", job_id=_uid("x_fail"))
    cancelled = api.create_job("EXTRACT", LONG_PROFILE)
    assert api.cancel(cancelled).status_code == 200
    api.wait_status(done, {"completed"})
    api.wait_status(failed, {"failed"})
    for job_id, status in ((done, "completed"), (failed, "failed"), (cancelled, "cancelled")):
        assert_error(api.cancel(job_id), 409, "INVALID_JOB_STATE")
        assert api.job(job_id)["status"] == status


def test_put_other_status_is_rejected(api: Api) -> None:
    """§2/§4: only a cancel is a valid PUT; another status is a 4xx error, the job unchanged."""
    job_id = api.create_job("EXTRACT", LONG_PROFILE)
    try:
        for body in ({"status": "completed"}, {"status": "running"}, {}, {"status": 3}):
            r = api.put(f"/api/jobs/{job_id}", json=body)
            assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
            assert_error(r, r.status_code)
        assert api.job(job_id)["status"] in ("pending", "scheduled", "running")
    finally:
        api.cancel(job_id)


@pytest.mark.parametrize("job_type", ["LOAD", "FULL_ETL"])
def test_failing_job_fails(api: Api, job_type: str) -> None:
    """§4: a job whose job_id contains 'fail' ends failed with an errorMessage (load step)."""
    job_id = _uid(f"will_fail_{job_type.lower()}")
    api.create_job(job_type, job_id=job_id)
    job = api.wait_status(job_id, TERMINAL)
    assert job["status"] == "failed", job
    assert isinstance(job.get("errorMessage"), str), job
    assert job["errorMessage"], job
    assert job["completedAt"] is not None, job
    assert job["recordsProcessed"] == job["recordsSuccessful"] + job["recordsFailed"], job
    assert "load" in (str(job["currentStep"]) + job["errorMessage"]).lower(), job
    time.sleep(0.2)
    assert api.job(job_id)["status"] == "failed"


def test_lifecycle_is_monotonic(api: Api) -> None:
    """§4: polled rapidly, status only moves forward, progress and records never decrease."""
    job_id = api.create_job("FULL_ETL", "rows=400;batch=20;delay_ms=5")
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = api.job(job_id)
        seen.append(job)
        if job["status"] in TERMINAL:
            break
    assert seen[-1]["status"] == "completed", seen[-1]
    statuses = [j["status"] for j in seen]
    for prev, cur in itertools.pairwise(seen):
        if cur["status"] != prev["status"]:
            assert cur["status"] in TRANSITIONS[prev["status"]], statuses
        assert cur["progressPercent"] >= prev["progressPercent"], (prev, cur)
        assert cur["recordsProcessed"] >= prev["recordsProcessed"], (prev, cur)
    assert "running" in statuses, f"never observed running: {sorted(set(statuses))}"
    progress = [j["progressPercent"] for j in seen if j["status"] == "running"]
    assert len(set(progress)) > 1, f"no progress while running: {progress[:20]}"


def test_jobs_persist_across_restart(make_target: TargetFactory, tmp_path: Path) -> None:
    """§4: jobs accepted before a restart are still listed, with their last state, after it."""
    root = tmp_path / "deployment"
    target = make_target(root=root)
    with Api(target) as api:
        done = api.create_job("EXTRACT", job_id=_uid("persist_done"))
        failed = api.create_job("FULL_ETL", job_id=_uid("persist_fail"))
        cancelled = api.create_job("EXTRACT", LONG_PROFILE, job_id=_uid("persist_cancel"))
        assert api.cancel(cancelled).status_code == 200
        before = {j: api.wait_status(j, TERMINAL) for j in (done, failed)}
        before[cancelled] = api.job(cancelled)
        total_before = api.get_json("/api/jobs")["total"]
    target.stop()
    restarted = make_target(root=root)
    with Api(restarted) as api:
        listed = {j["id"]: j for j in api.get_json("/api/jobs")["jobs"]}
        assert api.get_json("/api/jobs")["total"] == total_before
        for job_id, old in before.items():
            assert job_id in listed, f"{job_id} lost across the restart"
            new = api.job(job_id)
            for key in (
                "status",
                "type",
                "recordsProcessed",
                "recordsSuccessful",
                "recordsFailed",
                "createdAt",
                "startedAt",
                "completedAt",
            ):
                assert new[key] == old[key], (key, old, new)
            assert listed[job_id]["status"] == old["status"]


def test_running_job_survives_restart_listing(make_target: TargetFactory, tmp_path: Path) -> None:
    """§4: a job running at a restart is still listed after it, in a valid state."""
    root = tmp_path / "deployment"
    target = make_target(root=root)
    with Api(target) as api:
        job_id = api.create_job("EXTRACT", LONG_PROFILE, job_id=_uid("persist_run"))
        api.wait_status(job_id, {"running"})
    target.stop()
    restarted = make_target(root=root)
    with Api(restarted) as api:
        job = api.job(job_id)
        assert job["status"] in STATUSES, job
        assert job["status"] not in ("completed",), job
