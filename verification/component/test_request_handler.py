"""Checklist 2.3 (request handler testing) and the request handler part of 3.1 (raised to 50%).

With `new_request_handler` at 25%, requests from exposed and unexposed users must be processed
alike: validated (a 400 names the field), answered with the contract's response shapes (section 4),
every malformed input mapped to a 4xx contract error (never a 5xx), at a sustained rate.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from .rollout import (
    TERMINAL,
    check_partial_rollback,
    error_body_problems,
    exposed_user,
    is_iso8601,
    new_job_id,
    percentile,
    request_counters,
    unexposed_user,
)

if TYPE_CHECKING:
    from pathlib import Path

    from .rollout import RolloutChecker

FLAG = "new_request_handler"
ITEM = "deploy.phase2.2_3_request_handler"

pytestmark = [pytest.mark.component, pytest.mark.request_handler, pytest.mark.deploy]

DETAIL_FIELDS: dict[str, Any] = {
    "jobId": str,
    "type": str,
    "status": str,
    "createdAt": str,
    "startedAt": (str, type(None)),
    "completedAt": (str, type(None)),
    "progressPercent": (int, float),
    "currentStep": (str, type(None)),
    "recordsProcessed": int,
    "recordsSuccessful": int,
    "recordsFailed": int,
    "executionTimeMs": (int, float),
}
METRICS_FIELDS: dict[str, Any] = {
    "jobId": str,
    "status": str,
    "recordsProcessed": int,
    "recordsSuccessful": int,
    "recordsFailed": int,
    "processingRate": (int, float),
    "successRate": (int, float),
    "executionTimeMs": (int, float),
}


def _users() -> tuple[str, str]:
    return exposed_user(25), unexposed_user(25)


def _create(api: Any, expect: Any, jobs: Any, user: str, **overrides: Any) -> dict[str, Any]:
    """POST /api/jobs as `user` with a quick job (fields overridable); the checked 200/201 body."""
    job_id = overrides.pop("job_id", new_job_id("rh"))
    body = {
        "type": "FULL_ETL",
        "source_config": jobs.profiles["quick"],
        "target_config": "sink=memory",
        "job_id": job_id,
        **overrides,
    }
    resp = api.post("/api/jobs", json=body, headers={"X-User-Id": user})
    expect.status(resp, (200, 201))
    got: dict[str, Any] = expect.json_fields(resp, {"job_id": str, "status": str, "type": str})
    expect.that(
        got["job_id"] == job_id
        and got["status"] in {"pending", "scheduled"}
        and got["type"] == str(body["type"]).lower(),
        what=f"POST /api/jobs (user {user}) answers the new job",
        expected={
            "job_id": job_id,
            "status": "pending|scheduled",
            "type": str(body["type"]).lower(),
        },
        got=got,
        resp=resp,
    )
    return got


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.enable_request_handler")
def test_request_handler_flag_at_25_percent_follows_fnv1a(rollout: RolloutChecker) -> None:
    """2.3 Enable new request handler feature flag (25% rollout): exposure follows FNV-1a."""
    rollout.enable(FLAG, 25)


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.request_processing_components")
def test_job_requests_processed_for_exposed_and_unexposed_users(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any
) -> None:
    """2.3 Test request processing with new components: create, read, list and finish a job."""
    rollout.set(FLAG, 25)
    for user in _users():
        h = {"X-User-Id": user}
        job_id = _create(etl_api, etl_expect, etl_jobs, user)["job_id"]
        final = etl_jobs.wait_for(job_id, statuses=TERMINAL, timeout=30.0)
        etl_expect.that(
            final.get("status") == "completed",
            what=f"a quick job created by user {user} completes",
            expected="completed",
            got=final,
        )
        for path in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/status"):
            body = etl_expect.json_fields(
                etl_expect.status(etl_api.get(path, headers=h), 200), {"jobId": str, "status": str}
            )
            etl_expect.that(
                body["jobId"] == job_id and body["status"] == "completed",
                what=f"GET {path} (user {user}) shows the finished job",
                expected={"jobId": job_id, "status": "completed"},
                got={"jobId": body["jobId"], "status": body["status"]},
            )
        listing = etl_expect.json_fields(
            etl_expect.status(etl_api.get("/api/jobs", headers=h), 200),
            {"jobs": list, "total": int},
        )
        ids = [j.get("id") for j in listing["jobs"] if isinstance(j, dict)]
        etl_expect.that(
            ids.count(job_id) == 1,
            what=f"GET /api/jobs (user {user}) lists the job once",
            expected=f"{job_id} once",
            got=f"{ids.count(job_id)} times among {len(ids)} jobs (total {listing['total']})",
        )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.validation_response_building")
def test_validation_names_the_bad_field(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any
) -> None:
    """2.3 Verify validation and response building: each missing or bad field is a 400 naming it."""
    rollout.set(FLAG, 25)
    good = {
        "type": "FULL_ETL",
        "source_config": etl_jobs.profiles["quick"],
        "target_config": "sink=memory",
    }
    cases: list[tuple[str, dict[str, Any]]] = [
        ("type", {k: v for k, v in good.items() if k != "type"}),
        ("source_config", {k: v for k, v in good.items() if k != "source_config"}),
        ("target_config", {k: v for k, v in good.items() if k != "target_config"}),
        ("type", {**good, "type": "NOT_A_TYPE"}),
        ("source_config", {**good, "source_config": ""}),
        ("target_config", {**good, "target_config": "t" * 1025}),
        ("job_id", {**good, "job_id": "bad id!"}),
    ]
    for user in _users():
        for field_name, body in cases:
            resp = etl_api.post("/api/jobs", json=body, headers={"X-User-Id": user})
            got = etl_expect.error_body(
                resp, status=400, code={"MISSING_FIELD", "INVALID_INPUT", "INVALID_RANGE"}
            )
            context = got.get("context")
            etl_expect.that(
                isinstance(context, dict) and context.get("field") == field_name,
                what=f"400 for a bad {field_name} (user {user}) names it in context.field",
                expected={"field": field_name},
                got=context,
                resp=resp,
            )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.validation_response_building")
def test_responses_have_contract_shapes(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any
) -> None:
    """2.3 Verify validation and response building: list, detail and metrics fields and types."""
    rollout.set(FLAG, 25)
    user = exposed_user(25)
    h = {"X-User-Id": user}
    job_id = _create(etl_api, etl_expect, etl_jobs, user, type="extract")["job_id"]
    etl_jobs.wait_for(job_id, statuses=TERMINAL, timeout=30.0)

    listing = etl_expect.json_fields(
        etl_expect.status(etl_api.get("/api/jobs", headers=h), 200), {"jobs": list, "total": int}
    )
    bad = [
        j
        for j in listing["jobs"]
        if not (
            isinstance(j, dict)
            and isinstance(j.get("id"), str)
            and isinstance(j.get("status"), str)
            and isinstance(j.get("type"), str)
            and is_iso8601(j.get("createdAt"))
        )
    ]
    etl_expect.that(
        not bad and listing["total"] >= len(listing["jobs"]),
        what="GET /api/jobs entries are {id, status, type, createdAt} and total counts them",
        expected="string id/status/type, ISO-8601 createdAt in every entry; total >= len(jobs)",
        got=f"{len(bad)} bad entries, first {bad[:2]}, total {listing['total']}, "
        f"{len(listing['jobs'])} listed",
    )

    detail = etl_expect.json_fields(
        etl_expect.status(etl_api.get(f"/api/jobs/{job_id}", headers=h), 200), DETAIL_FIELDS
    )
    etl_expect.that(
        detail["type"] == "extract"
        and detail["status"] == "completed"
        and detail["progressPercent"] == 100
        and detail["recordsProcessed"] == detail["recordsSuccessful"] + detail["recordsFailed"]
        and is_iso8601(detail["createdAt"])
        and is_iso8601(detail["startedAt"])
        and is_iso8601(detail["completedAt"]),
        what="GET /api/jobs/{id} of a completed job is consistent",
        expected="type extract (lower case), completed, progress 100, processed = successful + "
        "failed, ISO-8601 createdAt/startedAt/completedAt",
        got={k: detail[k] for k in DETAIL_FIELDS},
    )

    metrics = etl_expect.json_fields(
        etl_expect.status(etl_api.get(f"/api/jobs/{job_id}/metrics", headers=h), 200),
        METRICS_FIELDS,
    )
    etl_expect.that(
        metrics["jobId"] == job_id
        and metrics["recordsProcessed"] == detail["recordsProcessed"]
        and 0 <= metrics["successRate"] <= 100
        and metrics["processingRate"] >= 0,
        what="GET /api/jobs/{id}/metrics agrees with the job",
        expected=f"jobId {job_id}, recordsProcessed {detail['recordsProcessed']}, "
        "successRate in 0-100, processingRate >= 0",
        got=metrics,
    )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.exception_mapping_functionality")
def test_malformed_requests_map_to_4xx_contract_errors(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any
) -> None:
    """2.3 Check exception mapping functionality: malformed input gives a 4xx JSON error, no 5xx."""
    rollout.set(FLAG, 25)
    json_ct = {"Content-Type": "application/json"}
    huge = b'{"type":"LOAD","source_config":"' + b"a" * (1 << 20) + b'","target_config":"t"}'
    cases: dict[str, tuple[str, str, bytes, dict[str, str]]] = {
        "malformed JSON": ("POST", "/api/jobs", b'{"type": ', json_ct),
        "JSON array body": ("POST", "/api/jobs", b'["FULL_ETL"]', json_ct),
        "JSON string body": ("POST", "/api/jobs", b'"FULL_ETL"', json_ct),
        "empty body": ("POST", "/api/jobs", b"", json_ct),
        "wrong content type": (
            "POST",
            "/api/jobs",
            b"type=FULL_ETL&source_config=x",
            {"Content-Type": "text/plain"},
        ),
        "binary body": (
            "POST",
            "/api/jobs",
            bytes(range(256)) * 4,
            {"Content-Type": "application/octet-stream"},
        ),
        "invalid UTF-8": ("POST", "/api/jobs", b'{"type": "\xff\xfe"}', json_ct),
        "body over 1 MiB": ("POST", "/api/jobs", huge, json_ct),
        "malformed cancel": ("PUT", "/api/jobs/etlv_nope", b"{", json_ct),
        "unknown method": ("PATCH", "/api/jobs", b"{}", json_ct),
    }
    problems: list[str] = []
    for user in _users():
        for name, (method, path, content, headers) in cases.items():
            resp = etl_api.request(
                method, path, content=content, headers={**headers, "X-User-Id": user}
            )
            if not 400 <= resp.status_code < 500:
                problems.append(f"{name} (user {user}): HTTP {resp.status_code}")
                continue
            problems += [f"{name} (user {user}): {p}" for p in error_body_problems(resp)]
    etl_expect.that(
        not problems,
        what="every malformed request is mapped to a 4xx contract error",
        expected="HTTP 4xx with a contract section 2 error body, never 5xx",
        got=f"{len(problems)} problems: " + "; ".join(problems[:5]),
    )


@pytest.mark.performance
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.monitor_request_throughput")
def test_request_throughput_without_errors(
    rollout: RolloutChecker,
    etl_api: Any,
    etl_expect: Any,
    etl_jobs: Any,
    record_metric: Any,
) -> None:
    """2.3 Monitor request throughput: 400 mixed requests on 8 threads, rate reported."""
    rollout.set(FLAG, 25)
    job_id = etl_jobs.create(profile="quick")
    users = _users()
    paths = (
        "/api/health",
        f"/api/jobs/{job_id}",
        f"/api/jobs/{job_id}/metrics",
        "/api/monitor/status",
    )
    n, window = 400, 30.0
    _, errors_before = request_counters(etl_api, etl_expect)
    deadline = time.monotonic() + window

    def one(i: int) -> tuple[int, float]:
        if time.monotonic() > deadline:
            return -1, 0.0
        start = time.perf_counter()
        resp = etl_api.get(paths[i % len(paths)], headers={"X-User-Id": users[i % 2]})
        return resp.status_code, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - start
    done = [r for r in results if r[0] != -1]
    bad = [s for s, _ in done if s != 200]
    rate = len(done) / elapsed if elapsed > 0 else 0.0
    latencies = [t for _, t in done]
    record_metric("request_handler_throughput_rps", round(rate, 1))
    record_metric("request_handler_p95_ms", round(percentile(latencies, 95) * 1000, 2))
    etl_expect.that(
        len(done) == n,
        what=f"{n} requests over 8 threads finish within {window:g} s",
        expected=f"{n} answered",
        got=f"{len(done)} answered in {elapsed:.1f} s ({rate:.0f}/s)",
    )
    etl_expect.that(
        not bad,
        what=f"every request of the throughput run succeeds ({rate:.0f} requests/s)",
        expected="HTTP 200 for all",
        got=f"{len(bad)} failures, statuses {sorted(set(bad))}",
    )
    _, errors_after = request_counters(etl_api, etl_expect)
    record_metric("request_handler_errors_during_run", errors_after - errors_before)


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.rollback_issues_detected")
def test_partial_rollback_of_request_handler(
    rollout: RolloutChecker, etl_ops: Any, etl_expect: Any, etl_deploy_root: Path
) -> None:
    """2.3 Rollback if issues detected: `rollback.sh partial request_handler` turns only it off."""
    check_partial_rollback(rollout, etl_ops, etl_expect, etl_deploy_root, "request_handler")


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist("deploy.phase3.3_1_gradual_feature.increase_request_handler")
def test_request_handler_rollout_raised_to_50_percent(rollout: RolloutChecker) -> None:
    """3.1 Increase request handler rollout to 50%: 25% then 50%, exposure follows FNV-1a."""
    rollout.enable(FLAG, 25)
    rollout.enable(FLAG, 50)
