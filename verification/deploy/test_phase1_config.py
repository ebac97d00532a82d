"""Phase 1.2 Configuration Deployment: the config is loaded, validated, and older files load."""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from etlverify.client import EtlClient, Expect
    from etlverify.deployment import ConfigEditor

pytestmark = [pytest.mark.deploy, pytest.mark.functional, pytest.mark.deployment_state]

REQUIRED = (
    "server.port",
    "logging.level",
    "logging.format",
    "logging.log_file",
    "logging.max_file_size",
    "logging.max_backup_files",
    "websocket.max_connections",
    "websocket.max_queue",
    "rate_limits",
    "auth",
)


def _get(data: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False, None
        data = data[part]
    return True, data


def _status(api: EtlClient, expect: Expect) -> dict[str, Any]:
    return expect.json_fields(
        expect.status(api.get("/api/health/status"), 200),
        {"config.sha256": str, "config.loaded_at": str},
    )


@pytest.mark.checklist("deploy.phase1.1_2_configuration_deployment.configuration_loading")
def test_config_is_loaded(etl_deploy_root: Path, etl_api: EtlClient, etl_expect: Expect) -> None:
    """config.json has the contract's keys and is the file the server loaded (same sha256)."""
    raw = (etl_deploy_root / "config" / "config.json").read_bytes()
    data = json.loads(raw)
    missing = [k for k in REQUIRED if not _get(data, k)[0]]
    etl_expect.that(
        not missing,
        "config.json has the contract's keys",
        expected=list(REQUIRED),
        got=f"missing {missing}",
    )
    status = _status(etl_api, etl_expect)
    etl_expect.that(
        status["config"]["sha256"] == hashlib.sha256(raw).hexdigest(),
        "/api/health/status config.sha256 is the sha256 of config/config.json",
        expected=hashlib.sha256(raw).hexdigest(),
        got=status["config"]["sha256"],
    )


def _wait_for_error_line(log: Path, size: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        with log.open("rb") as fh:
            fh.seek(size if log.stat().st_size >= size else 0)
            lines = fh.read().decode("utf-8", "replace").splitlines()
        if any("ERROR" in line for line in lines):
            return lines
        time.sleep(0.2)
    return lines


@pytest.mark.destructive
@pytest.mark.checklist("deploy.phase1.1_2_configuration_deployment.configuration_validation")
@pytest.mark.parametrize(
    "bad",
    [
        "{ this is not json",
        json.dumps({"server": {"port": "eighty"}, "logging": {"level": "LOUD"}}),
    ],
    ids=["not-json", "bad-values"],
)
def test_invalid_config_is_rejected(
    etl_config: ConfigEditor,
    etl_api: EtlClient,
    etl_expect: Expect,
    etl_deploy_root: Path,
    etl_settings: Any,
    *,
    bad: str,
) -> None:
    """An invalid config.json is rejected: an ERROR is logged, the old config hash stays, and the
    server stays healthy."""
    before = _status(etl_api, etl_expect)["config"]["sha256"]
    log = etl_deploy_root / "logs" / "etlplus.log"
    size = log.stat().st_size if log.exists() else 0
    etl_config.write_raw(bad)
    lines = _wait_for_error_line(log, size, etl_settings.reload_timeout) if log.exists() else []
    etl_expect.that(
        any("ERROR" in line for line in lines),
        "the rejected config is logged as an ERROR",
        expected="an ERROR line",
        got=lines[-3:] or "no new log lines",
    )
    resp = etl_api.get("/api/health")
    etl_expect.status(resp, 200)
    after = _status(etl_api, etl_expect)["config"]["sha256"]
    etl_expect.that(after == before, "the previous config stays loaded", expected=before, got=after)


@pytest.mark.destructive
@pytest.mark.checklist("deploy.phase1.1_2_configuration_deployment.backward_compatibility_existing")
def test_older_shorter_config_still_loads(
    etl_config: ConfigEditor, etl_api: EtlClient, etl_expect: Expect
) -> None:
    """A config written before the refactoring (no monitoring section) loads and serves."""
    older = {k: v for k, v in etl_config.read().items() if k != "monitoring"}
    etl_config.write_json(older)  # waits until the server reports this file's sha256
    etl_expect.status(etl_api.get("/api/health"), 200)
