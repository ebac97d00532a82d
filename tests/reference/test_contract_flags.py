"""Contract section 7 (feature flags): the file, buckets, activation, headers and hot reload."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest
from contract_support import (
    FLAG_NAMES,
    Api,
    LogReader,
    assert_error,
    assert_iso,
    file_sha256,
    poll_until,
    recv_until,
    text_level,
    ws_connect,
)

from etlplus_reference.root import default_flags, write_json_atomic
from etlverify.contract import fnv1a_bucket

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from etlverify.embedded import EmbeddedTarget

pytestmark = pytest.mark.timeout(60)

#: contract §7 known bucket values
KNOWN_BUCKETS = {"user1": 64.51, "user2": 46.62, "alice": 63.25, "bob": 54.58}
RELOAD_S = 0.5  # REFERENCE_OVERRIDES feature_flags.reload_interval_s

#: a mixed file: which of KNOWN_BUCKETS' users each flag admits
MIXED_FLAGS: dict[str, Any] = {
    "flags": {
        "new_logger_system": True,  # 60: user2 (46.62), bob (54.58)
        "new_exception_system": True,  # 100: everyone
        "new_request_handler": False,  # 100 but off: no one
        "new_websocket_manager": True,  # 0: no one
        "new_concurrency_patterns": True,  # 50: user2 only
        "new_type_system": True,  # 64.52: all four (user1 64.51 is just below)
    },
    "rollout_percentages": {
        "new_logger_system": 60,
        "new_exception_system": 100,
        "new_request_handler": 100,
        "new_websocket_manager": 0,
        "new_concurrency_patterns": 50,
        "new_type_system": 64.52,
    },
}
EXPECTED_ACTIVE: dict[str, set[str]] = {
    "user1": {"new_exception_system", "new_type_system"},
    "user2": {
        "new_logger_system",
        "new_exception_system",
        "new_concurrency_patterns",
        "new_type_system",
    },
    "alice": {"new_exception_system", "new_type_system"},
    "bob": {"new_logger_system", "new_exception_system", "new_type_system"},
}


def _flags_file(target: EmbeddedTarget) -> Path:
    return target.root / "config" / "feature_flags.json"


def _write_and_wait(api: Api, target: EmbeddedTarget, data: dict[str, Any]) -> dict[str, Any]:
    """Write the flags file and wait until /api/flags reports its hash."""
    path = _flags_file(target)
    write_json_atomic(path, data)
    sha = file_sha256(path)

    def loaded() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get_json("/api/flags")
        return body if body["sha256"] == sha else None

    result: dict[str, Any] = poll_until(loaded, timeout=RELOAD_S + 3, what="flags reload")
    return result


@pytest.fixture
def safe_flags(reference: EmbeddedTarget, api: Api) -> Iterator[None]:
    """Restore the safe flags file after the test (and wait for the server to take it)."""
    yield
    _write_and_wait(api, reference, default_flags())


def test_default_flags_are_safe(api: Api, reference: EmbeddedTarget) -> None:
    """§7: GET /api/flags gives both maps (all false / 0 after init), sha256 and loaded_at."""
    body = api.get_json("/api/flags")
    assert body["flags"] == dict.fromkeys(FLAG_NAMES, False), body
    assert set(body["rollout_percentages"]) == set(FLAG_NAMES), body
    assert all(v == 0 for v in body["rollout_percentages"].values()), body
    assert body["sha256"] == file_sha256(_flags_file(reference)), body
    assert_iso(body["loaded_at"])


@pytest.mark.parametrize(("user", "bucket"), sorted(KNOWN_BUCKETS.items()))
def test_user_bucket_known_values(api: Api, user: str, bucket: float) -> None:
    """§7: the FNV-1a bucket of the contract's known user ids, via /api/flags/users/{id}."""
    body = api.get_json(f"/api/flags/users/{user}")
    assert body["user_id"] == user, body
    assert isinstance(body["bucket"], int | float), body
    assert body["bucket"] == pytest.approx(bucket, abs=1e-9), body
    assert body["active"] == dict.fromkeys(FLAG_NAMES, False), body


def test_user_bucket_utf8(api: Api) -> None:
    """§7: the bucket hashes the user id's UTF-8 bytes (a non-ASCII id), in [0, 100)."""
    user = "jürgen-ñ-😀"
    body = api.get_json(f"/api/flags/users/{user}")
    assert body["user_id"] == user, body
    assert body["bucket"] == pytest.approx(fnv1a_bucket(user), abs=1e-9), body
    assert 0 <= body["bucket"] < 100


@pytest.mark.usefixtures("safe_flags")
def test_activation_rule(api: Api, reference: EmbeddedTarget) -> None:
    """§7: active iff the flag is on and the bucket is below the percentage (100 all, 0 none)."""
    body = _write_and_wait(api, reference, MIXED_FLAGS)
    assert body["flags"] == MIXED_FLAGS["flags"], body
    for name, pct in MIXED_FLAGS["rollout_percentages"].items():
        assert body["rollout_percentages"][name] == pytest.approx(pct), body
    for user, expected in EXPECTED_ACTIVE.items():
        got = api.get_json(f"/api/flags/users/{user}")["active"]
        assert set(got) == set(FLAG_NAMES), got
        assert {n for n, on in got.items() if on} == expected, (user, got)


