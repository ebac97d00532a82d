"""Contract sections 1 (transport) and 2 (errors) against the reference target."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest
from contract_support import CORRELATION_RE, HTTP_TIMEOUT, Api, assert_error

if TYPE_CHECKING:
    from collections.abc import Iterator

    from etlverify.embedded import EmbeddedTarget

pytestmark = pytest.mark.timeout(60)


def _job_body(**kw: object) -> dict[str, object]:
    body: dict[str, object] = {
        "type": "EXTRACT",
        "source_config": "rows=10;batch=10;delay_ms=0",
        "target_config": "sink=memory",
    }
    body.update(kw)
    return {k: v for k, v in body.items() if v is not None}


def test_api_answers_json_utf8(api: Api) -> None:
    """§1: the API answers JSON bodies in UTF-8 over HTTP/1.1."""
    r = api.get("/api/health")
    assert r.status_code == 200
    assert r.http_version == "HTTP/1.1"
    ctype = r.headers.get("content-type", "")
    assert ctype.startswith("application/json"), ctype
    assert "charset" not in ctype.lower() or "utf-8" in ctype.lower(), ctype
    assert isinstance(r.json(), dict)


def test_every_response_carries_a_correlation_id(api: Api) -> None:
    """§1: every response SHOULD carry X-Correlation-ID (success and error alike)."""
    for path in ("/api/health", "/api/jobs", "/api/does-not-exist"):
        r = api.get(path)
        cid = r.headers.get("X-Correlation-ID")
        assert cid is not None, f"{path}: no X-Correlation-ID header"
        assert CORRELATION_RE.fullmatch(cid), f"{path}: correlation id {cid!r} is not 8-32 hex"


def test_sent_correlation_id_is_echoed(api: Api) -> None:
    """§1/§2: a request that sends X-Correlation-ID gets it echoed, also as the error body's id."""
    cid = uuid.uuid4().hex[:20]
    r = api.get("/api/health", headers={"X-Correlation-ID": cid})
    assert r.headers.get("X-Correlation-ID") == cid
    cid2 = uuid.uuid4().hex
    r = api.get("/api/jobs/no_such_job", headers={"X-Correlation-ID": cid2})
    body = assert_error(r, 404, "JOB_NOT_FOUND")
    assert r.headers.get("X-Correlation-ID") == cid2
    assert body["correlationId"] == cid2


def test_error_body_shape_job_not_found(api: Api) -> None:
    """§2: an unknown job gives 404 JOB_NOT_FOUND with the full error body and context.jobId."""
    r = api.get("/api/jobs/job_42_missing")
    body = assert_error(r, 404, "JOB_NOT_FOUND")
    assert body["context"].get("jobId") == "job_42_missing", body
    assert set(body) >= {"status", "code", "message", "correlationId", "timestamp", "context"}


def test_distinct_errors_get_distinct_correlation_ids(api: Api) -> None:
    """§2: each error answer has its own correlation id (it identifies one request in the log)."""
    ids = {assert_error(api.get("/api/jobs/nope_x"), 404)["correlationId"] for _ in range(5)}
    assert len(ids) == 5, ids


@pytest.mark.parametrize("path", ["/api/nothing-here", "/api/jobs/x/y/z", "/nowhere", "/api"])
def test_unknown_route_is_404_not_found(api: Api, path: str) -> None:
    """§2: an unknown route answers 404 NOT_FOUND with a JSON error body."""
    assert_error(api.get(path), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/api/health", "GET"),
        ("POST", "/api/health/live", "GET"),
        ("PATCH", "/api/jobs", "POST"),
        ("DELETE", "/api/jobs", "GET"),
        ("GET", "/api/auth/login", "POST"),
    ],
)
def test_wrong_method_is_405_with_allow(api: Api, method: str, path: str, allowed: str) -> None:
    """§2: a known route with a wrong method gives 405 METHOD_NOT_ALLOWED and an Allow header."""
    r = api.request(method, path)
    assert_error(r, 405, "METHOD_NOT_ALLOWED")
    allow = r.headers.get("Allow")
    assert allow, "405 without an Allow header"
    methods = {m.strip().upper() for m in allow.split(",")}
    assert allowed in methods, allow
    assert method not in methods, allow


