"""Fixtures of the component rollout suites (checklist phases 2 and 3) and nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from .rollout import LogWatcher, RolloutChecker, resolve_log_file

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


@pytest.fixture
def rollout(etl_api: Any, etl_expect: Any, etl_flags: Any) -> RolloutChecker:
    """Sets component rollouts through `etl_flags` (restored at teardown); checks exposure."""
    return RolloutChecker(etl_api, etl_expect, etl_flags)


@pytest.fixture
def server_log(etl_deploy_root: Path) -> LogWatcher:
    """The deployment's server log, watched from now on; skips without `--deploy-root`."""
    path = resolve_log_file(etl_deploy_root)
    if not path.exists():
        pytest.skip(f"server log {path} does not exist (logging.log_file of the deployment)")
    watcher = LogWatcher(path)
    watcher.mark()
    return watcher


@pytest.fixture
def record_metric(request: pytest.FixtureRequest) -> Callable[[str, object], None]:
    """Records a measured value on the test's report (`user_properties` and a report section).

    Not pytest's `record_property`: that warns under the junit family the plugin writes.
    """

    def record(name: str, value: object) -> None:
        request.node.user_properties.append((name, value))
        request.node.add_report_section("call", "metric", f"{name} = {value}")

    return record
