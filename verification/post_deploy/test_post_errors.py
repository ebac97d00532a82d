"""Post-deployment functional testing: error handling and reporting (contract section 2).

Checklist "1. Functional Testing": "Validate error handling and reporting". Every 4xx answer has the
contract's JSON error body with its symbolic code and a correlation id; the id a client sends is
echoed; the error is logged with that id.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.contract import CODE_STATUS

if TYPE_CHECKING:
    from .support import AppLog

ITEM = "post.1_functional_testing.validate_error_handling"

pytestmark = [
    pytest.mark.post_deploy,
    pytest.mark.functional,
    pytest.mark.smoke,
    pytest.mark.checklist(ITEM),
]

QUICK_SOURCE = "rows=10;batch=10;delay_ms=1"
#: every symbolic error code of the contract (section 2)
_ANY_CODE = tuple(CODE_STATUS)


def test_unknown_route_is_404_not_found(etl_api: Any, etl_expect: Any) -> None:
    """Validate error handling and reporting: an unknown route answers 404 NOT_FOUND."""
    etl_expect.error_body(etl_api.get("/api/etlverify/no/such/route"), status=404, code="NOT_FOUND")


def test_query_string_on_a_known_route_is_not_a_malformed_request(
    etl_api: Any, etl_expect: Any
) -> None:
    """Validate error handling and reporting: a query string on a known route is ignored (200 as
    without it) or refused with the contract's error body, never a body of another shape."""
    resp = etl_api.get("/api/health", params={"etlverify": "1"})
    if resp.status_code == 200:
        return
    etl_expect.that(
        400 <= resp.status_code < 500,
        what="GET /api/health with a query string (?etlverify=1) failed on the server",
        expected="HTTP 200 as without the query string, or a 4xx contract error",
        got=f"HTTP {resp.status_code}",
        resp=resp,
    )
    try:
        etl_expect.error_body(resp, status=resp.status_code, code=_ANY_CODE)
    except AssertionError:
        raise etl_expect.fail(
            "GET /api/health with a query string (?etlverify=1) was refused with a body that is "
            "not the contract's error shape: requests with a query string are mishandled",
            expected="HTTP 200, or a 4xx JSON error body (status, code, message, correlationId)",
            got=f"HTTP {resp.status_code} {resp.headers.get('content-type', 'no content-type')}",
            resp=resp,
        ) from None


def test_wrong_method_is_405_with_allow(etl_api: Any, etl_expect: Any) -> None:
    """Validate error handling and reporting: a wrong method answers 405 with an Allow header."""
    resp = etl_api.delete("/api/health")
    etl_expect.error_body(resp, status=405, code="METHOD_NOT_ALLOWED")
    allow = resp.headers.get("allow", "")
    etl_expect.that(
        "GET" in [m.strip().upper() for m in allow.split(",")],
        what="Allow header of DELETE /api/health",
        expected="a list including GET",
        got=allow or "absent",
        resp=resp,
    )


def test_unknown_job_is_404_naming_the_job(etl_api: Any, etl_expect: Any) -> None:
    """Validate error handling and reporting: an unknown job is 404 JOB_NOT_FOUND."""
    job_id = f"etlv_missing_{uuid.uuid4().hex[:8]}"
    resp = etl_api.get(f"/api/jobs/{job_id}")
    body = etl_expect.error_body(resp, status=404, code="JOB_NOT_FOUND")
    etl_expect.that(
        (body.get("context") or {}).get("jobId") == job_id or job_id in body.get("message", ""),
        what="the error names the job",
        expected=f"context.jobId or message naming {job_id}",
        got=body,
        resp=resp,
    )


