"""EtlClient, curl reproduction, redaction and the Expect failure builder (no network)."""

from __future__ import annotations

import json

import httpx
import pytest

from etlverify.client import (
    CheckFailed,
    EtlClient,
    Expect,
    TargetError,
    curl_for,
    not_json,
    redact,
)
from etlverify.health import TargetHealth


def _client(handler: object, **kwargs: object) -> EtlClient:
    # a health view of its own per client: the transport is in-process, so one test's transport
    # failure must not mark "the target" down for the next test
    return EtlClient(
        "http://etl.test:8080",
        transport=httpx.MockTransport(handler),  # type: ignore[arg-type]
        health=TargetHealth("http://etl.test:8080", probe_timeout=0.2),
        **kwargs,
    )  # type: ignore[arg-type]


def test_fresh_correlation_id_and_timing() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["x-correlation-id"])
        return httpx.Response(500, json={"status": "error"})

    api = _client(handler)
    assert api.get("/api/health").status_code == 500  # never raises for HTTP status
    api.get("/api/health")
    assert len(set(seen)) == 2
    assert all(8 <= len(c) <= 32 for c in seen)
    assert [t.status for t in api.timings] == [500, 500]
    assert api.timings[0].correlation_id == seen[0]


def test_transport_failure_is_target_error_with_curl() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(TargetError) as info:
        _client(handler).post("/api/jobs", json={"type": "LOAD"})
    text = str(info.value)
    assert "POST /api/jobs: connection failed: connection refused" in text
    assert "Reproduce with: curl" in text
    assert "-X POST" in text


def test_timeout_is_target_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(TargetError, match=r"no response within 2 s"):
        _client(handler, timeout=2).get("/api/health")


def test_invalid_json_when_json_needed() -> None:
    api = _client(lambda r: httpx.Response(200, text="<html>oops</html>"))
    with pytest.raises(TargetError, match="expected a JSON body") as info:
        api.get_json("/api/health")
    assert "did not answer JSON (Content-Type text/plain, body `<html>oops</html>`)" in str(
        info.value
    )


def test_a_body_that_says_json_and_is_not_is_worded_so() -> None:
    """Upstream sends ``{{...}}`` with Content-Type application/json: say the header claimed JSON
    and the body was not, with its first bytes (not "expected JSON, got application/json")."""
    body = '{{"status": "ok"}} }' + "x" * 100
    api = _client(
        lambda r: httpx.Response(
            200, content=body.encode(), headers={"content-type": "application/json"}
        )
    )
    with pytest.raises(TargetError) as info:
        api.get_json("/api/jobs")
    text = str(info.value)
    assert "GET /api/jobs sent Content-Type application/json but its body is not valid JSON" in text
    assert '(it starts `{{"status": "ok"}} }xxx' in text
    assert "...`)" in text  # cut after the first bytes
    what, got = not_json(
        httpx.Response(500, content=b"", request=httpx.Request("GET", "http://t/x"))
    )
    assert what == "GET /x did not answer JSON (Content-Type none, an empty body)"
    assert got == "Content-Type none, an empty body"


def test_curl_redacts_token_or_uses_env_reference() -> None:
    request = httpx.Request(
        "GET", "http://etl.test/api/jobs", headers={"Authorization": "Bearer s3cr3t-token"}
    )
    assert "s3cr3t" not in curl_for(request)
    assert "Authorization: Bearer ***" in curl_for(request)
    line = curl_for(request, token_env_ref="$ETLPLUS_TOKEN")
    assert '-H "Authorization: Bearer $ETLPLUS_TOKEN"' in line
    assert "s3cr3t" not in line


def test_curl_redacts_password_in_body_and_skips_huge_bodies() -> None:
    login = httpx.Request(
        "POST", "http://etl.test/api/auth/login", json={"username": "admin", "password": "hunter2"}
    )
    line = curl_for(login)
    assert "hunter2" not in line
    assert '"password": "***"' in line.replace('":"', '": "')
    big = httpx.Request("POST", "http://etl.test/api/jobs", content=b"x" * 5000)
    assert "5000-byte body, not shown" in curl_for(big)


