"""The suite's markers: registered with their signatures, parsed into frozen dataclasses, checked.

A test naming an unknown checklist item is a collection error that names the test, the id and the
closest known id. Tests that touch deployment state are marked `destructive` (also when they only
use the `etl_flags`/`etl_config` fixtures), put in one xdist group, and skipped unless destructive
tests are allowed. A test verifying a post-deployment, rollback or success-criteria item is marked
`post_deploy` even if its author forgot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from etlverify.checklist import POST_DEPLOY_PREFIXES, Checklist, load_checklist
from etlverify.pytest_plugin._state import CHECKLIST_KEY
from etlverify.pytest_plugin.options import get_settings

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable

__all__ = [
    "DESTRUCTIVE_FIXTURES",
    "MARKERS",
    "POST_DEPLOY_PREFIXES",
    "XDIST_GROUP",
    "ChecklistMarker",
    "checklist_ids",
    "parse_checklist_marker",
]

#: name -> the line registered with pytest (signature: description)
MARKERS: dict[str, str] = {
    "pre_deploy": "pre_deploy: section 'Pre-Deployment Preparation' of the checklist",
    "deploy": "deploy: section 'Deployment Steps', Phase 1 (infrastructure)",
    "component": "component: 'Deployment Steps', Phases 2-3 (component rollout)",
    "post_deploy": "post_deploy: post-deployment validation, success criteria, rollback triggers "
    "and procedures (`pytest -m post_deploy`)",
    "rollback": "rollback: rollback triggers and procedures",
    "functional": "functional: a functional check",
    "performance": "performance: a performance check (timings, load, baselines)",
    "monitoring": "monitoring: monitoring, alerting and logging checks",
    "logger": "logger: component new_logger_system",
    "exception": "exception: component new_exception_system",
    "request_handler": "request_handler: component new_request_handler",
    "websocket": "websocket: component new_websocket_manager",
    "concurrency": "concurrency: component new_concurrency_patterns",
    "types": "types: component new_type_system",
    "destructive": "destructive: changes deployment state (flags, config, restarts); runs only "
    "with --allow-destructive or against the embedded target, serially (xdist group)",
    "deployment_state": "deployment_state: reads state that destructive tests change (flags, "
    "config); runs in their xdist group, never beside them, but is not skipped",
    "checklist(*item_ids)": "checklist(*item_ids): the checklist items this test verifies "
    "(ids from src/etlverify/checklist.json)",
}
XDIST_GROUP = "deployment_state"
DESTRUCTIVE_FIXTURES = frozenset({"etl_flags", "etl_config"})


@dataclass(frozen=True)
class ChecklistMarker:
    """A parsed ``@pytest.mark.checklist(*ids)``."""

    ids: tuple[str, ...]


def parse_checklist_marker(mark: pytest.Mark) -> ChecklistMarker:
    """Parse one checklist mark; `ValueError` when it has no ids, kwargs or non-string args."""
    if mark.kwargs:
        raise ValueError(f"checklist() takes item ids only, got keywords {sorted(mark.kwargs)}")
    if not mark.args:
        raise ValueError("checklist() needs at least one item id")
    bad = [a for a in mark.args if not isinstance(a, str)]
    if bad:
        raise ValueError(f"checklist() item ids must be strings, got {bad!r}")
    return ChecklistMarker(tuple(mark.args))


def checklist_ids(item: pytest.Item) -> tuple[str, ...]:
    """Every checklist id on `item` (its own marks, its class's and module's), in order, once."""
    ids: list[str] = []
    for mark in item.iter_markers("checklist"):
        try:
            ids.extend(parse_checklist_marker(mark).ids)
        except ValueError:
            continue  # reported at collection by _problems()
    return tuple(dict.fromkeys(ids))


def _problems(item: pytest.Item, checklist: Checklist) -> list[str]:
    problems: list[str] = []
    for mark in item.iter_markers("checklist"):
        try:
            parsed = parse_checklist_marker(mark)
        except ValueError as exc:
            problems.append(f"{item.nodeid}: {exc}")
            continue
        for unknown in checklist.unknown_ids(parsed.ids):
            hint = checklist.suggest(unknown)
            problems.append(
                f"{item.nodeid}: unknown checklist item {unknown!r}"
                + (f" (did you mean {hint!r}?)" if hint else "")
            )
    return problems


def get_checklist(config: pytest.Config) -> Checklist:
    """The checklist (loaded once per process)."""
    if CHECKLIST_KEY not in config.stash:
        config.stash[CHECKLIST_KEY] = load_checklist()
    return config.stash[CHECKLIST_KEY]


def pytest_configure(config: pytest.Config) -> None:
    """Register every marker with its signature (strict markers reject any other)."""
    for line in MARKERS.values():
        config.addinivalue_line("markers", line)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Turn a collector whose tests name unknown checklist items into a collection error."""
    report = yield
    if report.outcome != "passed" or not report.result:
        return report
    checklist = get_checklist(collector.config)
    problems: list[str] = []
    for node in report.result:
        if isinstance(node, pytest.Item):
            problems.extend(_problems(node, checklist))
    if problems:
        report.outcome = "failed"
        report.longrepr = "\n".join(problems)
        report.result = []
    return report


def _uses(item: pytest.Item, names: Iterable[str]) -> bool:
    fixturenames = getattr(item, "fixturenames", ())
    return any(n in fixturenames for n in names)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Derive markers before `-m` selection and xdist grouping look at them (hence tryfirst)."""
    settings = get_settings(config)
    has_xdist = config.pluginmanager.hasplugin("xdist")
    for item in items:
        ids = checklist_ids(item)
        if ids:
            item.user_properties.append(("checklist", " ".join(ids)))
            if item.get_closest_marker("post_deploy") is None and any(
                i.startswith(POST_DEPLOY_PREFIXES) for i in ids
            ):
                item.add_marker(pytest.mark.post_deploy)
        if item.get_closest_marker("destructive") is None and _uses(item, DESTRUCTIVE_FIXTURES):
            item.add_marker(pytest.mark.destructive)
        destructive = item.get_closest_marker("destructive") is not None
        if destructive or item.get_closest_marker("deployment_state") is not None:
            if has_xdist:
                # one group: tests that change flags/config/the service never run side by side
                item.add_marker(pytest.mark.xdist_group(XDIST_GROUP))
            if destructive and not settings.destructive_allowed:
                item.add_marker(
                    pytest.mark.skip(
                        reason="destructive: changes deployment state; run with --allow-destructive"
                    )
                )
