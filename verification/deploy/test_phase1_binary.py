"""Phase 1.1 Binary Deployment: the server started, its health endpoints answer per contract, and
it logs in the contract format."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from etlverify.client import EtlClient, Expect
    from etlverify.target import Target

pytestmark = [pytest.mark.deploy, pytest.mark.functional]

NUMBER = (int, float)
#: route -> the fields its 200 body must have (contract section 3)
HEALTH_ROUTES: dict[str, dict[str, Any]] = {
    "/api/health": {"status": str, "timestamp": str},
    "/api/health/live": {
        "status": str,
        "timestamp": str,
        "pid": int,
        "memory.used_bytes": NUMBER,
        "memory.cpu_percent": NUMBER,
    },
    "/api/health/ready": {"status": str, "timestamp": str, "database": dict, "websocket": dict},
    "/api/health/status": {
        "status": str,
        "timestamp": str,
        "version": str,
        "uptime_seconds": NUMBER,
        "build.commit": str,
        "config.sha256": str,
        "config.loaded_at": str,
        "feature_flags.sha256": str,
        "feature_flags.loaded_at": str,
        "components.database.connected": bool,
        "components.database.pool_healthy": bool,
        "components.websocket.running": bool,
        "components.websocket.connections": int,
        "components.system.cpu_usage": NUMBER,
        "components.system.memory_usage": NUMBER,
    },
    "/api/health/metrics": {
        "status": str,
        "timestamp": str,
        "metrics.cpu_usage": NUMBER,
        "metrics.memory_usage": NUMBER,
        "metrics.memory_percent": NUMBER,
        "metrics.database.connections_active": int,
        "metrics.database.connection_failures": int,
        "metrics.websocket.connections": int,
        "metrics.websocket.messages_sent": int,
        "metrics.jobs.total": int,
        "metrics.requests.total": int,
        "metrics.requests.errors": int,
    },
}
STATUS_VALUES = {
    "/api/health": {"healthy", "degraded"},
    "/api/health/live": {"alive"},
    "/api/health/ready": {"ready"},
}
TEXT_LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] \[(DEBUG|INFO|WARN|ERROR|FATAL)\] \[[^\]]+\] .*"
)


@pytest.mark.checklist("deploy.phase1.1_1_binary_deployment.binary_starts_successfully")
def test_binary_started(etl_api: EtlClient, etl_expect: Expect, etl_target: Target) -> None:
    """The process is alive (pid), reports a version and build, and its uptime grows."""
    first = etl_expect.json_fields(
        etl_expect.status(etl_api.get("/api/health/status"), 200),
        {"version": str, "uptime_seconds": NUMBER, "build.commit": str},
    )
    live = etl_expect.json_fields(
        etl_expect.status(etl_api.get("/api/health/live"), 200), {"status": str, "pid": int}
    )
    etl_expect.that(live["pid"] > 0, "live pid", expected="> 0", got=live["pid"])
    time.sleep(0.3)
    resp = etl_api.get("/api/health/status")
    second = etl_expect.json_fields(etl_expect.status(resp, 200), {"uptime_seconds": NUMBER})
    etl_expect.that(
        second["uptime_seconds"] > first["uptime_seconds"],
        "uptime_seconds grows (no restart loop)",
        expected=f"> {first['uptime_seconds']}",
        got=second["uptime_seconds"],
        resp=resp,
    )


@pytest.mark.checklist("deploy.phase1.1_1_binary_deployment.basic_functionality_health")
@pytest.mark.parametrize("route", sorted(HEALTH_ROUTES))
def test_health_endpoint_answers(etl_api: EtlClient, etl_expect: Expect, route: str) -> None:
    """Each health route answers 200 with the contract's fields, quickly and without auth."""
    resp = etl_api.get(route)
    etl_expect.status(resp, 200)
    body = etl_expect.json_fields(resp, HEALTH_ROUTES[route])
    if route in STATUS_VALUES:
        etl_expect.that(
            body["status"] in STATUS_VALUES[route],
            f"{route} status",
            expected=" or ".join(sorted(STATUS_VALUES[route])),
            got=body["status"],
            resp=resp,
        )
    if route == "/api/health/metrics":
        pct = body["metrics"]["memory_percent"]
        etl_expect.that(
            0 <= pct <= 100, "metrics.memory_percent in 0-100", expected="0-100", got=pct, resp=resp
        )


def _log_file(root: Path) -> tuple[Path, str]:
    cfg = json.loads((root / "config" / "config.json").read_text(encoding="utf-8"))
    logging = cfg.get("logging", {}) if isinstance(cfg, dict) else {}
    path = Path(str(logging.get("log_file") or "logs/etlplus.log"))
    return (path if path.is_absolute() else root / path), str(logging.get("format", "TEXT"))


@pytest.mark.monitoring
@pytest.mark.checklist("deploy.phase1.1_1_binary_deployment.basic_functionality_health")
def test_logging_works(
    etl_api: EtlClient, etl_expect: Expect, etl_deploy_root: Path, etl_settings: Any
) -> None:
    """An error response is logged: the log file grows with a contract-format line that carries
    the response's correlationId."""
    log, fmt = _log_file(etl_deploy_root)
    etl_expect.that(log.is_file(), "the server log file exists", expected=str(log), got="missing")
    size = log.stat().st_size
    resp = etl_api.get(f"/api/jobs/etlv_missing_{uuid.uuid4().hex[:8]}")
    etl_expect.status(resp, 404)
    cid = str(etl_expect.json_body(resp).get("correlationId", ""))
    deadline = time.monotonic() + min(etl_settings.reload_timeout, 10)
    new_lines: list[str] = []
    while time.monotonic() < deadline:
        if log.stat().st_size < size:  # rotated meanwhile: read the whole current file
            size = 0
        with log.open("rb") as fh:
            fh.seek(size)
            new_lines = fh.read().decode("utf-8", "replace").splitlines()
        if any(cid and cid in line for line in new_lines):
            break
        time.sleep(0.2)
    etl_expect.that(bool(new_lines), "the log file grows", expected="new lines", got="none")
    matching = [line for line in new_lines if cid and cid in line]
    etl_expect.that(
        bool(matching),
        "the error response is logged with its correlationId",
        expected=f"a line with correlationId={cid}",
        got=new_lines[-3:],
        resp=resp,
    )
    line = matching[0]
    if fmt.upper() == "JSON":
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        etl_expect.that(
            isinstance(record, dict)
            and {"timestamp", "level", "component", "message"} <= set(record),
            "JSON log line has timestamp, level, component, message",
            expected="contract JSON line",
            got=line[:200],
        )
    else:
        etl_expect.that(
            TEXT_LINE.match(line) is not None,
            "TEXT log line format",
            expected="[YYYY-MM-DD HH:MM:SS.mmm] [LEVEL] [Component] message | k=v",
            got=line[:200],
        )
