"""Checklist 3.4 (type system rollout): typed validation, no type-related 5xx, cost, compatibility.

With `new_type_system` on, the typed request model must keep contract section 4's rules exactly:
`job_id` `^[A-Za-z0-9_-]{1,64}$`, `type` case-insensitive in and lower case out, configs of 1-1024
characters, wrong JSON types a 400 naming the field, and the older routes still answering.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .rollout import (
    TERMINAL,
    check_latency_impact,
    error_body_problems,
    exposed_user,
    new_job_id,
    unexposed_user,
)

if TYPE_CHECKING:
    from .rollout import RolloutChecker

FLAG = "new_type_system"
ITEM = "deploy.phase3.3_4_type_rollout"
FRESH = "<fresh job id>"

pytestmark = [pytest.mark.component, pytest.mark.types, pytest.mark.deploy]


def _users() -> tuple[str, str]:
    return exposed_user(25), unexposed_user(25)


def _body(jobs: Any, **fields: Any) -> dict[str, Any]:
    body = {
        "type": "FULL_ETL",
        "source_config": jobs.profiles["quick"],
        "target_config": "sink=memory",
        "job_id": new_job_id("types"),
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not _ABSENT}


_ABSENT = object()


def _expect_field_error(expect: Any, resp: Any, field: str, what: str) -> None:
    body = expect.error_body(
        resp, status=400, code={"INVALID_INPUT", "MISSING_FIELD", "INVALID_RANGE"}
    )
    context = body.get("context")
    expect.that(
        isinstance(context, dict) and context.get("field") == field,
        what=f"{what}: the 400 names {field} in context.field",
        expected={"field": field},
        got=context,
        resp=resp,
    )


def _accepted(expect: Any, jobs: Any, resp: Any, what: str) -> dict[str, Any]:
    expect.status(resp, (200, 201))
    body: dict[str, Any] = expect.json_fields(resp, {"job_id": str, "status": str, "type": str})
    jobs.created.append(body["job_id"])  # cancelled at teardown if still running
    expect.that(
        body["status"] in {"pending", "scheduled"},
        what=f"{what}: initial status",
        expected="pending or scheduled",
        got=body["status"],
        resp=resp,
    )
    return body


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.enable_type_feature")
def test_type_system_flag_at_25_percent_follows_fnv1a(rollout: RolloutChecker) -> None:
    """3.4 Enable new type system feature flag (25% rollout): exposure follows FNV-1a."""
    rollout.enable(FLAG, 25)


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.monitor_type_related")
def test_job_id_boundaries(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any
) -> None:
    """3.4 Monitor for type-related errors: job_id of 64 chars ok, 65 or bad chars a 400."""
    rollout.set(FLAG, 25)
    for user in _users():
        h = {"X-User-Id": user}
        ok64 = ("etlv_b64_" + uuid.uuid4().hex * 2)[:64]
        ok64 = ok64 + "x" * (64 - len(ok64))
        resp = etl_api.post("/api/jobs", json=_body(etl_jobs, job_id=ok64), headers=h)
        got = _accepted(etl_expect, etl_jobs, resp, f"a 64-character job_id (user {user})")
        etl_expect.that(
            got["job_id"] == ok64,
            what="the 64-character id is kept as given",
            expected=ok64,
            got=got["job_id"],
            resp=resp,
        )
        # a 1-character id can exist from an earlier run: use one that is still free
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
        one = next((c for c in alphabet if etl_api.get(f"/api/jobs/{c}").status_code == 404), None)
        if one is not None:
            resp = etl_api.post("/api/jobs", json=_body(etl_jobs, job_id=one), headers=h)
            _accepted(etl_expect, etl_jobs, resp, f"a 1-character job_id (user {user})")
        bad_ids: list[Any] = [
            ("etlv_b65_" + uuid.uuid4().hex * 2)[:65].ljust(65, "y"),
            "",
            "etlv bad",
            "etlv/bad",
            "etlv.bad",
            "etlv:bad",
            "étlv",
            "etlv\nx",
            "etlv'--",
            "../../etc/passwd",
            12345,
            True,
            ["etlv"],
            {"id": "etlv"},
        ]
        for bad in bad_ids:
            resp = etl_api.post("/api/jobs", json=_body(etl_jobs, job_id=bad), headers=h)
            _expect_field_error(etl_expect, resp, "job_id", f"job_id {bad!r} (user {user})")


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.monitor_type_related")
def test_field_types_and_lengths(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any, etl_settings: Any
) -> None:
    """3.4 Monitor for type-related errors: case, config lengths 1-1024, JSON types."""
    rollout.set(FLAG, 25)
    user = exposed_user(25)
    h = {"X-User-Id": user}
    for jtype in etl_settings.job_types:
        mixed = "".join(c.lower() if i % 2 else c.upper() for i, c in enumerate(jtype))
        for variant in {jtype.upper(), jtype.lower(), mixed}:
            resp = etl_api.post("/api/jobs", json=_body(etl_jobs, type=variant), headers=h)
            got = _accepted(etl_expect, etl_jobs, resp, f"type {variant!r}")
            etl_expect.that(
                got["type"] == jtype.lower(),
                what=f"type {variant!r} is answered in lower case",
                expected=jtype.lower(),
                got=got["type"],
                resp=resp,
            )
    quick = etl_jobs.profiles["quick"]
    long_ok = (quick + ";" + "p" * 1024)[:1024]
    for name in ("source_config", "target_config"):
        for value in ((quick if name == "source_config" else "t"), long_ok):
            resp = etl_api.post("/api/jobs", json=_body(etl_jobs, **{name: value}), headers=h)
            _accepted(etl_expect, etl_jobs, resp, f"{name} of {len(value)} characters")
        for value in ("", long_ok + "p"):
            resp = etl_api.post("/api/jobs", json=_body(etl_jobs, **{name: value}), headers=h)
            _expect_field_error(etl_expect, resp, name, f"{name} of {len(value)} characters")
    wrong_types: list[tuple[str, Any]] = [
        ("type", 1),
        ("type", True),
        ("type", ["FULL_ETL"]),
        ("type", "NOT_A_TYPE"),
        ("source_config", 5),
        ("source_config", {"rows": 1}),
        ("source_config", False),
        ("target_config", 1.5),
        ("target_config", ["t"]),
        ("type", _ABSENT),
        ("source_config", _ABSENT),
        ("target_config", _ABSENT),
    ]
    for name, value in wrong_types:
        resp = etl_api.post("/api/jobs", json=_body(etl_jobs, **{name: value}), headers=h)
        shown = "absent" if value is _ABSENT else repr(value)
        _expect_field_error(etl_expect, resp, name, f"{name} {shown}")


_valid_or_not = {
    "type": st.sampled_from(
        ["FULL_ETL", "extract", "Load", "transform", "nope", "", 7, None, True, ["LOAD"]]
    ),
    "source_config": st.sampled_from(["<quick>", "", "q" * 1025, 3, None, {"a": 1}]),
    "target_config": st.one_of(
        st.text(min_size=1, max_size=40),
        st.just(""),
        st.integers(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    ),
    "job_id": st.sampled_from([FRESH, FRESH, "bad id", "x" * 65, "", 9, None]),
}


def _invalid_fields(body: dict[str, Any], job_types: set[str]) -> set[str]:
    """The fields of `body` that contract section 4 rejects."""
    bad = set()
    if not (isinstance(body.get("type"), str) and body["type"].lower() in job_types):
        bad.add("type")
    for name in ("source_config", "target_config"):
        value = body.get(name)
        if not (isinstance(value, str) and 1 <= len(value) <= 1024):
            bad.add(name)
    job_id = body.get("job_id")
    if job_id is not None and not (
        isinstance(job_id, str)
        and 1 <= len(job_id) <= 64
        and all(c.isascii() and (c.isalnum() or c in "_-") for c in job_id)
    ):
        bad.add("job_id")
    return bad


@pytest.mark.monitoring
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.monitor_type_related")
@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(fields=st.fixed_dictionaries({}, optional=_valid_or_not), user=st.sampled_from(_users()))
def test_typed_inputs_never_cause_5xx(
    *,
    rollout: RolloutChecker,
    etl_api: Any,
    etl_expect: Any,
    etl_jobs: Any,
    etl_settings: Any,
    fields: dict[str, Any],
    user: str,
) -> None:
    """3.4 Monitor for type-related errors: 50 generated bodies, never a 5xx."""
    if not rollout.flags.read().get("flags", {}).get(FLAG):
        rollout.set(FLAG, 25)
    body = dict(fields)
    if body.get("source_config") == "<quick>":
        body["source_config"] = etl_jobs.profiles["quick"]
    if body.get("job_id") == FRESH:
        body["job_id"] = new_job_id("hyp")
    invalid = _invalid_fields(body, {t.lower() for t in etl_settings.job_types})
    resp = etl_api.post("/api/jobs", json=body, headers={"X-User-Id": user})
    etl_expect.that(
        resp.status_code < 500,
        what="a typed input never causes a 5xx",
        expected="HTTP 2xx or 4xx",
        got=f"HTTP {resp.status_code}",
        resp=resp,
    )
    if not invalid:
        _accepted(etl_expect, etl_jobs, resp, f"a valid body {body}")
        return
    etl_expect.status(resp, 400)
    problems = error_body_problems(resp)
    field = resp.json().get("context", {}).get("field") if not problems else None
    etl_expect.that(
        not problems and field in invalid,
        what=f"an invalid body ({', '.join(sorted(invalid))} wrong) is a 400 naming one of them",
        expected=f"a contract error with context.field in {sorted(invalid)}",
        got="; ".join(problems) or f"context.field {field!r}",
        resp=resp,
    )


@pytest.mark.performance
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.performance_impact_strong")
def test_type_system_has_no_gross_latency_cost(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, record_metric: Any
) -> None:
    """3.4 Check performance impact of strong types: validation latency, flag on vs off."""
    check_latency_impact(
        rollout,
        etl_api,
        etl_expect,
        record_metric,
        FLAG,
        path="/api/jobs",
        method="POST",
        ok=(400,),
        label="types_validation",
        body={"type": "NOT_A_TYPE", "source_config": "rows=1", "target_config": "t"},
    )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.compatibility_existing_apis")
def test_existing_routes_answer_as_before(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any
) -> None:
    """3.4 Verify compatibility with existing APIs: /api/monitor/*, job routes, server-made ids."""
    rollout.set(FLAG, 25)
    for user in _users():
        h = {"X-User-Id": user}
        status = etl_expect.json_fields(
            etl_expect.status(etl_api.get("/api/monitor/status", headers=h), 200),
            {"db_connected": bool, "etl_manager_running": bool, "server_status": str},
        )
        etl_expect.that(
            status["server_status"] == "running",
            what=f"/api/monitor/status server_status (user {user})",
            expected="running",
            got=status["server_status"],
        )
        etl_expect.json_fields(
            etl_expect.status(etl_api.get("/api/monitor/metrics", headers=h), 200),
            {"total_jobs": int, "running_jobs": int, "completed_jobs": int, "failed_jobs": int},
        )
        monitor_jobs = etl_expect.json_fields(
            etl_expect.status(etl_api.get("/api/monitor/jobs", headers=h), 200),
            {"jobs": list, "total": int},
        )
        etl_expect.that(
            monitor_jobs["total"] >= len(monitor_jobs["jobs"]),
            what=f"/api/monitor/jobs total counts its jobs (user {user})",
            expected=f">= {len(monitor_jobs['jobs'])}",
            got=monitor_jobs["total"],
        )
        # an older client: upper-case type, no job_id (the server makes one)
        resp = etl_api.post(
            "/api/jobs",
            json={
                "type": "EXTRACT",
                "source_config": etl_jobs.profiles["quick"],
                "target_config": "sink=memory",
            },
            headers=h,
        )
        got = _accepted(etl_expect, etl_jobs, resp, f"a create without job_id (user {user})")
        final = etl_jobs.wait_for(got["job_id"], statuses=TERMINAL, timeout=30.0)
        etl_expect.that(
            final["status"] == "completed" and got["type"] == "extract",
            what=f"a job made the old way runs to completion (user {user})",
            expected="type extract, completed",
            got=f"type {got['type']}, {final['status']}",
        )
        etl_expect.json_fields(
            etl_expect.status(etl_api.get(f"/api/jobs/{got['job_id']}/metrics", headers=h), 200),
            {"jobId": str, "recordsProcessed": int, "successRate": (int, float)},
        )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.increase_rollout_gradually")
def test_type_system_rollout_raised_gradually_to_100(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any
) -> None:
    """3.4 Increase rollout gradually to 100%: 25, 50, 100, exposure + validation each step."""
    for percent in (25, 50, 100):
        rollout.enable(FLAG, percent, sample=200, header_sample=20)
        h = {"X-User-Id": exposed_user(percent)}
        resp = etl_api.post("/api/jobs", json=_body(etl_jobs, type="full_etl"), headers=h)
        _accepted(etl_expect, etl_jobs, resp, f"a valid create at {percent}%")
        resp = etl_api.post("/api/jobs", json=_body(etl_jobs, job_id="bad id"), headers=h)
        _expect_field_error(etl_expect, resp, "job_id", f"a bad job_id at {percent}%")
