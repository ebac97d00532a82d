"""Server sampler and memory trend fitting."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from etlverify.measure import ServerSampler, ServerTrace, trend
from etlverify.measure.sampler import parse_metrics


def test_trend_detects_steady_growth_and_ignores_flat_noise() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(60.0)
    growing = 100e6 + 1e6 * t + rng.normal(0, 2e5, 60)  # +60% over the span
    flat = 100e6 + rng.normal(0, 2e6, 60)
    up = trend(list(t), list(growing))
    assert up.slope_per_s == pytest.approx(1e6, rel=0.05)
    assert up.p_value < 1e-6
    assert up.steady_growth()
    level = trend(list(t), list(flat))
    assert not level.steady_growth()
    ols = trend(list(t), list(growing), method="linregress")
    assert ols.slope_per_s == pytest.approx(1e6, rel=0.05)
    assert ols.to_json()["method"] == "linregress"


def test_theil_sen_is_robust_to_gc_spikes() -> None:
    t = np.arange(40.0)
    values = np.full(40, 100e6)
    values[::7] = 300e6  # periodic spikes, no growth
    assert not trend(list(t), list(values)).steady_growth()


def test_trend_degenerate_inputs() -> None:
    assert trend([0.0, 1.0], [1.0, 2.0]).p_value == 1.0
    assert trend([0.0, 1.0, 2.0], [5.0, 5.0, 5.0]).slope_per_s == 0.0
    with pytest.raises(ValueError, match="unknown trend method"):
        trend([0.0, 1.0, 2.0], [1.0, 2.0, 4.0], method="magic")


def test_parse_metrics_body() -> None:
    body = {
        "metrics": {
            "memory_usage": 123.0,
            "memory_percent": 12.5,
            "cpu_usage": 3,
            "database": {"connection_failures": 2},
            "requests": {"total": 10, "errors": 1},
        }
    }
    sample = parse_metrics(1.0, body)
    assert sample.ok
    assert (sample.memory_usage, sample.memory_percent, sample.connection_failures) == (
        123.0,
        12.5,
        2.0,
    )
    assert not parse_metrics(1.0, {"status": "ok"}).ok
    assert parse_metrics(1.0, {"metrics": {"memory_usage": "lots"}}).memory_usage is None


def test_sampler_polls_records_failures_and_stops() -> None:
    calls = {"n": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 3:
            return httpx.Response(503)
        if calls["n"] == 4:
            await asyncio.sleep(5)  # longer than the sampler's timeout
        return httpx.Response(200, json={"metrics": {"memory_usage": 1000.0 * calls["n"]}})

    async def main() -> ServerTrace:
        transport = httpx.MockTransport(handler)
        async with httpx.AsyncClient(base_url="http://t", transport=transport) as client:
            async with ServerSampler(client, interval_s=0.02, timeout_s=0.05) as sampler:
                await asyncio.sleep(0.8)
            return sampler.trace()

    got = asyncio.run(main())
    assert len(got.samples) >= 6
    assert got.failed == 2
    errors = [s.error for s in got.samples if not s.ok]
    assert errors[0] == "HTTP 503"
    assert errors[1] is not None
    assert errors[1].startswith("no answer within")
    assert got.trend("memory_usage").slope_per_s > 0
    assert ServerTrace.from_json(got.to_json()) == got
