"""Contract section 5 (authentication) against the reference target with authentication on."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest
from contract_support import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    Api,
    TargetFactory,
    assert_error,
    start_target,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from etlverify.embedded import EmbeddedTarget

pytestmark = pytest.mark.timeout(60)

PROTECTED = [
    ("GET", "/api/jobs"),
    ("POST", "/api/jobs"),
    ("GET", "/api/jobs/some_job"),
    ("GET", "/api/monitor/status"),
    ("GET", "/api/monitor/metrics"),
    ("GET", "/api/flags"),
    ("GET", "/api/flags/users/alice"),
    ("GET", "/api/auth/profile"),
    ("POST", "/api/auth/logout"),
]
OPEN = [
    "/api/health",
    "/api/health/live",
    "/api/health/ready",
    "/api/health/status",
    "/api/health/metrics",
    "/api/health/jobs",
]


@pytest.fixture(scope="module")
def auth_target() -> Iterator[EmbeddedTarget]:
    """A reference server with authentication on (user `admin`, a known password)."""
    target = start_target(admin_password=ADMIN_PASSWORD)
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def anon(auth_target: EmbeddedTarget) -> Iterator[Api]:
    """A client without a token."""
    with Api(auth_target) as client:
        yield client


def _login(api: Api, username: str = ADMIN_USER, password: str = ADMIN_PASSWORD) -> dict[str, Any]:
    r = api.post("/api/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_login_gives_a_bearer_token(anon: Api) -> None:
    """§5: good credentials give {token, token_type Bearer, expires_in, user_id, username}."""
    body = _login(anon)
    assert isinstance(body["token"], str), body
    assert len(body["token"]) >= 16, body
    assert body["token_type"] == "Bearer", body
    assert isinstance(body["expires_in"], int | float)
    assert not isinstance(body["expires_in"], bool)
    assert 0 < body["expires_in"] <= 3600, body
    assert body["user_id"] not in (None, ""), body
    assert body["username"] == ADMIN_USER, body


def test_login_tokens_are_distinct(anon: Api) -> None:
    """§5: each login issues its own token."""
    assert _login(anon)["token"] != _login(anon)["token"]


@pytest.mark.parametrize(
    ("username", "password"),
    [(ADMIN_USER, "wrong"), ("nobody", ADMIN_PASSWORD), (ADMIN_USER, ""), ("", "")],
)
def test_bad_credentials_are_401(anon: Api, username: str, password: str) -> None:
    """§5: bad credentials give 401 with a contract error body."""
    r = anon.post("/api/auth/login", json={"username": username, "password": password})
    body = assert_error(r, 401, "UNAUTHORIZED")
    assert ADMIN_PASSWORD not in r.text
    assert "token" not in body


def test_login_with_malformed_body_is_4xx(anon: Api) -> None:
    """§2/§5: a login without the fields or with bad JSON is a 4xx error, never a token or a 5xx."""
    for kw in (
        {"json": {}},
        {"json": {"username": ADMIN_USER}},
        {"content": b"{oops"},
        {"json": {"username": 1, "password": ["x"]}},
    ):
        r = anon.post("/api/auth/login", **kw)  # type: ignore[arg-type]
        assert r.status_code in (400, 401), (kw, r.status_code, r.text)
        assert_error(r, r.status_code)


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_routes_need_a_token(anon: Api, method: str, path: str) -> None:
    """§5: with authentication on, a route outside health/login without a token is 401."""
    kw: dict[str, Any] = {}
    if method == "POST" and path == "/api/jobs":
        kw["json"] = {"type": "EXTRACT", "source_config": "rows=1", "target_config": "t"}
    assert_error(anon.request(method, path, **kw), 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    "header", ["Bearer not-a-real-token", "Bearer", "Basic YWRtaW46eA==", "token", "Bearer a b"]
)
def test_bad_token_is_401_unauthorized(anon: Api, header: str) -> None:
    """§5: a bad or malformed Authorization header is 401 UNAUTHORIZED."""
    assert_error(anon.get("/api/jobs", headers={"Authorization": header}), 401, "UNAUTHORIZED")


@pytest.mark.parametrize("path", OPEN)
def test_health_is_open(anon: Api, path: str) -> None:
    """§3/§5: health routes need no authentication."""
    assert anon.get(path).status_code == 200


def test_token_opens_protected_routes(anon: Api, auth_target: EmbeddedTarget) -> None:
    """§5: a valid token gives access to jobs, monitor and flags."""
    token = _login(anon)["token"]
    with Api(auth_target, token=token) as api:
        job_id = api.create_job()
        assert api.job(job_id)["jobId"] == job_id
        assert api.get("/api/jobs").status_code == 200
        assert api.get("/api/monitor/status").status_code == 200
        assert api.get("/api/flags").status_code == 200


def test_profile(anon: Api, auth_target: EmbeddedTarget) -> None:
    """§5: GET /api/auth/profile gives {user_id, username, roles} for the token's user."""
    login = _login(anon)
    with Api(auth_target, token=login["token"]) as api:
        body = api.get_json("/api/auth/profile")
    assert body["username"] == ADMIN_USER, body
    assert body["user_id"] == login["user_id"], (body, login)
    assert isinstance(body["roles"], list), body
    assert all(isinstance(r, str) for r in body["roles"]), body
    assert "admin" in body["roles"], body


def test_logout_revokes_the_token(anon: Api, auth_target: EmbeddedTarget) -> None:
    """§5: after POST /api/auth/logout the token gives 401; another token stays valid."""
    token = _login(anon)["token"]
    other = _login(anon)["token"]
    with Api(auth_target, token=token) as api:
        assert api.get("/api/auth/profile").status_code == 200
        r = api.post("/api/auth/logout")
        assert r.status_code in (200, 204), r.text
        assert_error(api.get("/api/auth/profile"), 401, "UNAUTHORIZED")
        assert_error(api.get("/api/jobs"), 401, "UNAUTHORIZED")
    with Api(auth_target, token=other) as api:
        assert api.get("/api/auth/profile").status_code == 200


def test_expired_token_is_token_expired(make_target: TargetFactory) -> None:
    """§5: an expired token gives 401 TOKEN_EXPIRED (not UNAUTHORIZED)."""
    target = make_target({"auth": {"token_ttl_s": 1}}, admin_password=ADMIN_PASSWORD)
    with Api(target) as anon:
        login = _login(anon)
    assert login["expires_in"] <= 1, login
    with Api(target, token=login["token"]) as api:
        time.sleep(1.3)
        assert_error(api.get("/api/jobs"), 401, "TOKEN_EXPIRED")
        assert_error(api.get("/api/auth/profile"), 401, "TOKEN_EXPIRED")


def test_auth_off_by_default(api: Api) -> None:
    """§5: 'when authentication is on': it is off by default, so routes need no token."""
    assert api.get("/api/jobs").status_code == 200


def test_password_not_in_log(anon: Api, auth_target: EmbeddedTarget) -> None:
    """§5: credentials never end up in the server log (good or bad logins)."""
    _login(anon)
    anon.post("/api/auth/login", json={"username": ADMIN_USER, "password": "wrong-Pw-123"})
    time.sleep(0.2)
    log = (auth_target.root / "logs" / "etlplus.log").read_text(encoding="utf-8")
    assert ADMIN_PASSWORD not in log
    assert "wrong-Pw-123" not in log