def test_invalid_json_is_400_invalid_input(api: Api) -> None:
    """§2: a body that is not JSON gives 400 INVALID_INPUT."""
    r = api.post("/api/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(r, 400, "INVALID_INPUT")


def test_json_that_is_not_an_object_is_400(api: Api) -> None:
    """§2/§4: a JSON body of the wrong shape gives 400, not 5xx."""
    for body in ([1, 2], "text", 42, None):
        r = api.post("/api/jobs", content=json.dumps(body).encode())
        assert_error(r, 400, {"INVALID_INPUT", "MISSING_FIELD"})


@pytest.mark.parametrize("field", ["type", "source_config", "target_config"])
def test_missing_field_is_400_naming_it(api: Api, field: str) -> None:
    """§2/§4: a missing required job field gives 400 MISSING_FIELD naming it in context.field."""
    body = _job_body()
    del body[field]
    assert_error(api.post("/api/jobs", json=body), 400, "MISSING_FIELD", field=field)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"type": "NOT_A_TYPE"}, "type"),
        ({"type": 5}, "type"),
        ({"source_config": ""}, "source_config"),
        ({"source_config": "x" * 1025}, "source_config"),
        ({"source_config": 12}, "source_config"),
        ({"target_config": ""}, "target_config"),
        ({"target_config": "y" * 1025}, "target_config"),
        ({"target_config": ["a"]}, "target_config"),
        ({"job_id": "has space"}, "job_id"),
        ({"job_id": "a" * 65}, "job_id"),
        ({"job_id": ""}, "job_id"),
        ({"job_id": "../etc/passwd"}, "job_id"),
        ({"job_id": 7}, "job_id"),
    ],
)
def test_bad_field_is_400_naming_it(api: Api, override: dict[str, object], field: str) -> None:
    """§2/§4: a bad job field (type, length 1-1024, job_id pattern) gives 400 naming the field."""
    r = api.post("/api/jobs", json=_job_body(**override))
    assert_error(r, 400, {"INVALID_INPUT", "INVALID_RANGE", "MISSING_FIELD"}, field=field)


def test_boundary_lengths_are_accepted(api: Api) -> None:
    """§4: source/target configs of 1 and 1024 characters and a 64-character job_id are valid."""
    job_id = "b" * 64
    body = _job_body(source_config="rows=1;" + "z" * 1017, target_config="t", job_id=job_id)
    assert len(str(body["source_config"])) == 1024
    r = api.post("/api/jobs", json=body)
    assert r.status_code in (200, 201), r.text
    assert r.json()["job_id"] == job_id


def test_duplicate_job_id_is_409(api: Api) -> None:
    """§4: a job_id already in use gives 409 with a 409 code."""
    job_id = f"dup_{uuid.uuid4().hex[:8]}"
    api.create_job(job_id=job_id)
    r = api.post("/api/jobs", json=_job_body(job_id=job_id))
    assert_error(r, 409, {"JOB_ALREADY_RUNNING", "CONSTRAINT_VIOLATION", "INVALID_JOB_STATE"})


def test_body_over_one_mib_is_413(api: Api) -> None:
    """§2: a body over 1 MiB gives 413 PAYLOAD_TOO_LARGE (and the connection is not dropped)."""
    big = b'{"type": "EXTRACT", "source_config": "' + b"a" * (1024 * 1024 + 10) + b'"}'
    r = api.post("/api/jobs", content=big, headers={"Content-Type": "application/json"})
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    assert api.get("/api/health").status_code == 200


def test_body_just_under_one_mib_is_not_413(api: Api) -> None:
    """§2: only bodies over 1 MiB are too large; a 1 MiB body is judged on its content (400)."""
    pad = 1024 * 1024 - len(b'{"x": ""}')
    body = b'{"x": "' + b"a" * pad + b'"}'
    assert len(body) == 1024 * 1024
    r = api.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400, "MISSING_FIELD")


def test_chunked_body_over_one_mib_is_413(reference: EmbeddedTarget) -> None:
    """§2: the 1 MiB limit holds for a chunked body without Content-Length too."""

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"a" * 65536

    with httpx.Client(base_url=reference.base_url, timeout=HTTP_TIMEOUT) as client:
        r = client.post("/api/jobs", content=chunks())
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


def test_error_statuses_match_their_codes(api: Api) -> None:
    """§2: every error answer this module can provoke has a code listed under its status."""
    provoked = [
        api.get("/api/jobs/none_such"),
        api.get("/api/jobs/none_such/status"),
        api.get("/api/jobs/none_such/metrics"),
        api.put("/api/jobs/none_such", json={"status": "cancelled"}),
        api.post("/api/jobs", json={}),
        api.request("PUT", "/api/health"),
        api.get("/api/flags/nothing/here/at/all"),
    ]
    for r in provoked:
        assert r.status_code >= 400, r.request.url
        assert_error(r, r.status_code)
