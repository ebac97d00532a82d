"""Fixtures of the pre-deployment suite: one backup made by the deployment's own rollback script."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from etlverify.client import Expect

from .support import Backup

if TYPE_CHECKING:
    from etlverify.deployment import OpsRunner


@pytest.fixture(scope="module")
def fresh_backup(etl_ops: OpsRunner, etl_deploy_root: Path) -> Backup:
    """Run `rollback.sh backup` once per module; the folder is its output's last line."""
    proc = etl_ops.rollback("backup", timeout=120)
    expect = Expect(None, check="rollback.sh backup")
    expect.that(
        proc.returncode == 0,
        "`rollback.sh backup` exit code",
        expected=0,
        got=f"{proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}",
    )
    lines = proc.stdout.strip().splitlines()
    expect.that(
        bool(lines),
        "`rollback.sh backup` prints the backup folder on its last line",
        expected="a path",
        got="no output",
    )
    path = Path(lines[-1].strip())
    if not path.is_absolute():
        path = etl_deploy_root / path
    expect.that(path.is_dir(), "backup folder exists", expected=str(path), got="missing")
    return Backup(path, proc.stdout)