def test_redact() -> None:
    text = json.dumps({"token": "abc.def", "user": "x"}) + " Bearer zzz123 mysecretvalue"
    out = redact(text, ["mysecretvalue"])
    assert "abc.def" not in out
    assert "zzz123" not in out
    assert "mysecretvalue" not in out


def test_client_adds_auth_header_and_redacts_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer tok-123456"
        return httpx.Response(404, json={"token": "tok-123456"})

    api = _client(handler, token="tok-123456", token_env_ref="$ETLPLUS_TOKEN")
    resp = api.get("/api/jobs/x")
    with pytest.raises(CheckFailed) as info:
        Expect(api, check="test_x", items=("post.a.b",)).status(resp, 200)
    text = str(info.value)
    assert "tok-123456" not in text
    assert "$ETLPLUS_TOKEN" in text


def test_check_failed_text() -> None:
    api = _client(lambda r: httpx.Response(500, json={"status": "error", "detail": "x" * 2000}))
    resp = api.get("/api/jobs/job_1")
    expect = Expect(api, check="test_job_lookup", items=("post.1_functional_testing.job_types",))
    with pytest.raises(CheckFailed) as info:
        expect.status(resp, 404)
    text = str(info.value)
    lines = text.splitlines()
    assert lines[0] == "test_job_lookup: GET /api/jobs/job_1 answered HTTP 500"
    assert "blocks checklist: post.1_functional_testing.job_types" in text
    assert "expected: HTTP 404" in text
    assert "got:      HTTP 500" in text
    response_line = next(line for line in lines if line.startswith("response: "))
    assert len(response_line) < 600
    assert "bytes)" in response_line
    assert lines[-1].startswith("Reproduce with: curl ")
    assert "/api/jobs/job_1" in lines[-1]
    assert isinstance(info.value, AssertionError)


def test_json_fields_reports_every_problem() -> None:
    api = _client(lambda r: httpx.Response(200, json={"status": 1, "build": {"commit": "abc"}}))
    resp = api.get("/api/health/status")
    expect = Expect(api)
    assert expect.json_fields(resp, {"build.commit": str})["status"] == 1
    with pytest.raises(CheckFailed) as info:
        expect.json_fields(resp, {"status": str, "version": str, "uptime_seconds": (int, float)})
    got = str(info.value)
    assert "status is integer" in got
    assert "version missing" in got
    assert "uptime_seconds missing" in got


def test_error_body() -> None:
    body = {
        "status": "error",
        "code": "JOB_NOT_FOUND",
        "message": "Job not found",
        "correlationId": "5f1c9a0b",
        "timestamp": "2026-11-29T17:04:07Z",
    }
    api = _client(lambda r: httpx.Response(404, json=body))
    expect = Expect(api)
    assert (
        expect.error_body(api.get("/api/jobs/x"), 404, "JOB_NOT_FOUND")["code"] == "JOB_NOT_FOUND"
    )
    with pytest.raises(CheckFailed, match="error code"):
        expect.error_body(api.get("/api/jobs/x"), 404, "NOT_FOUND")
    bad = _client(lambda r: httpx.Response(404, json={**body, "correlationId": "xyz"}))
    with pytest.raises(CheckFailed, match="correlationId format"):
        Expect(bad).error_body(bad.get("/api/jobs/x"), 404, "JOB_NOT_FOUND")


def test_bool_is_not_a_number() -> None:
    api = _client(lambda r: httpx.Response(200, json={"n": True, "m": 3}))
    with pytest.raises(CheckFailed):
        Expect(api).json_fields(api.get("/x"), {"n": (int, float)})
    assert Expect(api).json_fields(api.get("/x"), {"m": float})["m"] == 3


def test_check_failed_pickles() -> None:
    import pickle

    exc = CheckFailed(check="c", what="w", expected="1", got="2", items=("a.b",), curl="curl x")
    again = pickle.loads(pickle.dumps(exc))
    assert str(again) == str(exc)
