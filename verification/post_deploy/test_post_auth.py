"""Post-deployment functional testing: authentication refuses what it must (contract section 5).

Checklist "1. Functional Testing": "Validate error handling and reporting" (the 401 answers).
Whether the target has authentication on is detected: `GET /api/auth/profile` without a token
answers 401. Against a target with it off, the destructive test turns `auth.enabled` on through
`etl_config`, when the target applies that without a restart.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from .support import wait_until

if TYPE_CHECKING:
    import httpx

ITEM = "post.1_functional_testing.validate_error_handling"

pytestmark = [pytest.mark.post_deploy, pytest.mark.functional, pytest.mark.checklist(ITEM)]

PROTECTED = [
    ("GET", "/api/jobs"),
    ("POST", "/api/jobs"),
    ("GET", "/api/jobs/etlv_any/status"),
    ("GET", "/api/monitor/status"),
    ("GET", "/api/flags"),
    ("GET", "/api/auth/profile"),
]
OPEN = [("GET", "/api/health"), ("GET", "/api/health/status")]
MALFORMED = [
    "Bearer",
    "Bearer not-a-real-token",
    "bearer x",
    "Basic YWRtaW46YWRtaW4=",
    "Token abc",
    "Bearer " + "A" * 4096,
    "Bearer a.b.c",
]
JOB_BODY = {"type": "EXTRACT", "source_config": "rows=1", "target_config": "sink=memory"}


def _credentials(etl_settings: Any, etl_target: Any) -> tuple[str, str] | None:
    """(username, password) from the environment settings, or the embedded root's admin password."""
    user, password = (
        getattr(etl_settings, "username", None),
        getattr(etl_settings, "password", None),
    )
    if user and password:
        return str(user), str(password)
    root = getattr(etl_target, "deploy_root", None)
    if getattr(etl_target, "embedded", False) and root is not None:
        secret = root / "config" / "initial_admin_password"
        if secret.is_file():
            return "admin", secret.read_text(encoding="utf-8").strip()
    return None


def _send(raw_http: httpx.Client, method: str, path: str, auth: str | None) -> httpx.Response:
    headers = {"Authorization": auth} if auth is not None else {}
    return raw_http.request(
        method, path, headers=headers, json=JOB_BODY if method == "POST" else None
    )


def check_refusals(raw_http: httpx.Client, etl_expect: Any) -> int:
    """Every protected route refuses a missing or malformed token; open routes need none."""
    checked = 0
    for method, path in PROTECTED:
        for auth in (None, *MALFORMED):
            resp = _send(raw_http, method, path, auth)
            etl_expect.error_body(resp, status=401, code="UNAUTHORIZED")
            checked += 1
    for method, path in OPEN:
        resp = _send(raw_http, method, path, None)
        etl_expect.status(resp, 200)
    return checked


def login(raw_http: httpx.Client, etl_expect: Any, creds: tuple[str, str]) -> dict[str, Any]:
    """Log in; the token body."""
    resp = raw_http.post("/api/auth/login", json={"username": creds[0], "password": creds[1]})
    etl_expect.status(resp, 200)
    return dict(
        etl_expect.json_fields(
            resp, {"token": str, "token_type": str, "expires_in": (int, float), "username": str}
        )
    )


def check_revocation(raw_http: httpx.Client, etl_expect: Any, creds: tuple[str, str]) -> None:
    """Bad credentials are 401; a token works until logout and is refused after it."""
    bad = raw_http.post(
        "/api/auth/login", json={"username": creds[0], "password": "wrong-" + "x" * 8}
    )
    etl_expect.error_body(bad, status=401, code="UNAUTHORIZED")
    token = login(raw_http, etl_expect, creds)["token"]
    bearer = f"Bearer {token}"
    profile = _send(raw_http, "GET", "/api/auth/profile", bearer)
    etl_expect.status(profile, 200)
    etl_expect.json_fields(profile, {"user_id": str, "username": str, "roles": list})
    etl_expect.status(raw_http.post("/api/auth/logout", headers={"Authorization": bearer}), 200)
    for method, path in PROTECTED:
        etl_expect.error_body(
            _send(raw_http, method, path, bearer),
            status=401,
            code={"UNAUTHORIZED", "TOKEN_EXPIRED"},
        )


