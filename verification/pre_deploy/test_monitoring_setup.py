"""Pre-deployment 3. Monitoring Setup: the monitoring script is installed, runs, alerts."""

from __future__ import annotations

import json
import os
import re
import time
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from etlverify.client import Expect
    from etlverify.deployment import OpsRunner

# monitor.sh checks the flags are in the safe state: never beside a test that flips them
pytestmark = [pytest.mark.pre_deploy, pytest.mark.monitoring, pytest.mark.deployment_state]


def _config(root: Path) -> dict[str, Any]:
    data = json.loads((root / "config" / "config.json").read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


@pytest.mark.checklist("pre.3_monitoring_setup.install_monitoring_script")
def test_monitoring_script_installed(etl_deploy_root: Path, etl_expect: Expect) -> None:
    """monitoring/monitor.sh exists and is executable."""
    script = etl_deploy_root / "monitoring" / "monitor.sh"
    etl_expect.that(
        script.is_file(), "monitoring/monitor.sh exists", expected=str(script), got="missing"
    )
    etl_expect.that(
        os.access(script, os.X_OK),
        "monitoring/monitor.sh is executable",
        expected="mode +x",
        got=oct(script.stat().st_mode & 0o777),
    )


@pytest.mark.checklist("pre.3_monitoring_setup.monitoring_script_staging")
def test_monitor_check_passes_on_a_healthy_target(
    etl_ops: OpsRunner, etl_deploy_root: Path, etl_expect: Expect
) -> None:
    """`monitor.sh check` exits 0 on a healthy target and appends to logs/alerts_YYYYMMDD.log."""
    before = {p: p.stat().st_size for p in (etl_deploy_root / "logs").glob("alerts_*.log")}
    proc = etl_ops.monitor("check", timeout=60)
    etl_expect.that(
        proc.returncode == 0,
        "`monitor.sh check` exit code on a healthy target",
        expected=0,
        got=f"{proc.returncode}: {proc.stdout.strip()[-400:]}",
    )
    after = {p: p.stat().st_size for p in (etl_deploy_root / "logs").glob("alerts_*.log")}
    grown = [p for p, size in after.items() if size > before.get(p, 0)]
    etl_expect.that(
        bool(grown),
        "`monitor.sh check` appends to logs/alerts_YYYYMMDD.log",
        expected="a new or longer alerts file",
        got=sorted(str(p) for p in after),
    )


@pytest.mark.checklist("pre.3_monitoring_setup.configure_log_rotation")
def test_log_rotation_configured(
    etl_ops: OpsRunner, etl_deploy_root: Path, etl_expect: Expect
) -> None:
    """Alerts go to one file per day, and the server log rotates by size with backups kept."""
    etl_ops.monitor("check", timeout=60)
    names = [p.name for p in (etl_deploy_root / "logs").glob("alerts_*.log")]
    dated = [n for n in names if re.fullmatch(r"alerts_\d{8}\.log", n)]
    etl_expect.that(
        bool(dated),
        "alert logs are rotated daily (alerts_YYYYMMDD.log)",
        expected="alerts_YYYYMMDD.log",
        got=names or "no alerts file",
    )
    today = {time.strftime("alerts_%Y%m%d.log"), time.strftime("alerts_%Y%m%d.log", time.gmtime())}
    etl_expect.that(
        bool(today & set(dated)),
        "today's alerts file exists",
        expected=sorted(today),
        got=sorted(dated),
    )
    logging = _config(etl_deploy_root).get("logging", {})
    size, backups = logging.get("max_file_size"), logging.get("max_backup_files")
    etl_expect.that(
        isinstance(size, int) and size > 0 and isinstance(backups, int) and backups >= 1,
        "logging.max_file_size > 0 and logging.max_backup_files >= 1",
        expected="size rotation on",
        got={"max_file_size": size, "max_backup_files": backups},
    )


@pytest.mark.checklist("pre.3_monitoring_setup.set_up_slack")
def test_slack_webhook_if_configured(etl_deploy_root: Path, etl_expect: Expect) -> None:
    """Optional: a configured Slack webhook is an https URL (skipped when none is configured)."""
    webhook = _config(etl_deploy_root).get("monitoring", {}).get("slack_webhook") or ""
    if not webhook:
        pytest.skip("optional: no Slack webhook configured (monitoring.slack_webhook)")
    etl_expect.that(
        re.match(r"^https://[^\s/]+/\S+$", webhook) is not None,
        "monitoring.slack_webhook is an https URL",
        expected="https://...",
        got=webhook.split("/")[2] if webhook.count("/") >= 2 else "not a URL",
    )
