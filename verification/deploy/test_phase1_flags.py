"""Phase 1.3 Feature Flag Deployment: flags loaded, all disabled, the flag API answers."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import pytest

from etlverify.contract import FLAG_NAMES, KNOWN_BUCKETS, fnv1a_bucket

if TYPE_CHECKING:
    from pathlib import Path

    from etlverify.client import EtlClient, Expect

pytestmark = [pytest.mark.deploy, pytest.mark.functional, pytest.mark.deployment_state]


@pytest.mark.checklist("deploy.phase1.1_3_feature_flag.feature_flag_loading")
def test_flags_loaded(etl_deploy_root: Path, etl_api: EtlClient, etl_expect: Expect) -> None:
    """GET /api/flags serves the deployed file: same sha256, same maps, a load time."""
    raw = (etl_deploy_root / "config" / "feature_flags.json").read_bytes()
    resp = etl_expect.status(etl_api.get("/api/flags"), 200)
    body = etl_expect.json_fields(
        resp, {"flags": dict, "rollout_percentages": dict, "sha256": str, "loaded_at": str}
    )
    etl_expect.that(
        body["sha256"] == hashlib.sha256(raw).hexdigest(),
        "flags sha256",
        expected=hashlib.sha256(raw).hexdigest(),
        got=body["sha256"],
        resp=resp,
    )
    data = json.loads(raw)
    etl_expect.that(
        body["rollout_percentages"] == data["rollout_percentages"],
        "served rollout percentages equal the file",
        expected=data["rollout_percentages"],
        got=body["rollout_percentages"],
        resp=resp,
    )


@pytest.mark.checklist("deploy.phase1.1_3_feature_flag.confirm_features_start")
def test_all_features_start_disabled(etl_api: EtlClient, etl_expect: Expect) -> None:
    """Every flag is off at 0%, no user gets a feature, and X-Feature-Flags is empty."""
    resp = etl_expect.status(etl_api.get("/api/flags"), 200)
    body = etl_expect.json_fields(resp, {"flags": dict, "rollout_percentages": dict})
    etl_expect.that(
        set(FLAG_NAMES) <= set(body["flags"]),
        "all six flags are served",
        expected=sorted(FLAG_NAMES),
        got=sorted(body["flags"]),
        resp=resp,
    )
    on = {k: v for k, v in body["flags"].items() if v is not False}
    etl_expect.that(not on, "all flags disabled", expected="all false", got=on, resp=resp)
    rolled = {k: v for k, v in body["rollout_percentages"].items() if v != 0}
    etl_expect.that(not rolled, "all rollouts at 0", expected="all 0", got=rolled, resp=resp)
    user = etl_api.get("/api/flags/users/user1")
    active = etl_expect.json_fields(etl_expect.status(user, 200), {"active": dict})["active"]
    etl_expect.that(
        not any(active.values()),
        "no feature active for user1",
        expected="all false",
        got=active,
        resp=user,
    )
    health = etl_api.get("/api/health", headers={"X-User-Id": "user1"})
    etl_expect.that(
        "x-feature-flags" in health.headers and health.headers["x-feature-flags"] == "",
        "X-Feature-Flags is present and empty",
        expected="''",
        got=health.headers.get("x-feature-flags", "header missing"),
        resp=health,
    )


@pytest.mark.checklist("deploy.phase1.1_3_feature_flag.feature_flag_api")
@pytest.mark.parametrize("user_id", sorted(u for u in KNOWN_BUCKETS if u))  # "" has no URL
def test_flag_user_endpoint_buckets(etl_api: EtlClient, etl_expect: Expect, user_id: str) -> None:
    """GET /api/flags/users/{id} gives the contract's FNV-1a bucket and an entry per flag."""
    assert fnv1a_bucket(user_id) == KNOWN_BUCKETS[user_id]  # the suite's own arithmetic
    resp = etl_expect.status(etl_api.get(f"/api/flags/users/{user_id}"), 200)
    body = etl_expect.json_fields(resp, {"user_id": str, "bucket": (int, float), "active": dict})
    etl_expect.that(
        body["user_id"] == user_id,
        "user_id echoed",
        expected=user_id,
        got=body["user_id"],
        resp=resp,
    )
    etl_expect.that(
        abs(body["bucket"] - KNOWN_BUCKETS[user_id]) < 0.005,
        "FNV-1a bucket",
        expected=KNOWN_BUCKETS[user_id],
        got=body["bucket"],
        resp=resp,
    )
    etl_expect.that(
        set(FLAG_NAMES) <= set(body["active"]),
        "an active entry per flag",
        expected=sorted(FLAG_NAMES),
        got=sorted(body["active"]),
        resp=resp,
    )


@pytest.mark.checklist("deploy.phase1.1_3_feature_flag.feature_flag_api")
def test_flag_bucket_matches_fnv1a_for_other_users(etl_api: EtlClient, etl_expect: Expect) -> None:
    """Buckets of arbitrary ids (unicode included) follow the same formula."""
    for user_id in ("etlv-user", "Zoë", "12345", "a_very_long_user_identifier_0123456789"):
        resp = etl_expect.status(etl_api.get(f"/api/flags/users/{user_id}"), 200)
        body = etl_expect.json_fields(resp, {"bucket": (int, float)})
        etl_expect.that(
            abs(body["bucket"] - fnv1a_bucket(user_id)) < 0.005,
            f"FNV-1a bucket of {user_id!r}",
            expected=fnv1a_bucket(user_id),
            got=body["bucket"],
            resp=resp,
        )