def test_protected_routes_refuse_missing_and_malformed_tokens(
    auth_enabled: bool, raw_http: httpx.Client, etl_expect: Any
) -> None:
    """Validate error handling and reporting: with auth on, no or a malformed token is 401."""
    if not auth_enabled:
        pytest.skip(
            "authentication is off on the target (GET /api/jobs without a token is not 401)"
        )
    check_refusals(raw_http, etl_expect)


def test_revoked_token_is_refused(
    auth_enabled: bool, raw_http: httpx.Client, etl_expect: Any, etl_settings: Any, etl_target: Any
) -> None:
    """Validate error handling and reporting: with auth on, a token used after logout is 401."""
    if not auth_enabled:
        pytest.skip(
            "authentication is off on the target (GET /api/jobs without a token is not 401)"
        )
    creds = _credentials(etl_settings, etl_target)
    if creds is None:
        pytest.skip("no credentials: set ETLPLUS_USERNAME and ETLPLUS_PASSWORD")
    check_revocation(raw_http, etl_expect, creds)


def test_expired_token_needs_short_ttl(auth_enabled: bool) -> None:
    """Validate error handling and reporting: expired tokens (see the destructive test)."""
    if not auth_enabled:
        pytest.skip(
            "authentication is off on the target: see test_auth_switched_on_live_refuses_bad_tokens"
        )
    pytest.skip(
        "an expired token needs a short auth.token_ttl_s: checked by the destructive "
        "test_expired_token_is_token_expired (etl_config)"
    )


def _enable_auth(
    etl_config: Any, raw_http: httpx.Client, etl_settings: Any, ttl: float | None
) -> None:
    patch: dict[str, Any] = {"enabled": True}
    if ttl is not None:
        patch["token_ttl_s"] = ttl
    etl_config.update({"auth": patch})
    timeout = float(getattr(etl_settings, "reload_timeout", 15.0))
    if not wait_until(lambda: raw_http.get("/api/auth/profile").status_code == 401, timeout):
        pytest.skip(
            f"auth.enabled=true was loaded (config sha256 shown) but not applied within "
            f"{timeout:g} s: "
            "this target needs a restart for it"
        )


@pytest.mark.destructive
@pytest.mark.usefixtures("etl_exclusive")
def test_auth_switched_on_live_refuses_bad_tokens(
    *,
    auth_enabled: bool,
    raw_http: httpx.Client,
    etl_expect: Any,
    etl_config: Any,
    etl_settings: Any,
    etl_target: Any,
) -> None:
    """Validate error handling and reporting: auth switched on live refuses bad tokens."""
    if auth_enabled:
        pytest.skip("authentication is already on: checked without changing the config above")
    _enable_auth(etl_config, raw_http, etl_settings, None)
    check_refusals(raw_http, etl_expect)
    creds = _credentials(etl_settings, etl_target)
    if creds is None:
        pytest.skip(
            "refusals checked; no credentials for the revocation check (ETLPLUS_USERNAME/PASSWORD)"
        )
    check_revocation(raw_http, etl_expect, creds)


@pytest.mark.destructive
@pytest.mark.usefixtures("etl_exclusive")
def test_expired_token_is_token_expired(
    raw_http: httpx.Client, etl_expect: Any, etl_config: Any, etl_settings: Any, etl_target: Any
) -> None:
    """Validate error handling and reporting: a token past auth.token_ttl_s is 401 TOKEN_EXPIRED."""
    creds = _credentials(etl_settings, etl_target)
    if creds is None:
        pytest.skip("no credentials: set ETLPLUS_USERNAME and ETLPLUS_PASSWORD")
    _enable_auth(etl_config, raw_http, etl_settings, 2)
    body = login(raw_http, etl_expect, creds)
    if body["expires_in"] > 5:
        pytest.skip(
            f"auth.token_ttl_s=2 is not applied without a restart (login says expires_in="
            f"{body['expires_in']})"
        )
    time.sleep(float(body["expires_in"]) + 1.0)
    resp = _send(raw_http, "GET", "/api/auth/profile", f"Bearer {body['token']}")
    etl_expect.error_body(resp, status=401, code="TOKEN_EXPIRED")
