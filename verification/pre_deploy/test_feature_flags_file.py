"""Pre-deployment 2. Feature Flag Configuration: the flags file is valid, all off, loaded."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.contract import FLAG_NAMES

if TYPE_CHECKING:
    from pathlib import Path

    from etlverify.client import EtlClient, Expect

pytestmark = [pytest.mark.pre_deploy, pytest.mark.functional, pytest.mark.deployment_state]


def _flags_file(root: Path) -> Path:
    return root / "config" / "feature_flags.json"


def _load(root: Path, expect: Expect) -> dict[str, Any]:
    path = _flags_file(root)
    expect.that(
        path.is_file(), "config/feature_flags.json exists", expected=str(path), got="missing"
    )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise expect.fail(
            "config/feature_flags.json is valid JSON", expected="JSON", got=str(exc)
        ) from None
    expect.that(
        isinstance(data, dict),
        "feature_flags.json is a JSON object",
        expected="object",
        got=type(data).__name__,
    )
    return data


@pytest.mark.checklist("pre.2_feature_flag.feature_flag_syntax")
def test_flags_file_syntax(etl_deploy_root: Path, etl_expect: Expect) -> None:
    """`flags` maps each of the six names to a boolean, `rollout_percentages` to 0-100."""
    data = _load(etl_deploy_root, etl_expect)
    flags, rollout = data.get("flags"), data.get("rollout_percentages")
    etl_expect.that(
        isinstance(flags, dict) and isinstance(rollout, dict),
        "feature_flags.json has the maps `flags` and `rollout_percentages`",
        expected="two objects",
        got=sorted(data),
    )
    assert isinstance(flags, dict)
    assert isinstance(rollout, dict)
    etl_expect.that(
        set(flags) == set(FLAG_NAMES), "flag names", expected=sorted(FLAG_NAMES), got=sorted(flags)
    )
    etl_expect.that(
        set(rollout) <= set(FLAG_NAMES),
        "rollout names are known flags",
        expected=sorted(FLAG_NAMES),
        got=sorted(rollout),
    )
    bad_flags = {k: v for k, v in flags.items() if not isinstance(v, bool)}
    etl_expect.that(not bad_flags, "flag values are booleans", expected="true/false", got=bad_flags)
    bad_rollout = {
        k: v
        for k, v in rollout.items()
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100
    }
    etl_expect.that(
        not bad_rollout,
        "rollout percentages are numbers in 0-100",
        expected="0-100",
        got=bad_rollout,
    )


@pytest.mark.checklist("pre.2_feature_flag.create_feature_flags")
def test_flags_file_all_disabled(etl_deploy_root: Path, etl_expect: Expect) -> None:
    """Every feature is disabled (flag false, rollout 0): the safe state to deploy with."""
    data = _load(etl_deploy_root, etl_expect)
    on = {k: v for k, v in dict(data.get("flags") or {}).items() if v is not False}
    etl_expect.that(not on, "all flags false", expected="all false", got=on)
    rolled = {k: v for k, v in dict(data.get("rollout_percentages") or {}).items() if v != 0}
    etl_expect.that(not rolled, "all rollout percentages 0", expected="all 0", got=rolled)


@pytest.mark.checklist("pre.2_feature_flag.feature_flag_loading")
def test_flags_file_is_the_one_loaded(
    etl_deploy_root: Path, etl_api: EtlClient, etl_expect: Expect
) -> None:
    """The server has loaded exactly this file: GET /api/flags sha256 and maps match it."""
    raw = _flags_file(etl_deploy_root).read_bytes()
    data = _load(etl_deploy_root, etl_expect)
    resp = etl_expect.status(etl_api.get("/api/flags"), 200)
    body = etl_expect.json_fields(
        resp, {"flags": dict, "rollout_percentages": dict, "sha256": str, "loaded_at": str}
    )
    etl_expect.that(
        body["sha256"] == hashlib.sha256(raw).hexdigest(),
        "GET /api/flags sha256 is the sha256 of config/feature_flags.json",
        expected=hashlib.sha256(raw).hexdigest(),
        got=body["sha256"],
        resp=resp,
    )
    etl_expect.that(
        body["flags"] == data["flags"],
        "served flags equal the file",
        expected=data["flags"],
        got=body["flags"],
        resp=resp,
    )
