"""Fixtures for the reference target's contract tests: servers, each owned by its fixture."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from contract_support import Api, TargetFactory, start_target

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from etlverify.embedded import EmbeddedTarget


@pytest.fixture(scope="module")
def reference() -> Iterator[EmbeddedTarget]:
    """One reference server per test module, with the suite's overrides; stopped after it."""
    target = start_target(None, None)
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def api(reference: EmbeddedTarget) -> Iterator[Api]:
    """An HTTP client for the module's `reference` server."""
    with Api(reference) as client:
        yield client


@pytest.fixture
def make_target() -> Iterator[TargetFactory]:
    """A factory of servers with special config; every server it started is stopped at teardown.

    `make_target(overrides, enable_faults=False, admin_password=None, root=None)`: an
    `admin_password` switches authentication on with user `admin`; with a `root`, the deployment
    root outlives the server, so a test may stop and restart a server on the same root.
    """
    started: list[EmbeddedTarget] = []

    def factory(
        overrides: dict[str, Any] | None = None,
        *,
        enable_faults: bool = False,
        admin_password: str | None = None,
        root: Path | None = None,
    ) -> EmbeddedTarget:
        target = start_target(
            root, overrides, enable_faults=enable_faults, admin_password=admin_password
        )
        started.append(target)
        return target

    yield factory
    for target in reversed(started):
        target.stop()
