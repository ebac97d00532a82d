"""Helpers for the plugin's pytester tests."""

from __future__ import annotations

import pytest

#: every inner run loads the plugin explicitly (no root conftest there) and leaves locust out
BASE_ARGS = (
    "-p",
    "etlverify.pytest_plugin",
    "-p",
    "no:locust",
    "-p",
    "no:cacheprovider",
    # a pytest-benchmark installed beside us warns under xdist into the inner run's stderr
    "-p",
    "no:benchmark",
    "--strict-markers",
)


@pytest.fixture
def run_args() -> tuple[str, ...]:
    """The arguments every inner pytest run starts with."""
    return BASE_ARGS
