"""Fixtures of the performance validation: one session-level measurement run, judged once.

`perf_run` hands the session's `PerfCollector` a way to measure; each group is then measured by
the first test that reads it (`perf_run.group(request, name)`), in plan order, with a progress
line on the terminal while it runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.errors import TargetError
from etlverify.health import TargetBlocked, health_for

from .scenarios import MEASURE, Context, budget_s

if TYPE_CHECKING:
    from collections.abc import Callable

    from etlverify.client import EtlClient
    from etlverify.pytest_plugin.performance import GroupResult, PerfCollector
    from etlverify.settings import Settings
    from etlverify.target import Target


def _flags(etl_api: EtlClient) -> dict[str, Any] | None:
    """`GET /api/flags` for the fingerprint (None when the target has no such route)."""
    resp = etl_api.get("/api/flags")
    if resp.status_code != 200:
        return None
    try:
        body = resp.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _measure_bounded(
    group: str, ctx: Context, tick: Callable[[float], None] | None = None
) -> GroupResult:
    """Run one group's measurement on its own event loop in a thread, joined with a hard budget.

    The target's health is consulted first: a target known to be down is not measured at all
    (`TargetBlocked`, at once), and a measurement during which it went down (the loads and the
    WebSocket probes stop at once then) fails tied to that event, not as a measurement of it.
    The loads bound themselves, but a cancellation that never completes (a transport stuck in its
    cleanup) would hang `asyncio.run` for ever; the thread join is the backstop that cannot hang.
    A thread still running after its budget is left behind (daemon) and reported in one line.
    """
    health = ctx.health
    websocket = group == "ws"
    if health is not None:
        health.before_request(f"the {group!r} measurement", websocket=websocket)
    outcome: dict[str, Any] = {}

    def main() -> None:
        try:
            outcome["result"] = asyncio.run(MEASURE[group](ctx))
        except BaseException as exc:  # handed to the test thread, which re-raises it
            outcome["error"] = exc

    budget = budget_s(group, ctx.plan)
    worker = threading.Thread(target=main, name=f"etlverify-perf-{group}", daemon=True)
    t0 = time.monotonic()
    worker.start()
    while worker.is_alive() and time.monotonic() - t0 < budget:
        if tick is not None:
            tick(time.monotonic() - t0)
        worker.join(min(1.0, max(0.0, budget - (time.monotonic() - t0))))
    elapsed = time.monotonic() - t0
    down = None
    if health is not None:
        down = health.down or (health.ws_down if websocket else None)
    if down is not None and health is not None:
        raise TargetBlocked(
            f"performance: the {group!r} measurement stopped after {elapsed:.1f} s: "
            f"{health.down_text(down)}; nothing more was sent",
            down,
        )
    if worker.is_alive():
        state = f"; the target is {health.state()}" if health is not None else ""
        raise TargetError(
            f"performance: the {group!r} measurement did not finish within {budget:.0f} s: "
            f"the target or the transport hung{state}",
            kind="timeout",
        )
    if "error" in outcome:
        raise outcome["error"]
    result: GroupResult = outcome["result"]
    return result


@pytest.fixture(scope="session")
def perf_run(
    etl_perf: PerfCollector, etl_target: Target, etl_api: EtlClient, etl_settings: Settings
) -> PerfCollector:
    """The session's collector, ready to measure: each group the selected performance tests read
    (`perf_uses`) is measured by the first test that reads it, in plan order (`group()`), and
    judged against the baseline. Every load is bounded in count and time."""
    etl_perf.set_environment(etl_target.status, _flags(etl_api))
    headers = {"Authorization": f"Bearer {etl_api.token}"} if etl_api.token else {}
    profiles = etl_settings.job_profiles
    ctx = Context(
        base_url=etl_target.base_url,
        ws_url=etl_target.ws_url,
        headers=headers,
        job_type=etl_settings.job_types[0],
        quick_profile=profiles["quick"],
        long_profile=profiles["long"],
        plan=etl_perf.plan,
        request_timeout=etl_settings.request_timeout,
        health=health_for(etl_target.base_url),
    )
    etl_perf.measurer = lambda group, _phase, tick: _measure_bounded(group, ctx, tick)
    return etl_perf
