"""The fixtures of docs/suite-api.md. Each owns its resources and releases them after `yield`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.client import EtlClient, Expect
from etlverify.deployment import ConfigEditor, FlagsEditor, OpsRunner
from etlverify.errors import CheckFailed, TargetError
from etlverify.faults import FaultsControl
from etlverify.jobs import JobHelper
from etlverify.pytest_plugin.markers import checklist_ids
from etlverify.pytest_plugin.options import get_settings
from etlverify.pytest_plugin.target import acquire_target, get_run
from etlverify.ws import WsSession

if TYPE_CHECKING:
    from pathlib import Path

    from etlverify.settings import Settings
    from etlverify.target import Target

__all__ = [
    "etl_api",
    "etl_config",
    "etl_deploy_root",
    "etl_exclusive",
    "etl_expect",
    "etl_faults",
    "etl_flags",
    "etl_jobs",
    "etl_ops",
    "etl_settings",
    "etl_target",
    "etl_ws",
]

WsFactory = Callable[..., WsSession]


@pytest.fixture(scope="session")
def etl_settings(request: pytest.FixtureRequest) -> Settings:
    """The run's resolved settings (CLI -> env -> ini -> default)."""
    return get_settings(request.config)


@pytest.fixture(scope="session")
def etl_target(request: pytest.FixtureRequest) -> Target:
    """The target: base/ws URL, deployment root, embedded or not, its status at start."""
    try:
        return acquire_target(request.config)
    except TargetError as exc:
        pytest.fail(str(exc), pytrace=False)


def _login(client: EtlClient, settings: Settings) -> None:
    resp = client.post(
        "/api/auth/login", json={"username": settings.username, "password": settings.password}
    )
    token = None
    try:
        body = resp.json()
        token = body.get("token") if isinstance(body, dict) else None
    except ValueError:
        pass
    if resp.status_code != 200 or not isinstance(token, str):
        raise TargetError(
            f"login as {settings.username!r} (ETLPLUS_USERNAME/ETLPLUS_PASSWORD) failed: "
            f"{client.excerpt(resp)}\nReproduce with: {client.curl(resp)}"
        )
    client.set_token(token)


@pytest.fixture(scope="session")
def etl_api(etl_target: Target, etl_settings: Settings) -> Generator[EtlClient]:
    """`EtlClient` for the target, authenticated when credentials are configured."""
    client = EtlClient(
        etl_target.base_url,
        timeout=etl_settings.request_timeout,
        token=etl_settings.token,
        token_env_ref=etl_settings.token_env_ref,
        secrets=(etl_settings.password, etl_settings.token),
    )
    try:
        if etl_settings.username and not etl_settings.token:
            _login(client, etl_settings)
        yield client
    finally:
        client.close()


@pytest.fixture
def etl_expect(request: pytest.FixtureRequest, etl_api: EtlClient) -> Expect:
    """The failure builder for this test (knows its name and the checklist items it blocks)."""
    node = request.node
    items = checklist_ids(node) if isinstance(node, pytest.Item) else ()
    return Expect(etl_api, check=node.name, items=items)


@pytest.fixture
def etl_jobs(
    request: pytest.FixtureRequest, etl_api: EtlClient, etl_expect: Expect, etl_settings: Settings
) -> Generator[JobHelper]:
    """`JobHelper` for this test; jobs it left running are cancelled at teardown."""
    run = get_run(request.config)
    run_id = run.run_id + (f"_{run.worker_id}" if run.worker_id else "")
    helper = JobHelper(etl_api, etl_expect, profiles=etl_settings.job_profiles, run_id=run_id)
    yield helper
    helper.cancel_unfinished()