@pytest.mark.usefixtures("safe_flags")
def test_feature_flags_header(api: Api, reference: EmbeddedTarget) -> None:
    """§7: a request with X-User-Id gets X-Feature-Flags: the comma-separated active names."""
    _write_and_wait(api, reference, MIXED_FLAGS)
    for user, expected in EXPECTED_ACTIVE.items():
        r = api.get("/api/health", headers={"X-User-Id": user})
        assert "X-Feature-Flags" in r.headers, f"no X-Feature-Flags for {user}"
        names = {n.strip() for n in r.headers["X-Feature-Flags"].split(",") if n.strip()}
        assert names == expected, (user, r.headers["X-Feature-Flags"])
    r = api.get("/api/jobs", headers={"X-User-Id": "user1"})
    assert "X-Feature-Flags" in r.headers


def test_feature_flags_header_empty_when_none(api: Api) -> None:
    """§7: with no flag active the X-Feature-Flags header is present and empty."""
    r = api.get("/api/health", headers={"X-User-Id": "alice"})
    assert r.headers.get("X-Feature-Flags") == "", dict(r.headers)


@pytest.mark.usefixtures("safe_flags")
def test_hot_reload_within_interval(api: Api, reference: EmbeddedTarget) -> None:
    """§7: a changed file is applied within reload_interval_s (0.5 s here, plus slack)."""
    before = api.get_json("/api/flags")
    data = default_flags()
    data["flags"]["new_logger_system"] = True
    data["rollout_percentages"]["new_logger_system"] = 100
    path = _flags_file(reference)
    write_json_atomic(path, data)
    t0 = time.monotonic()
    sha = file_sha256(path)
    poll_until(
        lambda: api.get_json("/api/flags")["sha256"] == sha, timeout=RELOAD_S + 3, interval=0.05
    )
    elapsed = time.monotonic() - t0
    assert elapsed <= RELOAD_S + 1.0, f"reload took {elapsed:.2f} s"
    after = api.get_json("/api/flags")
    assert after["flags"]["new_logger_system"] is True
    assert after["loaded_at"] != before["loaded_at"]
    assert api.get_json("/api/flags/users/bob")["active"]["new_logger_system"] is True


@pytest.mark.parametrize(
    "content",
    [
        b"{not json at all",
        b"",
        json.dumps({"flags": {"new_logger_system": "yes"}}).encode(),
        json.dumps(
            {
                "flags": {"new_logger_system": True},
                "rollout_percentages": {"new_logger_system": 150},
            }
        ).encode(),
        json.dumps(["flags"]).encode(),
    ],
    ids=["bad-json", "empty", "non-bool-flag", "percentage-over-100", "not-an-object"],
)
@pytest.mark.usefixtures("safe_flags")
def test_invalid_file_is_rejected(api: Api, reference: EmbeddedTarget, content: bytes) -> None:
    """§7: an invalid flags file: previous flags stay, ERROR logged, system_notification sent."""
    before = api.get_json("/api/flags")
    log = LogReader(reference)
    log.mark()
    with ws_connect(reference) as ws:
        path = _flags_file(reference)
        tmp = path.with_name(".flags.tmp")
        tmp.write_bytes(content)
        tmp.replace(path)
        notes = recv_until(ws, lambda m: m.get("type") == "system_notification", timeout=5)
    note = notes[-1]
    assert isinstance(note["data"].get("event"), str), note
    assert note["data"]["event"], note
    line = log.wait_for(r"\[ERROR\]", timeout=3)
    assert text_level(line) == "ERROR", line
    after = api.get_json("/api/flags")
    assert after["flags"] == before["flags"], after
    assert after["rollout_percentages"] == before["rollout_percentages"], after
    assert after["sha256"] == before["sha256"], after
    assert api.get("/api/health").status_code == 200
    assert api.get_json("/api/flags/users/user2")["active"] == dict.fromkeys(FLAG_NAMES, False)


@pytest.mark.usefixtures("safe_flags")
def test_recovers_after_invalid_file(api: Api, reference: EmbeddedTarget) -> None:
    """§7: after an invalid file, the next valid file is applied."""
    path = _flags_file(reference)
    path.write_bytes(b"{broken")
    time.sleep(RELOAD_S * 2 + 0.2)
    data = default_flags()
    data["flags"]["new_type_system"] = True
    data["rollout_percentages"]["new_type_system"] = 100
    body = _write_and_wait(api, reference, data)
    assert body["flags"]["new_type_system"] is True


def test_unknown_flag_route_is_404(api: Api) -> None:
    """§2/§7: an unknown route below /api/flags is 404 NOT_FOUND."""
    assert_error(api.get("/api/flags/nothing"), 404, "NOT_FOUND")
