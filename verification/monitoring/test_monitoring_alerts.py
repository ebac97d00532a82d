"""Monitoring validation: alerts fire, aggregate and notify (contract section 11).

Checklist "3. Monitoring Validation": "Verify alert system functionality", "Validate log
aggregation", "Test alert notifications". Alerts are provoked two ways: by lowering an alert
threshold in the config (any deployment), and with the target's fault switches (when it has them).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from .support import firing, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from .support import AlertsLog, WebhookReceiver

ALERTS = "post.3_monitoring_validation.alert_functionality"
AGGREGATION = "post.3_monitoring_validation.validate_log_aggregation"
NOTIFY = "post.3_monitoring_validation.alert_notifications"

pytestmark = [pytest.mark.post_deploy, pytest.mark.monitoring]


def _config(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / "config" / "config.json").read_text(encoding="utf-8")))


def _out(proc: Any) -> str:
    return str(proc.stdout or proc.stderr or "")


def _needs_monitoring_thresholds(root: Path) -> None:
    if "memory_warning" not in (_config(root).get("monitoring") or {}):
        pytest.skip("config.json has no monitoring.memory_warning threshold to lower")


@pytest.mark.destructive
@pytest.mark.checklist(ALERTS)
def test_threshold_breach_raises_warning(
    etl_ops: Any, etl_config: Any, alerts: AlertsLog, etl_deploy_root: Path, etl_expect: Any
) -> None:
    """Verify alert system functionality: memory over a lowered threshold alerts."""
    _needs_monitoring_thresholds(etl_deploy_root)
    etl_ops.monitor("check", timeout=60)  # catch up on earlier log lines
    etl_config.update({"monitoring": {"memory_warning": 0.001, "memory_critical": 100.0}})
    alerts.mark()
    proc = etl_ops.monitor("check", timeout=60)
    hits = [ln for ln in firing(alerts.new_lines()) if "memory" in ln.lower()]
    etl_expect.that(
        proc.returncode != 0 and hits,
        what="monitor.sh check with monitoring.memory_warning 0.001%",
        expected="a non-zero exit and a WARNING alert naming memory",
        got=f"exit {proc.returncode}; alerts: {firing(alerts.new_lines())[:5]}",
    )


FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    # fault settings, and a pattern the alert must match to name the problem
    "errors": ({"errors": {"fraction": 1.0, "status": 500, "route_prefix": "/api/jobs"}}, r"error"),
    "latency": (
        {"latency": {"ms": 5500.0, "fraction": 1.0, "route_prefix": "/api/health/metrics"}},
        r"metrics|timed? ?out|slow|latency|unusable",
    ),
    "database_failures": ({"database_failures": 1.0}, r"database"),
}


@pytest.mark.destructive
@pytest.mark.checklist(ALERTS)
@pytest.mark.parametrize("fault", [*FAULTS, "memory"])
@pytest.mark.usefixtures("etl_exclusive")
def test_fault_raises_alert(
    *, fault: str, etl_faults: Any, etl_ops: Any, etl_api: Any, alerts: AlertsLog, etl_expect: Any
) -> None:
    """Verify alert system functionality: an induced fault makes `monitor check` alert."""
    if fault == "memory":
        pytest.skip(
            "memory alerts are provoked by lowering the threshold "
            "(test_threshold_breach_raises_warning):"
            " growing the process to 85% of its memory would endanger the host"
        )
    settings, pattern = FAULTS[fault]
    etl_ops.monitor("check", timeout=60)  # catch up on earlier log lines
    alerts.mark()
    etl_faults.set(**settings)
    if fault == "errors":
        for _ in range(5):  # errors the monitor should find (in the log) after this traffic
            etl_api.get("/api/jobs")
    proc = etl_ops.monitor("check", timeout=90)
    etl_faults.clear()
    hits = [ln for ln in firing(alerts.new_lines()) if re.search(pattern, ln, re.IGNORECASE)]
    etl_expect.that(
        proc.returncode != 0 and hits,
        what=f"monitor.sh check with the {fault} fault switched on",
        expected=f"a non-zero exit and a WARNING/CRITICAL alert matching /{pattern}/",
        got=f"exit {proc.returncode}; alerts: {firing(alerts.new_lines())[:5]}",
    )


@pytest.mark.checklist(AGGREGATION)
def test_caused_errors_reach_the_log(etl_api: Any, etl_expect: Any, etl_deploy_root: Path) -> None:
    """Validate log aggregation: errors the suite causes appear in the server log with their ids."""
    cfg_log = (_config(etl_deploy_root).get("logging") or {}).get("log_file", "logs/etlplus.log")
    log = etl_deploy_root / cfg_log
    ids = {}
    for path, body in (
        ("/api/jobs/etlv_agg_missing", None),
        ("/api/jobs", {"type": "EXTRACT"}),
        ("/api/etlverify/unknown", None),
    ):
        cid = uuid.uuid4().hex[:16]
        headers = {"X-Correlation-ID": cid}
        resp = (
            etl_api.post(path, json=body, headers=headers)
            if body
            else etl_api.get(path, headers=headers)
        )
        etl_expect.that(
            400 <= resp.status_code < 500,
            what=f"error answer for {path}",
            expected="4xx",
            got=resp.status_code,
            resp=resp,
        )
        ids[cid] = f"{resp.request.method} {path} -> {resp.status_code}"

    def missing() -> list[str]:
        text = "".join(
            p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(log.parent.glob(log.name + "*"))
        )
        return [f"{v} (correlationId {k})" for k, v in ids.items() if k not in text]

    still_missing = missing() if not wait_until(lambda: not missing(), 5) else []
    etl_expect.that(
        not still_missing,
        what=f"errors logged in {log}",
        expected="every error's correlation id",
        got="; ".join(still_missing),
    )


@pytest.mark.deployment_state
@pytest.mark.checklist(AGGREGATION)
def test_monitor_report_is_written(etl_ops: Any, etl_deploy_root: Path, etl_expect: Any) -> None:
    """Validate log aggregation: `monitor.sh report` writes a logs/monitoring_report_*.txt file."""
    before = set((etl_deploy_root / "logs").glob("monitoring_report_*.txt"))
    proc = etl_ops.monitor("report", timeout=60)
    new = sorted(set((etl_deploy_root / "logs").glob("monitoring_report_*.txt")) - before)
    etl_expect.that(
        len(new) == 1,
        what="monitor.sh report",
        expected="one new logs/monitoring_report_*.txt",
        got=f"{[p.name for p in new]} (exit {proc.returncode}: {_out(proc)[-200:]})",
    )
    text = new[0].read_text(encoding="utf-8", errors="replace")
    etl_expect.that(
        len(text) > 100 and "health" in text.lower(),
        what=f"content of {new[0].name}",
        expected="a report naming the health/status checks",
        got=text[:200],
    )


@pytest.mark.destructive
@pytest.mark.checklist(NOTIFY)
def test_alert_is_sent_to_the_webhook(
    etl_ops: Any, etl_config: Any, webhook: WebhookReceiver, etl_deploy_root: Path, etl_expect: Any
) -> None:
    """Test alert notifications: a firing alert is POSTed to monitoring.slack_webhook."""
    _needs_monitoring_thresholds(etl_deploy_root)
    etl_config.update(
        {
            "monitoring": {
                "slack_webhook": webhook.url,
                "memory_warning": 0.001,
                "memory_critical": 100.0,
            }
        }
    )
    proc = etl_ops.monitor("check", timeout=60)
    posts = wait_until(webhook.received, 5)
    etl_expect.that(
        bool(posts),
        what=f"POST to the webhook {webhook.url} after an alert",
        expected="at least one POST",
        got=f"none (monitor exit {proc.returncode}: {(proc.stdout or '')[-300:]})",
    )
    body = posts[0][2].decode("utf-8", "replace")
    etl_expect.that(
        "memory" in body.lower() and ("WARNING" in body or "CRITICAL" in body),
        what="the webhook message",
        expected="names the WARNING memory alert",
        got=body[:300],
    )
