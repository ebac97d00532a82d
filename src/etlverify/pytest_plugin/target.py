"""The target's lifecycle within one run.

- The controller (or the only process) makes a run folder and a run id; pytest-xdist workers get
  them through `workerinput`, so all processes share one embedded reference.
- After collection, and only when a collected test needs the target, a given `--base-url` is probed
  (unreachable: one line and exit code 3 within seconds) or the embedded reference is started.
  Under xdist the controller probes a given URL at session start, and the first worker that needs
  the embedded reference starts it (`SharedEmbedded`).
- The whole run is bounded by `run_timeout`: each check that talks to the target gets a
  pytest-timeout (300 s when none is set) capped by the time left, and once it is spent the run
  stops. Tests that never touch the target (a project's own tests, in a session where the plugin
  is merely installed) are left alone.
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
#: per-check timeout when the user set none (pytest-timeout); the run timeout caps it further
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
    """Create (controller) or adopt (worker) the run state."""
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


def _seconds(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _item_timeout(item: pytest.Item) -> float | None:
    """The check's pytest-timeout limit as the user set it (marker, option, environment, ini, in
    pytest-timeout's order); None when unset, 0 when disabled."""
    mark = item.get_closest_marker("timeout")
    if mark is not None and mark.args:
        return _seconds(mark.args[0])
    config = item.config
    for value in (
        getattr(config.option, "timeout", None),
        os.environ.get("PYTEST_TIMEOUT"),
        config.getini("timeout"),
    ):
        seconds = _seconds(value)
        if seconds is not None:
            return seconds
    return None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """A check that talks to the target: its timeout (default `DEFAULT_TEST_TIMEOUT`) capped by
    the time left in the run, set before pytest-timeout arms it."""
    if needs_target(item) and item.config.pluginmanager.hasplugin("timeout"):
        remaining = get_run(item.config).deadline - time.time()
        current = _item_timeout(item)
        if current is None:
            current = DEFAULT_TEST_TIMEOUT
        elif current <= 0:
            current = remaining  # the user's "no timeout" still ends with the run
        limit = max(1.0, min(remaining, current))
        if limit != _item_timeout(item):
            item.add_marker(pytest.mark.timeout(limit), append=False)
    return (yield)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip the checks that are left once the run timeout is spent, and stop the run."""
    if not needs_target(item):
        return
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
