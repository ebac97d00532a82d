"""Pre-deployment 4. Rollback Procedures: the rollback script is installed, backs up, and works.

`rollback.sh full` (restart) belongs to the rollback suite; here: backup, partial rollback of one
component (then the original flags are restored), health, and refusal of a bad component.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from etlverify.client import Expect
    from etlverify.deployment import FlagsEditor, OpsRunner

    from .support import Backup

pytestmark = [pytest.mark.pre_deploy, pytest.mark.functional]


@pytest.mark.checklist("pre.4_rollback_procedures.install_rollback_script")
def test_rollback_script_installed(etl_deploy_root: Path, etl_expect: Expect) -> None:
    """deployment/rollback.sh exists and is executable."""
    script = etl_deploy_root / "deployment" / "rollback.sh"
    etl_expect.that(
        script.is_file(), "deployment/rollback.sh exists", expected=str(script), got="missing"
    )
    etl_expect.that(
        os.access(script, os.X_OK),
        "deployment/rollback.sh is executable",
        expected="mode +x",
        got=oct(script.stat().st_mode & 0o777),
    )


@pytest.mark.checklist("pre.1_environment_setup.update_deployment_scripts")
def test_scripts_point_at_this_deployment(etl_ops: OpsRunner, etl_expect: Expect) -> None:
    """`rollback.sh health` finds the running, healthy service (the scripts' paths are right)."""
    proc = etl_ops.rollback("health", timeout=60)
    etl_expect.that(
        proc.returncode == 0,
        "`rollback.sh health` exit code",
        expected=0,
        got=f"{proc.returncode}: {(proc.stdout + proc.stderr).strip()[-300:]}",
    )


@pytest.mark.checklist("pre.4_rollback_procedures.backup_creation_functionality")
def test_backup_creates_a_new_folder(
    fresh_backup: Backup, etl_deploy_root: Path, etl_expect: Expect
) -> None:
    """`rollback.sh backup` makes a new folder under backups/ with a manifest, named last."""
    etl_expect.that(
        fresh_backup.path.parent.resolve() == (etl_deploy_root / "backups").resolve(),
        "backup folder is under backups/",
        expected=str(etl_deploy_root / "backups"),
        got=str(fresh_backup.path),
    )
    etl_expect.that(
        (fresh_backup.path / "MANIFEST.sha256").is_file(),
        "backup has MANIFEST.sha256",
        expected="present",
        got="missing",
    )


def _flags(root: Path) -> dict[str, dict[str, object]]:
    data = json.loads((root / "config" / "feature_flags.json").read_text(encoding="utf-8"))
    return {"flags": dict(data["flags"]), "rollout": dict(data["rollout_percentages"])}


@pytest.mark.destructive
@pytest.mark.checklist("pre.4_rollback_procedures.rollback_script_staging")
def test_partial_rollback_turns_off_one_component(
    etl_ops: OpsRunner, etl_flags: FlagsEditor, etl_deploy_root: Path, etl_expect: Expect
) -> None:
    """`partial logger`: new_logger_system off and at 0, the others untouched, the server reloads
    it, and the service stays healthy. The original flags are restored afterwards."""
    etl_flags.set(
        {"new_logger_system": True, "new_exception_system": True},
        {"new_logger_system": 25, "new_exception_system": 25},
    )
    proc = etl_ops.rollback("partial", "logger", timeout=120)
    etl_expect.that(
        proc.returncode == 0,
        "`rollback.sh partial logger` exit code",
        expected=0,
        got=f"{proc.returncode}: {(proc.stdout + proc.stderr).strip()[-300:]}",
    )
    state = _flags(etl_deploy_root)
    etl_expect.that(
        state["flags"]["new_logger_system"] is False and state["rollout"]["new_logger_system"] == 0,
        "partial logger: new_logger_system off and at 0",
        expected={"flag": False, "rollout": 0},
        got={
            "flag": state["flags"]["new_logger_system"],
            "rollout": state["rollout"]["new_logger_system"],
        },
    )
    etl_expect.that(
        state["flags"]["new_exception_system"] is True
        and state["rollout"]["new_exception_system"] == 25,
        "partial logger leaves the other components untouched",
        expected={"new_exception_system": True, "rollout": 25},
        got={
            "new_exception_system": state["flags"]["new_exception_system"],
            "rollout": state["rollout"]["new_exception_system"],
        },
    )
    raw = (etl_deploy_root / "config" / "feature_flags.json").read_bytes()
    etl_flags.wait_loaded(hashlib.sha256(raw).hexdigest())
    health = etl_ops.rollback("health", timeout=60)
    etl_expect.that(
        health.returncode == 0,
        "`rollback.sh health` after the partial rollback",
        expected=0,
        got=health.returncode,
    )


@pytest.mark.deployment_state
@pytest.mark.checklist("pre.4_rollback_procedures.rollback_script_staging")
@pytest.mark.parametrize(
    "args",
    [("partial", "no_such_component"), ("partial",)],
    ids=["unknown-component", "missing-component"],
)
def test_partial_rollback_rejects_a_bad_component(
    etl_ops: OpsRunner, etl_deploy_root: Path, etl_expect: Expect, args: tuple[str, ...]
) -> None:
    """An unknown or missing component is an error (non-zero exit) and changes no flag."""
    flags_file = etl_deploy_root / "config" / "feature_flags.json"
    before = flags_file.read_bytes()
    proc = etl_ops.rollback(*args, timeout=60)
    etl_expect.that(
        proc.returncode != 0,
        f"`rollback.sh {' '.join(args)}` exits non-zero",
        expected="non-zero",
        got=proc.returncode,
    )
    etl_expect.that(
        flags_file.read_bytes() == before,
        "a rejected rollback changes no flag",
        expected="feature_flags.json unchanged",
        got="changed",
    )
