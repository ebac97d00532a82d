"""Monitoring validation: the monitoring script runs (contract section 11, `monitoring/monitor.sh`).

Checklist "Post-Deployment Validation / 3. Monitoring Validation": "Confirm monitoring script is
running". Monitoring validation is part of post-deployment validation (marker `post_deploy`).
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import pytest

from .support import firing, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from .support import AlertsLog

ITEM = "post.3_monitoring_validation.confirm_monitoring_script"

pytestmark = [
    pytest.mark.post_deploy,
    pytest.mark.monitoring,
    pytest.mark.deployment_state,
    pytest.mark.checklist(ITEM),
]


def _tail(proc: Any) -> str:
    text = ((proc.stdout or "") + (proc.stderr or "")).strip()
    return text[-400:]


def test_monitor_check_passes_on_healthy_target(
    etl_ops: Any, alerts: AlertsLog, etl_expect: Any
) -> None:
    """Confirm monitoring script is running: `monitor.sh check` exits 0 and writes alert lines.

    A first pass catches up on log lines written before it (this run's own error answers); the
    second pass is the verdict.
    """
    etl_ops.monitor("check", timeout=60)
    alerts.mark()
    proc = etl_ops.monitor("check", timeout=60)
    new = alerts.new_lines()
    etl_expect.that(
        proc.returncode == 0,
        what="monitor.sh check on the healthy target",
        expected="exit 0",
        got=f"exit {proc.returncode}; alerts: {' | '.join(firing(new)[:5])}; output: {_tail(proc)}",
    )
    etl_expect.that(
        bool(new),
        what="monitor.sh check appends to logs/alerts_YYYYMMDD.log",
        expected="new alert lines (INFO included)",
        got="none",
    )


def test_monitor_loop_runs(
    etl_ops: Any, alerts: AlertsLog, etl_deploy_root: Path, etl_expect: Any
) -> None:
    """Confirm monitoring script is running: `start --count 2` loops twice."""
    pid_file = etl_deploy_root / "run" / "monitor.pid"
    etl_ops.monitor("check", timeout=60)  # catch up on earlier log lines (see above)
    alerts.mark()
    result: dict[str, Any] = {}

    def loop() -> None:
        result["proc"] = etl_ops.monitor("start", "--count", "2", "--interval", "1", timeout=60)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    seen_pid = wait_until(lambda: pid_file.is_file() and pid_file.read_text(encoding="utf-8"), 5)
    thread.join(timeout=65)
    proc = result.get("proc")
    etl_expect.that(
        proc is not None,
        what="monitor.sh start --count 2 --interval 1",
        expected="finished within 60 s",
        got="still running",
    )
    assert proc is not None
    new = alerts.new_lines()
    stamps = {ln.split()[0] for ln in new if ln.strip()}
    print(
        f"monitor loop: exit {proc.returncode}, {len(new)} alert lines, pid file seen: "
        f"{json.loads(seen_pid).get('pid') if seen_pid else None}"
    )
    etl_expect.that(
        proc.returncode == 0,
        what="monitor.sh start --count 2 --interval 1",
        expected="exit 0",
        got=f"exit {proc.returncode}: {_tail(proc)}",
    )
    etl_expect.that(
        len(stamps) >= 2 or len(new) >= 2,
        what="alert lines of two passes",
        expected="lines from 2 passes in logs/alerts_*.log",
        got=new[:6],
    )