@pytest.fixture
def etl_ws(etl_target: Target, etl_api: EtlClient, etl_settings: Settings) -> Generator[WsFactory]:
    """Factory ``etl_ws(subscribe=None) -> WsSession``; every session is closed at teardown."""
    sessions: list[WsSession] = []
    headers = {"Authorization": f"Bearer {etl_api.token}"} if etl_api.token else {}

    def connect(
        subscribe: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> WsSession:
        limit = etl_settings.request_timeout if timeout is None else timeout
        session = WsSession(
            etl_target.ws_url,
            open_timeout=limit,
            close_timeout=min(limit, 5.0),
            recv_timeout=limit,
            headers=headers,
        )
        sessions.append(session)
        if subscribe is not None:
            session.subscribe_data(subscribe)
        return session

    yield connect
    for session in sessions:
        session.close()


@pytest.fixture(scope="session")
def etl_deploy_root(etl_target: Target) -> Path:
    """The deployment folder; skips with "needs --deploy-root" when there is none."""
    if etl_target.deploy_root is None:
        pytest.skip("needs --deploy-root (the deployment folder of the target)")
    return etl_target.deploy_root


def _require_destructive(settings: Settings) -> None:
    if not settings.destructive_allowed:
        pytest.skip("destructive: changes deployment state; run with --allow-destructive")


@pytest.fixture
def etl_flags(
    etl_deploy_root: Path, etl_api: EtlClient, etl_expect: Expect, etl_settings: Settings
) -> Generator[FlagsEditor]:
    """`FlagsEditor` on config/feature_flags.json; the original is restored (and reloaded) after."""
    _require_destructive(etl_settings)
    editor = FlagsEditor(
        etl_deploy_root / "config" / "feature_flags.json",
        etl_api,
        etl_expect,
        reload_timeout=etl_settings.reload_timeout,
    )
    yield editor
    editor.restore()


@pytest.fixture
def etl_config(
    etl_deploy_root: Path, etl_api: EtlClient, etl_expect: Expect, etl_settings: Settings
) -> Generator[ConfigEditor]:
    """`ConfigEditor` on config/config.json; the original is restored (and reloaded) after."""
    _require_destructive(etl_settings)
    editor = ConfigEditor(
        etl_deploy_root / "config" / "config.json",
        etl_api,
        etl_expect,
        reload_timeout=etl_settings.reload_timeout,
    )
    yield editor
    editor.restore()


@pytest.fixture(scope="session")
def etl_ops(etl_target: Target, etl_settings: Settings) -> OpsRunner:
    """`OpsRunner` for monitor.sh / rollback.sh (from the settings or the deployment root)."""
    root = etl_target.deploy_root
    monitor = etl_settings.monitor_cmd or (
        (str(root / "monitoring" / "monitor.sh"),) if root else None
    )
    rollback = etl_settings.rollback_cmd or (
        (str(root / "deployment" / "rollback.sh"),) if root else None
    )
    if monitor is None and rollback is None:
        pytest.skip("needs --deploy-root or --monitor-cmd/--rollback-cmd")
    env = {"ETLPLUS_BASE_URL": etl_target.base_url}
    if root is not None:
        env["ETLPLUS_DEPLOY_ROOT"] = str(root)
    return OpsRunner(monitor, rollback, cwd=root, env=env)


@pytest.fixture
def etl_faults(
    etl_target: Target, etl_api: EtlClient, etl_expect: Expect
) -> Generator[FaultsControl]:
    """`FaultsControl` over /api/_faults; skips when the target has none; cleared after."""
    if not etl_target.faults_available:
        pytest.skip("target has no fault switches (GET /api/_faults is not 200)")
    control = FaultsControl(etl_api, etl_expect)
    yield control
    # a test may have crashed the target on purpose; teardown must not hide its result
    with contextlib.suppress(TargetError, CheckFailed):
        control.clear()


@pytest.fixture
def etl_exclusive() -> None:
    """Skips under pytest-xdist: the test changes the whole target (a restart, authentication
    switched on, fault switches), which no xdist group can isolate from the other workers."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if workers not in ("", "0", "1"):
        pytest.skip(
            f"changes the whole target (restart, auth or faults) while {workers} xdist workers "
            "run other tests: run these without -n"
        )
