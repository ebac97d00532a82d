"""Fixtures of the post-deployment validation suites (functional testing, success criteria)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from etlverify.health import health_for

from .support import AppLog, UptimeSampler

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

#: When this section was first loaded: "the run so far" for the log and uptime criteria.
RUN_STARTED = datetime.now(UTC) - timedelta(seconds=1)


@pytest.fixture(scope="session")
def run_started() -> datetime:
    """The (UTC) time the run started, a second early so that clock rounding loses no line."""
    return RUN_STARTED


@pytest.fixture(scope="session", autouse=True)
def uptime_sampler(request: pytest.FixtureRequest, etl_target: Any) -> Iterator[UptimeSampler]:
    """Probes `/api/health` every 0.5 s for the rest of the session (stopped at its end)."""
    sampler = UptimeSampler(etl_target.base_url)
    sampler.probe()
    sampler.start()
    request.config.pluginmanager.register(sampler, UptimeSampler.NAME)
    try:
        yield sampler
    finally:
        request.config.pluginmanager.unregister(sampler, UptimeSampler.NAME)
        sampler.stop()


@pytest.fixture
def app_log(etl_deploy_root: Path) -> AppLog:
    """The deployment's server log (`logging.log_file`); skips without a deploy root."""
    log_file = "logs/etlplus.log"
    try:
        cfg = json.loads((etl_deploy_root / "config" / "config.json").read_text(encoding="utf-8"))
        log_file = str(cfg.get("logging", {}).get("log_file") or log_file)
    except (OSError, ValueError):
        pass
    path = etl_deploy_root / log_file
    log = AppLog(path if path.is_absolute() else etl_deploy_root / log_file)
    if not log.files():
        pytest.skip(f"server log {log.path} does not exist (logging.log_file of the deployment)")
    return log


def health_hooks(base_url: str) -> dict[str, list[Callable[[httpx.Request], None]]]:
    """httpx event hooks that consult the run's health view before each request: a plain client
    sends nothing while the target is known to be down (`TargetBlocked` at once, tied to the
    event), like `EtlClient`."""
    health = health_for(base_url)

    def before(request: httpx.Request) -> None:
        health.before_request(f"{request.method} {request.url.path}")

    return {"request": [before]}


@pytest.fixture(scope="session")
def auth_enabled(etl_target: Any, etl_settings: Any) -> bool:
    """Whether the target asks for a token: `GET /api/auth/profile` and `GET /api/jobs` without one
    both answer 401 (a target may refuse the profile of nobody even with authentication off)."""
    timeout = float(getattr(etl_settings, "request_timeout", 10.0))
    hooks = health_hooks(etl_target.base_url)
    with httpx.Client(base_url=etl_target.base_url, timeout=timeout, event_hooks=hooks) as client:
        return all(client.get(p).status_code == 401 for p in ("/api/auth/profile", "/api/jobs"))


@pytest.fixture
def raw_http(etl_target: Any, etl_settings: Any) -> Iterator[httpx.Client]:
    """A plain client without the suite's credentials (for auth checks), closed at teardown; it
    sends nothing to a target known to be down."""
    timeout = float(getattr(etl_settings, "request_timeout", 10.0))
    hooks = health_hooks(etl_target.base_url)
    with httpx.Client(base_url=etl_target.base_url, timeout=timeout, event_hooks=hooks) as client:
        yield client


@pytest.fixture(autouse=True)
def _ops_need_an_answering_target(request: pytest.FixtureRequest) -> None:
    """A check that runs the target's monitor script against it is not started while the target
    is known to be down or its WebSocket handshakes hang (the script would wait out its own
    timeouts): blocked at once instead."""
    if "etl_ops" in request.fixturenames:
        target = request.getfixturevalue("etl_target")
        # the script checks /ws too: a handshake known to hang would cost it its timeout per pass
        health_for(target.base_url).before_request("monitor.sh check", websocket=True)
