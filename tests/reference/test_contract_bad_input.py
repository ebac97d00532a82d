"""Contract section 2, last rule: no input, however malformed, gives a 5xx or a dropped connection.

Property tests (hypothesis, derandomized so that every run tries the same inputs) plus a list of
classic nasty inputs. Any job a random body manages to create is cancelled at once.
"""

from __future__ import annotations

import json
import string
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import pytest
from contract_support import HTTP_TIMEOUT, assert_error, recv_json, ws_connect
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if TYPE_CHECKING:
    from collections.abc import Iterator

    from websockets.sync.client import ClientConnection

    from etlverify.embedded import EmbeddedTarget

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ROUTES = [
    "/api/jobs",
    "/api/jobs/some_job",
    "/api/jobs/some_job/status",
    "/api/jobs/some_job/metrics",
    "/api/health",
    "/api/health/status",
    "/api/monitor/status",
    "/api/auth/login",
    "/api/auth/logout",
    "/api/auth/profile",
    "/api/flags",
    "/api/flags/users/alice",
    "/api/nope",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
NASTY_STRINGS = [
    "' OR '1'='1",
    "1; DROP TABLE jobs; --",
    "<script>alert(1)</script>",
    "../../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%00",
    "\x00\x01\x02",
    "\u202e\ufeff",
    "😀" * 100,
    "A" * 5000,
    "${jndi:ldap://x/a}",
    "{{7*7}}",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
job_field_values = st.one_of(
    json_values,
    st.sampled_from(NASTY_STRINGS),
    st.sampled_from(["EXTRACT", "load", "Full_Etl", "transform", ""]),
    st.text(max_size=1100),
)
job_bodies = st.dictionaries(
    st.sampled_from(["type", "source_config", "target_config", "job_id", "status", "extra"]),
    job_field_values,
    max_size=6,
)


@pytest.fixture(scope="module")
def http(reference: EmbeddedTarget) -> Iterator[httpx.Client]:
    """A client shared by the property tests of this module (one per module, like the server)."""
    with httpx.Client(base_url=reference.base_url, timeout=HTTP_TIMEOUT) as client:
        yield client


def _check(r: httpx.Response) -> None:
    """No 5xx; an error answer is a contract error body; a created job is cancelled."""
    assert r.status_code < 500, (
        f"{r.request.method} {r.request.url.raw_path!r} -> {r.status_code}: {r.text[:300]}"
    )
    if r.status_code >= 400 and r.request.method != "HEAD":
        assert_error(r, r.status_code)


def _cancel_created(http: httpx.Client, r: httpx.Response) -> None:
    if (
        r.request.method == "POST"
        and r.request.url.path == "/api/jobs"
        and r.status_code in (200, 201)
    ):
        job_id = r.json()["job_id"]
        http.put(f"/api/jobs/{quote(job_id, safe='')}", json={"status": "cancelled"})


@FUZZ
@given(body=job_bodies)
def test_random_job_bodies(http: httpx.Client, body: dict[str, Any]) -> None:
    """§2/§4: any JSON object as a job gives 200/201 or a 4xx contract error, never 5xx."""
    r = http.post("/api/jobs", json=body)
    _check(r)
    _cancel_created(http, r)


@FUZZ
@given(body=json_values)
def test_random_json_documents(http: httpx.Client, body: Any) -> None:
    """§2: any JSON document to the JSON routes gives a 4xx or success, never 5xx."""
    for path in ("/api/jobs", "/api/auth/login"):
        r = http.post(path, content=json.dumps(body).encode())
        _check(r)
        _cancel_created(http, r)
    _check(http.put("/api/jobs/some_job", content=json.dumps(body).encode()))


@FUZZ
@given(
    method=st.sampled_from(METHODS),
    route=st.sampled_from(ROUTES),
    body=st.binary(max_size=3000),
    ctype=st.sampled_from(
        [
            "application/json",
            "text/plain",
            "application/octet-stream",
            "multipart/form-data",
            "application/json; charset=latin-1",
            "",
        ]
    ),
)
def test_random_bytes_everywhere(
    http: httpx.Client, method: str, route: str, body: bytes, ctype: str
) -> None:
    """§2: random bytes with any content type and method on any route never give a 5xx."""
    headers = {"Content-Type": ctype} if ctype else {}
    r = http.request(method, route, content=body, headers=headers)
    _check(r)
    _cancel_created(http, r)


@FUZZ
@given(method=st.from_regex(r"[A-Z][A-Z_-]{0,11}", fullmatch=True), route=st.sampled_from(ROUTES))
def test_random_methods(http: httpx.Client, method: str, route: str) -> None:
    """§2: unknown methods give 405 (with Allow) or 404, never 501 or another 5xx."""
    r = http.request(method, route)
    _check(r)
    if r.status_code == 405:
        assert r.headers.get("Allow"), f"405 without Allow for {method} {route}"


@FUZZ
@given(
    segments=st.lists(
        st.one_of(st.text(min_size=1, max_size=40), st.sampled_from(NASTY_STRINGS)),
        min_size=1,
        max_size=4,
    ),
    prefix=st.sampled_from(["/api/", "/api/jobs/", "/api/flags/users/", "/api/health/", "/"]),
    query=st.text(max_size=40),
)
def test_random_paths(http: httpx.Client, segments: list[str], prefix: str, query: str) -> None:
    """§2: any path (traversal, SQL, XSS, unicode, encoded bytes) and query never give a 5xx."""
    path = prefix + "/".join(quote(s, safe="") for s in segments)
    url = httpx.URL(http.base_url.join(path), query=quote(query, safe="=&").encode())
    r = http.get(url)
    _check(r)


@FUZZ
@given(
    name=st.sampled_from(
        [
            "X-Correlation-ID",
            "X-User-Id",
            "X-Forwarded-For",
            "Authorization",
            "Content-Type",
            "Accept",
            "Cookie",
        ]
    ),
    value=st.text(alphabet=string.printable.strip("\r\n\x0b\x0c"), max_size=300),
    route=st.sampled_from(ROUTES),
)
def test_random_header_values(http: httpx.Client, name: str, value: str, route: str) -> None:
    """§2: odd header values (correlation id, user id, forwarded-for, auth) never give a 5xx."""
    _check(http.get(route, headers={name: value.strip()}))


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"type": 1e999, "source_config": "x", "target_config": "y"}',
        b'{"type": NaN, "source_config": "x", "target_config": "y"}',
        b'{"type": "EXTRACT", "source_config": "\xff\xfe", "target_config": "y"}',
        b"\xef\xbb\xbf{}",
        b'{"type": "EXTRACT", "source_config": "a\\u0000b", "target_config": "y"}',
        b'{"type": "EXTRACT", "source_config": "\\ud800", "target_config": "y"}',
        b'{"type": "EXTRACT", "type": "LOAD", "source_config": "x"}',
        b"\x00" * 1000,
        b'{"job_id": "' + b"9" * 10_000 + b'"}',
        b'{"source_config": ' + b"9" * 5000 + b"}",
    ],
    ids=[
        "deep-array",
        "deep-object",
        "huge-float",
        "nan",
        "invalid-utf8",
        "bom",
        "nul-escape",
        "lone-surrogate",
        "duplicate-keys",
        "nul-bytes",
        "long-job-id",
        "huge-int",
    ],
)
def test_nasty_bodies(http: httpx.Client, body: bytes) -> None:
    """§2: classic malformed JSON bodies give a 4xx contract error or success, never 5xx."""
    r = http.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
    _check(r)
    _cancel_created(http, r)
    assert http.get("/api/health").status_code == 200


