"""The target's lifecycle within one run.

- The controller (or the only process) makes a run folder and a run id; pytest-xdist workers get
  them through `workerinput`, so all processes share one embedded reference.
- After collection, and only when a collected test needs the target, a given `--base-url` is probed
  (unreachable: one line and exit code 3 within seconds) or the embedded reference is started.
  Under xdist the controller probes a given URL at session start, and the first worker that needs
  the embedded reference starts it (`SharedEmbedded`).
- The whole run is bounded by `run_timeout`: each test's pytest-timeout is capped by the time left,
  and once it is spent the run stops.
- At the end the process that made the run folder stops the embedded reference and removes it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.errors import TargetError
from etlverify.pytest_plugin._state import RUN_KEY, RunState
from etlverify.pytest_plugin.options import get_settings
from etlverify.target import SharedEmbedded, Target, describe_target, probe, unreachable_message

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ["TARGET_FIXTURE_PREFIX", "acquire_target", "get_run", "needs_target"]

TARGET_FIXTURE_PREFIX = "etl_"
#: fixtures that do not talk to the target
_OFFLINE_FIXTURES = frozenset({"etl_settings"})
#: per-test timeout when the user set none (pytest-timeout); the run timeout caps it further
DEFAULT_TEST_TIMEOUT = 300.0
EXIT_UNREACHABLE = 3


def get_run(config: pytest.Config) -> RunState:
    """This process's `RunState`."""
    return config.stash[RUN_KEY]


def _is_xdist_controller(config: pytest.Config) -> bool:
    if hasattr(config, "workerinput"):
        return False
    numprocesses = getattr(config.option, "numprocesses", None)
    dist = getattr(config.option, "dist", "no")
    return bool(numprocesses) or dist not in (None, "no")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Create (controller) or adopt (worker) the run state; default the per-test timeout."""
    settings = get_settings(config)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None and "etlverify_run_dir" in workerinput:
        run = RunState(
            run_dir=Path(workerinput["etlverify_run_dir"]),
            run_id=str(workerinput["etlverify_run_id"]),
            deadline=float(workerinput["etlverify_deadline"]),
            is_worker=True,
            owns_run_dir=False,
            worker_id=str(workerinput.get("workerid", "")),
        )
    else:
        run = RunState(
            run_dir=Path(tempfile.mkdtemp(prefix="etlverify-run-")),
            run_id=secrets.token_hex(4),
            deadline=time.time() + settings.run_timeout,
            is_worker=False,
            owns_run_dir=True,
        )
    run.shared = SharedEmbedded(
        run.run_dir,
        enable_faults=settings.embedded_faults,
        request_timeout=settings.request_timeout,
    )
    config.stash[RUN_KEY] = run
    # pytest-timeout reads its option in its own pytest_configure, after this one (tryfirst).
    if (
        hasattr(config.option, "timeout")
        and config.option.timeout is None
        and not os.environ.get("PYTEST_TIMEOUT")
        and not config.getini("timeout")
    ):
        config.option.timeout = min(settings.run_timeout, DEFAULT_TEST_TIMEOUT)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: hand the run folder, run id and deadline to each worker."""
    run = get_run(node.config)
    node.workerinput["etlverify_run_dir"] = str(run.run_dir)
    node.workerinput["etlverify_run_id"] = run.run_id
    node.workerinput["etlverify_deadline"] = run.deadline


def needs_target(item: pytest.Item) -> bool:
    """True when `item` uses a fixture that talks to the target."""
    return any(
        name.startswith(TARGET_FIXTURE_PREFIX) and name not in _OFFLINE_FIXTURES
        for name in getattr(item, "fixturenames", ())
    )


def acquire_target(config: pytest.Config) -> Target:
    """The run's target: described once per process; the embedded one started once per run.

    Raises `TargetError` (message: one line) when it is unreachable or cannot start.
    """
    run = get_run(config)
    if run.target is not None:
        return run.target
    if run.target_error is not None:
        raise TargetError(run.target_error)
    settings = get_settings(config)
    try:
        if settings.base_url is None:
            assert run.shared is not None
            run.target = run.shared.acquire()
        else:
            ws_url = settings.ws_url or settings.base_url.replace("http", "ws", 1) + "/ws"
            run.target = describe_target(
                settings.base_url,
                ws_url,
                settings.deploy_root,
                embedded=False,
                timeout=settings.request_timeout,
            )
    except TargetError as exc:
        run.target_error = str(exc)
        raise
    return run.target


def pytest_sessionstart(session: pytest.Session) -> None:
    """xdist controller: probe a given target now, so an unreachable one ends the run at once."""
    config = session.config
    settings = get_settings(config)
    if settings.base_url and _is_xdist_controller(config) and not _offline_run(config):
        reason = probe(settings.base_url)
        if reason:
            pytest.exit(unreachable_message(settings.base_url, reason), returncode=EXIT_UNREACHABLE)


def _offline_run(config: pytest.Config) -> bool:
    return bool(config.option.collectonly or config.getoption("etl_checklist"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """After selection: reach or start the target if a selected test needs it (tryfirst: the
    terminal reporter prints the target's identity in its own pytest_collection_finish)."""
    config = session.config
    if _offline_run(config) or not any(needs_target(i) for i in session.items):
        return
    try:
        acquire_target(config)
    except TargetError as exc:
        pytest.exit(str(exc), returncode=EXIT_UNREACHABLE)


def _item_timeout(item: pytest.Item) -> float | None:
    mark = item.get_closest_marker("timeout")
    if mark is not None and mark.args:
        try:
            return float(mark.args[0])
        except (TypeError, ValueError):
            return None
    value = getattr(item.config.option, "timeout", None)
    return float(value) if value else None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """Cap the test's timeout by the time left in the run (before pytest-timeout arms it)."""
    remaining = get_run(item.config).deadline - time.time()
    if remaining > 0 and item.config.pluginmanager.hasplugin("timeout"):
        current = _item_timeout(item)
        if current is None or current <= 0 or remaining < current:
            item.add_marker(pytest.mark.timeout(max(1.0, remaining)), append=False)
    return (yield)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip what is left once the run timeout is spent, and stop the run."""
    settings = get_settings(item.config)
    if time.time() >= get_run(item.config).deadline:
        message = f"etlverify: run timeout of {settings.run_timeout:g} s reached"
        item.session.shouldstop = message
        pytest.skip(message)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The process that made the run folder stops the embedded reference and removes the folder."""
    if RUN_KEY not in config.stash:
        return
    run = get_run(config)
    if run.owns_run_dir:
        if run.shared is not None:
            run.shared.stop()
        shutil.rmtree(run.run_dir, ignore_errors=True)