@pytest.mark.parametrize(
    ("body", "field", "codes"),
    [
        (
            {"source_config": QUICK_SOURCE, "target_config": "sink=memory"},
            "type",
            {"MISSING_FIELD"},
        ),
        (
            {"type": "NOT_A_TYPE", "source_config": QUICK_SOURCE, "target_config": "sink=memory"},
            "type",
            {"INVALID_INPUT", "INVALID_RANGE"},
        ),
        ({"type": "EXTRACT", "target_config": "sink=memory"}, "source_config", {"MISSING_FIELD"}),
        (
            {"type": "EXTRACT", "source_config": "", "target_config": "sink=memory"},
            "source_config",
            {"INVALID_INPUT", "INVALID_RANGE"},
        ),
        (
            {"type": "EXTRACT", "source_config": "x" * 1025, "target_config": "sink=memory"},
            "source_config",
            {"INVALID_INPUT", "INVALID_RANGE"},
        ),
        (
            {"type": "EXTRACT", "source_config": 5, "target_config": "sink=memory"},
            "source_config",
            {"INVALID_INPUT"},
        ),
        (
            {
                "type": "EXTRACT",
                "source_config": QUICK_SOURCE,
                "target_config": "sink=memory",
                "job_id": "bad id/with slash",
            },
            "job_id",
            {"INVALID_INPUT", "INVALID_RANGE"},
        ),
    ],
    ids=[
        "missing-type",
        "bad-type",
        "missing-source",
        "empty-source",
        "long-source",
        "source-not-string",
        "bad-job-id",
    ],
)
def test_bad_job_requests_name_the_field(
    etl_api: Any, etl_expect: Any, body: dict[str, Any], field: str, codes: set[str]
) -> None:
    """Validate error handling and reporting: a bad job request answers 400 naming the field."""
    resp = etl_api.post("/api/jobs", json=body)
    err = etl_expect.error_body(resp, status=400, code=codes)
    etl_expect.that(
        (err.get("context") or {}).get("field") == field,
        what="context.field of the 400 answer",
        expected=field,
        got=err.get("context"),
        resp=resp,
    )


def test_invalid_json_is_400(etl_api: Any, etl_expect: Any) -> None:
    """Validate error handling and reporting: a body that is not JSON answers 400 INVALID_INPUT."""
    resp = etl_api.post(
        "/api/jobs", content=b'{"type": "EXTRACT", ', headers={"Content-Type": "application/json"}
    )
    etl_expect.error_body(resp, status=400, code="INVALID_INPUT")


def test_duplicate_job_id_is_409(etl_jobs: Any, etl_api: Any, etl_expect: Any) -> None:
    """Validate error handling and reporting: reusing a job_id answers 409."""
    job_id = etl_jobs.create(profile="quick", type="EXTRACT")
    resp = etl_api.post(
        "/api/jobs",
        json={
            "type": "EXTRACT",
            "source_config": QUICK_SOURCE,
            "target_config": "sink=memory",
            "job_id": job_id,
        },
    )
    etl_expect.error_body(
        resp, status=409, code={"CONSTRAINT_VIOLATION", "JOB_ALREADY_RUNNING", "INVALID_JOB_STATE"}
    )


def test_oversized_body_is_413(etl_api: Any, etl_expect: Any) -> None:
    """Validate error handling and reporting: a body over 1 MiB answers 413 PAYLOAD_TOO_LARGE."""
    resp = etl_api.post(
        "/api/jobs", content=b"x" * (1024 * 1024 + 1), headers={"Content-Type": "application/json"}
    )
    etl_expect.error_body(resp, status=413, code="PAYLOAD_TOO_LARGE")


def test_client_correlation_id_is_echoed(etl_api: Any, etl_expect: Any) -> None:
    """Validate error handling and reporting: the correlation id a client sends is echoed."""
    cid = uuid.uuid4().hex[:16]
    resp = etl_api.get(f"/api/jobs/etlv_cid_{cid}", headers={"X-Correlation-ID": cid})
    body = etl_expect.error_body(resp, status=404, code="JOB_NOT_FOUND")
    etl_expect.that(
        resp.headers.get("x-correlation-id") == cid and body["correlationId"] == cid,
        what="correlation id echoed",
        expected=f"header and body correlationId {cid}",
        got=f"header {resp.headers.get('x-correlation-id')!r}, body {body['correlationId']!r}",
        resp=resp,
    )


def test_error_is_logged_with_its_correlation_id(
    etl_api: Any, etl_expect: Any, app_log: AppLog
) -> None:
    """Validate error handling and reporting: an error answer is logged with its correlation id."""
    cid = uuid.uuid4().hex[:16]
    since = datetime.now(UTC) - timedelta(seconds=1)
    resp = etl_api.get(f"/api/jobs/etlv_cid_{cid}", headers={"X-Correlation-ID": cid})
    etl_expect.status(resp, 404)
    line = app_log.wait_for(lambda ln: ln.correlation_id == cid, timeout=5, since=since)
    etl_expect.that(
        line is not None,
        what=f"the 404 is logged with correlationId={cid} in {app_log.path}",
        expected=f"a log line with correlationId={cid}",
        got="no such line",
        resp=resp,
    )
