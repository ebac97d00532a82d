"""The project's own tests under pytest-xdist (the README's test command: `-n 2 --dist loadgroup`).

Tests that judge time (latency injected and detected, runs that must end within a bound, load
generators) share one xdist group, so they run one after another on one worker and never beside
each other; everything else is spread over the workers. The watch's end-to-end module mostly
sleeps (three watches of up to three minutes at a few requests a second), so it runs beside them.
"""

from __future__ import annotations

import pytest

#: modules whose tests measure time or load, relative to tests/
TIMING_MODULES = (
    "plugin/test_performance_gate.py",
    "plugin/test_fault_detection.py",
    "plugin/test_hostile_verdict.py",
    "plugin/test_hostile_checks.py",
    "loadtests/test_locust_gate.py",
    "loadtests/test_locust_cli.py",
    "etlverify/test_measure_load.py",
    "etlverify/test_measure_wspush.py",
    "etlverify/test_measure_sampler.py",
    "etlverify/test_measure_host.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the timing modules into one xdist group (no effect without `--dist loadgroup`)."""
    for item in items:
        path = item.path.as_posix()
        if any(path.endswith("tests/" + module) for module in TIMING_MODULES):
            item.add_marker(pytest.mark.xdist_group("timing"))