@pytest.mark.parametrize("value", NASTY_STRINGS)
@pytest.mark.parametrize("field", ["type", "source_config", "target_config", "job_id"])
def test_injection_strings_in_job_fields(http: httpx.Client, field: str, value: str) -> None:
    """§2: SQL/XSS/traversal strings in job fields are data, not a 5xx."""
    body = {"type": "EXTRACT", "source_config": "rows=10;batch=10", "target_config": "t"}
    body[field] = value
    r = http.post("/api/jobs", json=body)
    _check(r)
    _cancel_created(http, r)


def test_sql_injection_is_inert(http: httpx.Client) -> None:
    """§2/§4: an SQL payload as a job id neither fails nor touches the stored jobs."""
    total = http.get("/api/jobs").json()["total"]
    for value in ("x' OR '1'='1", "1; DROP TABLE jobs; --", "' UNION SELECT * FROM jobs --"):
        r = http.get(f"/api/jobs/{quote(value, safe='')}")
        assert_error(r, 404, {"JOB_NOT_FOUND", "NOT_FOUND"})
        _check(http.put(f"/api/jobs/{quote(value, safe='')}", json={"status": "cancelled"}))
    assert http.get("/api/jobs").json()["total"] == total


def test_very_long_url(http: httpx.Client) -> None:
    """§2: an 8 KiB path is answered with a 4xx, not a 5xx or a dropped connection."""
    r = http.get("/api/jobs/" + "a" * 8192)
    _check(r)
    assert r.status_code >= 400


@pytest.fixture(scope="module")
def ws(reference: EmbeddedTarget) -> Iterator[ClientConnection]:
    """One WebSocket shared by the WebSocket property test."""
    with ws_connect(reference) as conn:
        yield conn


@FUZZ
@given(
    message=st.one_of(
        st.text(max_size=200),
        json_values.map(json.dumps),
        st.dictionaries(st.sampled_from(["type", "data"]), json_values).map(json.dumps),
        st.builds(
            lambda d: json.dumps({"type": "subscribe", "data": d}),
            st.dictionaries(
                st.sampled_from(
                    ["jobIds", "messageTypes", "logLevels", "includeSystemNotifications"]
                ),
                json_values,
            ),
        ),
    )
)
def test_random_websocket_messages(ws: ClientConnection, message: str) -> None:
    """§10: any client message gets connection_ack or error_message; the connection stays open."""
    ws.send(message)
    reply = _next_reply(ws)
    if reply["type"] == "error_message":
        assert isinstance(reply["data"].get("error"), str), reply
        assert reply["data"]["error"], reply
    else:
        assert reply["data"]["status"] == "subscribed", reply
    ws.send('{"type": "subscribe", "data": {"messageTypes": ["system_notification"]}}')
    ack = _next_reply(ws)
    assert ack["type"] == "connection_ack", ack


def _next_reply(ws: ClientConnection) -> dict[str, Any]:
    """The next connection_ack or error_message, skipping pushes a random subscription let in."""
    while True:
        msg = recv_json(ws, 5)
        if msg["type"] in ("connection_ack", "error_message"):
            return msg
        assert msg["type"].startswith("job_") or msg["type"] == "system_notification", msg
