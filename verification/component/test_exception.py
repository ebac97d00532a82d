"""Checklist 2.2 (exception system testing) and the exception part of 3.1 (rollout raised to 50%).

With `new_exception_system` at 25%, every error answer, for exposed and unexposed users alike, must
follow contract section 2: the right status for its code, exactly the contract fields, a
correlation id echoed and found in the server log, and a request error counter that counts them.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

from .rollout import (
    check_partial_rollback,
    error_body_problems,
    exposed_user,
    has_cid,
    request_counters,
    unexposed_user,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import httpx

    from .rollout import LogWatcher, RolloutChecker

FLAG = "new_exception_system"
ITEM = "deploy.phase2.2_2_exception_testing"
ONE_MIB = 1 << 20

pytestmark = [pytest.mark.component, pytest.mark.exception, pytest.mark.deploy]


def _users() -> tuple[str, str]:
    return exposed_user(25), unexposed_user(25)


def _error_requests(api: Any, user: str) -> dict[str, Callable[[], httpx.Response]]:
    """Requests that must fail, by name, each sent as `user`."""
    h = {"X-User-Id": user}
    missing = f"etlv_missing_{uuid.uuid4().hex[:8]}"
    huge = b'{"type":"FULL_ETL","source_config":"' + b"x" * ONE_MIB + b'","target_config":"t"}'
    return {
        "unknown job": lambda: api.get(f"/api/jobs/{missing}", headers=h),
        "unknown route": lambda: api.get(
            f"/api/etlv-no-such-route-{uuid.uuid4().hex[:6]}", headers=h
        ),
        "wrong method": lambda: api.delete("/api/health", headers=h),
        "missing field": lambda: api.post(
            "/api/jobs", json={"source_config": "rows=1", "target_config": "t"}, headers=h
        ),
        "malformed JSON": lambda: api.post(
            "/api/jobs",
            content=b'{"type": "FULL_ETL", ',
            headers={**h, "Content-Type": "application/json"},
        ),
        "body over 1 MiB": lambda: api.post(
            "/api/jobs", content=huge, headers={**h, "Content-Type": "application/json"}
        ),
    }


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.enable_exception_feature")
def test_exception_flag_at_25_percent_follows_fnv1a(rollout: RolloutChecker) -> None:
    """2.2 Enable new exception system feature flag (25% rollout): exposure follows FNV-1a."""
    rollout.enable(FLAG, 25)


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.error_handling_exception")
def test_error_codes_map_to_contract_statuses(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any
) -> None:
    """2.2 Test error handling with new exception types: each error has its code and status."""
    rollout.set(FLAG, 25)
    done = etl_jobs.create(profile="quick")
    etl_jobs.wait_for(done, statuses={"completed", "failed"}, timeout=30.0)
    for user in _users():
        reqs = _error_requests(etl_api, user)
        h = {"X-User-Id": user}

        missing = f"etlv_missing_{uuid.uuid4().hex[:8]}"
        resp = etl_api.get(f"/api/jobs/{missing}", headers=h)
        body = etl_expect.error_body(resp, status=404, code="JOB_NOT_FOUND")
        etl_expect.that(
            isinstance(body.get("context"), dict) and body["context"].get("jobId") == missing,
            what=f"JOB_NOT_FOUND names the job in its context (user {user})",
            expected={"jobId": missing},
            got=body.get("context"),
            resp=resp,
        )
        etl_expect.error_body(reqs["unknown route"](), status=404, code="NOT_FOUND")

        resp = reqs["wrong method"]()
        etl_expect.error_body(resp, status=405, code="METHOD_NOT_ALLOWED")
        allow = {m.strip().upper() for m in resp.headers.get("Allow", "").split(",") if m.strip()}
        etl_expect.that(
            "GET" in allow and "DELETE" not in allow,
            what=f"405 carries an Allow header listing the route's methods (user {user})",
            expected="Allow: GET (...)",
            got=resp.headers.get("Allow", "(no Allow header)"),
            resp=resp,
        )

        resp = reqs["missing field"]()
        body = etl_expect.error_body(resp, status=400, code={"MISSING_FIELD", "INVALID_INPUT"})
        etl_expect.that(
            isinstance(body.get("context"), dict) and body["context"].get("field") == "type",
            what=f"a 400 names the missing field in context.field (user {user})",
            expected={"field": "type"},
            got=body.get("context"),
            resp=resp,
        )

        resp = etl_api.put(f"/api/jobs/{done}", json={"status": "cancelled"}, headers=h)
        etl_expect.error_body(resp, status=409, code="INVALID_JOB_STATE")

        etl_expect.error_body(reqs["body over 1 MiB"](), status=413, code="PAYLOAD_TOO_LARGE")


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.error_logging_correlation")
def test_correlation_id_echoed_in_error_answers(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any
) -> None:
    """2.2 Verify error logging and correlation IDs: the request's id comes back."""
    rollout.set(FLAG, 25)
    for user in _users():
        for name, send in _error_requests(etl_api, user).items():
            resp = send()
            sent = resp.request.headers.get("X-Correlation-ID")
            body = etl_expect.json_body(resp)
            got_body = body.get("correlationId") if isinstance(body, dict) else None
            got_header = resp.headers.get("X-Correlation-ID")
            etl_expect.that(
                got_header == sent and got_body == sent,
                what=f"{name} (user {user}) echoes the request's X-Correlation-ID",
                expected=f"header and body correlationId {sent}",
                got=f"header {got_header!r}, body {got_body!r}",
                resp=resp,
            )


