"""Post-deployment functional testing: no malformed input gives a 5xx or a dropped connection.

Checklist "1. Functional Testing": "Validate error handling and reporting". Contract section 2: "No
input, however malformed (bad JSON, wrong types, huge or binary bodies, SQL/XSS/path-traversal
strings, unknown methods), may produce a 5xx or a dropped connection." Hypothesis generates the
requests; a failure names the request as a curl line (the client raises `TargetError` with one for a
dropped connection).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if TYPE_CHECKING:
    import httpx

ITEM = "post.1_functional_testing.validate_error_handling"

pytestmark = [pytest.mark.post_deploy, pytest.mark.functional, pytest.mark.checklist(ITEM)]

FUZZ_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NASTY = [
    "' OR '1'='1",
    "1; DROP TABLE jobs;--",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%00",
    "\x00",
    "\u202e",
    "💥",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "a" * 300,
    "-1",
    "1e309",
    "NaN",
    "null",
    "[]",
    "{}",
]
text_values = st.one_of(st.sampled_from(NASTY), st.text(max_size=80))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    text_values,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(text_values, children, max_size=4)
    ),
    max_leaves=12,
)
job_fields = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(["EXTRACT", "load", "Full_Etl", ""]), json_values),
        "source_config": json_values,
        "target_config": json_values,
        "job_id": st.one_of(text_values, json_values),
        "status": st.one_of(st.sampled_from(["cancelled", "running", "completed"]), json_values),
        "username": json_values,
        "password": json_values,
    },
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=2048).map(lambda b: ("raw", b)),
    text_values.map(lambda t: ("raw", t.encode("utf-8", "surrogatepass"))),
    json_values.map(lambda v: ("json", v)),
    job_fields.map(lambda v: ("json", v)),
)
segment = st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=40)).map(
    lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="")
)
ROUTES = [
    "/api/jobs",
    "/api/jobs/{}",
    "/api/jobs/{}/status",
    "/api/jobs/{}/metrics",
    "/api/health",
    "/api/health/{}",
    "/api/health/status",
    "/api/health/metrics",
    "/api/monitor/status",
    "/api/monitor/metrics",
    "/api/monitor/jobs",
    "/api/flags",
    "/api/flags/users/{}",
    "/api/auth/login",
    "/api/auth/profile",
    "/api/logs",
    "/api/{}",
    "/{}",
    "/api/{}/{}",
]
paths = st.builds(
    lambda route, segs: route.format(*segs),
    st.sampled_from(ROUTES),
    st.lists(segment, min_size=2, max_size=2),
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
#: syntactically valid methods no ETL Plus route knows (RFC 9110 token characters)
UNKNOWN_METHODS = ["FOO", "A", "PROPFIND", "BREW", "M-SEARCH", "GET2", "purge"]
content_types = st.sampled_from(
    [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "application/json; charset=latin-1",
        "",
    ]
)
#: routes a fuzzer must not touch: fault switches, and logout (it would revoke the suite's token)
EXCLUDED = ("/api/_", "/api/auth/logout")


def _send(etl_api: Any, method: str, path: str, body: Any, ctype: str) -> httpx.Response:
    headers = {"Content-Type": ctype} if ctype else {}
    content: bytes | None = None
    if body is not None:
        kind, value = body
        content = value if kind == "raw" else json.dumps(value).encode()
    return etl_api.request(method, path, content=content, headers=headers)


def _check(etl_api: Any, etl_expect: Any, resp: httpx.Response) -> None:
    etl_expect.that(
        resp.status_code < 500,
        what=f"{resp.request.method} {resp.request.url.raw_path.decode(errors='replace')[:120]} "
        "must not answer 5xx to bad input",
        expected="a 2xx-4xx answer",
        got=f"HTTP {resp.status_code}",
        resp=resp,
    )
    if resp.status_code >= 400 and resp.request.method != "HEAD":
        try:
            body = resp.json()
        except ValueError:
            body = None
        etl_expect.that(
            isinstance(body, dict)
            and body.get("status") == "error"
            and isinstance(body.get("code"), str),
            what=f"HTTP {resp.status_code} answer has the contract error body",
            expected='{"status": "error", "code": ..., ...}',
            got=resp.text[:200],
            resp=resp,
        )
    if resp.status_code in (200, 201) and resp.request.url.path == "/api/jobs":
        # a generated body that happened to be a valid job: do not leave it running
        try:
            job_id = resp.json().get("job_id")
        except (ValueError, AttributeError):
            job_id = None
        if isinstance(job_id, str):
            etl_api.put(f"/api/jobs/{quote(job_id, safe='')}", json={"status": "cancelled"})


@FUZZ_SETTINGS
@given(method=methods, path=paths, body=bodies, ctype=content_types)
def test_malformed_requests_never_give_5xx(  # noqa: PLR0917 - fixtures and @given arguments
    etl_api: Any, etl_expect: Any, method: str, path: str, body: Any, ctype: str
) -> None:
    """Validate error handling and reporting: arbitrary methods, paths and bodies get no 5xx."""
    if unquote(path).startswith(EXCLUDED):
        return
    _check(etl_api, etl_expect, _send(etl_api, method, path, body, ctype))


@FUZZ_SETTINGS
@given(
    fields=job_fields,
    extra=st.dictionaries(text_values, json_values, max_size=3),
    method=st.sampled_from(["POST", "PUT"]),
    job_id=segment,
)
def test_malformed_job_bodies_never_give_5xx(  # noqa: PLR0917 - fixtures and @given arguments
    etl_api: Any,
    etl_expect: Any,
    fields: dict[str, Any],
    extra: dict[str, Any],
    method: str,
    job_id: str,
) -> None:
    """Validate error handling and reporting: wrong field types in job bodies get 4xx, never 5xx."""
    path = "/api/jobs" if method == "POST" else f"/api/jobs/{job_id}"
    body = {**extra, **fields}
    _check(etl_api, etl_expect, _send(etl_api, method, path, ("json", body), "application/json"))


def test_unknown_methods_get_a_json_error(etl_api: Any, etl_expect: Any) -> None:
    """Validate error handling and reporting: unknown methods get a 4xx JSON error, not 5xx/drop."""
    problems, last_bad = [], None
    for path in ("/api/jobs", "/api/health"):
        for method in UNKNOWN_METHODS:
            resp = etl_api.request(method, path)
            try:
                body = resp.json()
            except ValueError:
                body = None
            json_error = isinstance(body, dict) and body.get("status") == "error"
            if resp.status_code >= 500 or resp.status_code < 400 or not json_error:
                ctype = resp.headers.get("content-type", "no content-type")
                problems.append(f"{method} {path}: HTTP {resp.status_code} {ctype}")
                last_bad = resp
    etl_expect.that(
        not problems,
        what=f"{len(UNKNOWN_METHODS)} unknown methods on /api/jobs and /api/health",
        expected="a 4xx answer with the contract JSON error body (405 METHOD_NOT_ALLOWED)",
        got=f"{len(problems)} bad: " + "; ".join(problems),
        resp=last_bad,
    )