@pytest.mark.monitoring
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.error_logging_correlation")
def test_error_correlation_id_in_server_log(
    rollout: RolloutChecker, server_log: LogWatcher, etl_api: Any, etl_expect: Any
) -> None:
    """2.2 Verify error logging and correlation IDs: each error's id is in its server log line."""
    rollout.set(FLAG, 25)
    server_log.mark()
    sent: list[tuple[str, str]] = []
    for user in _users():
        for name, send in _error_requests(etl_api, user).items():
            resp = send()
            etl_expect.that(
                400 <= resp.status_code < 500,
                what=f"{name} (user {user}) is answered with a 4xx",
                expected="HTTP 4xx",
                got=f"HTTP {resp.status_code}",
                resp=resp,
            )
            sent.append((f"{name} (user {user})", resp.request.headers["X-Correlation-ID"]))
    missing = []
    for label, cid in sent:
        line = server_log.wait_for(has_cid(cid), timeout=5.0)
        if line is None:
            missing.append(f"{label}: correlationId={cid}")
    etl_expect.that(
        not missing,
        what=f"every error answer is logged with its correlation id in {server_log.path.name}",
        expected=f"{len(sent)} lines with `correlationId=<id>`",
        got=f"{len(missing)} missing: {missing[:4]}",
    )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.exception_serialization")
def test_error_bodies_have_exactly_contract_fields(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any
) -> None:
    """2.2 Check exception serialization: exactly the six contract fields."""
    rollout.set(FLAG, 25)
    problems: list[str] = []
    last: Any = None
    for user in _users():
        for send in _error_requests(etl_api, user).values():
            last = send()
            problems += [f"user {user}: {p}" for p in error_body_problems(last)]
    etl_expect.that(
        not problems,
        what="every error body is serialized as contract section 2 says",
        expected="exactly {status: 'error', code, message, correlationId (8-32 hex, = header), "
        "timestamp (ISO-8601), context: object}, code matching the HTTP status",
        got=f"{len(problems)} problems: " + "; ".join(problems[:5]),
        resp=last,
    )


@pytest.mark.monitoring
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.monitor_error_rates")
def test_error_counter_counts_exactly_the_errors_caused(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any
) -> None:
    """2.2 Monitor error rates: requests.errors rises by exactly the errors this test caused."""
    rollout.set(FLAG, 25)
    caused = 0
    deltas: list[int] = []
    for _attempt in range(3):  # other workers' traffic can only add errors: retry for exactness
        _, errors_before = request_counters(etl_api, etl_expect)
        caused = 0
        for user in _users():
            for name, send in _error_requests(etl_api, user).items():
                resp = send()
                etl_expect.that(
                    400 <= resp.status_code < 500,
                    what=f"{name} (user {user}) is answered with a 4xx",
                    expected="HTTP 4xx",
                    got=f"HTTP {resp.status_code}",
                    resp=resp,
                )
                caused += 1
        _, errors_after = request_counters(etl_api, etl_expect)
        delta = errors_after - errors_before
        deltas.append(delta)
        etl_expect.that(
            delta >= caused,
            what="/api/health/metrics requests.errors counts every error answer",
            expected=f"a rise of at least {caused}",
            got=f"a rise of {delta} ({errors_before} -> {errors_after})",
        )
        if delta == caused:
            return
    etl_expect.that(
        False,
        what="/api/health/metrics requests.errors counts only error answers",
        expected=f"a rise of exactly {caused} in at least one of 3 attempts",
        got=f"rises of {deltas} (more than caused: successes counted as errors, or concurrent "
        "errors from other traffic every time)",
    )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.rollback_issues_detected")
def test_partial_rollback_of_exception_system(
    rollout: RolloutChecker, etl_ops: Any, etl_expect: Any, etl_deploy_root: Path
) -> None:
    """2.2 Rollback if issues detected: `rollback.sh partial exception` turns only it off."""
    check_partial_rollback(rollout, etl_ops, etl_expect, etl_deploy_root, "exception")


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist("deploy.phase3.3_1_gradual_feature.increase_exception_rollout")
def test_exception_rollout_raised_to_50_percent(rollout: RolloutChecker) -> None:
    """3.1 Increase exception system rollout to 50%: 25% then 50%, exposure follows FNV-1a."""
    rollout.enable(FLAG, 25)
    rollout.enable(FLAG, 50)
