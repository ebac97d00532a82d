"""Open- and closed-model load generators against httpx.MockTransport (no network)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from etlverify.health import TargetHealth
from etlverify.measure import (
    ClosedLoad,
    OpenLoad,
    RequestSpec,
    RunResult,
    identity_address,
    run_closed,
    run_load,
    run_open,
)
from etlverify.measure.load import _schedule

BASE = "http://target.test"


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"ok": True})


def test_open_model_sends_on_schedule_into_windows() -> None:
    result = run_load(
        BASE,
        [RequestSpec("GET", "/api/health")],
        OpenLoad(rate_rps=200, duration_s=0.5, windows=5),
        transport=httpx.MockTransport(_ok),
    )
    metric = result.metrics["GET /api/health"]
    assert metric.count == 100
    assert [w.count for w in metric.windows] == [20] * 5
    assert all(w.duration_s == pytest.approx(0.1) for w in metric.windows)
    assert metric.windows[0].throughput_rps == pytest.approx(200)
    assert metric.errors == 0
    assert result.load.model == "open"
    assert result.load.rate_rps == 200
    assert result.longest_outage_s == 0


def test_open_model_latency_counts_from_intended_time_through_a_stall() -> None:
    """A 300 ms stall with one connection: every request due during it is late and slow."""
    calls = {"n": 0}

    async def stalling(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 21:  # the request intended at t = 0.20 s
            await asyncio.sleep(0.3)
        return httpx.Response(200)

    result = run_load(
        BASE,
        [RequestSpec("GET", "/api/jobs")],
        OpenLoad(rate_rps=100, duration_s=1.0, windows=5, max_concurrency=1),
        transport=httpx.MockTransport(stalling),
    )
    windows = result.metrics["GET /api/jobs"].windows
    assert result.metrics["GET /api/jobs"].count == 100
    # Window 1 covers intended times 0.2-0.4 s; all of them waited for the stall to end (~0.5 s),
    # so each has 100-300 ms of latency although the server answered them instantly.
    assert windows[1].p50_ms is not None
    assert windows[1].p50_ms > 100
    assert windows[1].late >= 19
    assert windows[0].p50_ms is not None
    assert windows[0].p50_ms < 50
    assert result.late >= 25
    # A coordinated-omission tool would show one slow sample; here ~20 are over 100 ms.
    merged = result.metrics["GET /api/jobs"].merged
    assert merged.p90_ms is not None
    assert merged.p90_ms > 50


def test_errors_are_counted_per_route_and_never_raised() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/b":
            return httpx.Response(503, json={"code": "DATABASE_ERROR"})
        if request.url.path == "/c":
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/d":
            await asyncio.sleep(30)  # ignores the timeout: the wait_for backstop must cut it
        return httpx.Response(200)

    specs = [RequestSpec("GET", p) for p in ("/a", "/b", "/c", "/d")]
    t0 = time.monotonic()
    result = run_load(
        BASE,
        specs,
        OpenLoad(rate_rps=80, duration_s=0.5, windows=2, timeout_s=0.1),
        transport=httpx.MockTransport(handler),
    )
    assert time.monotonic() - t0 < 0.5 + 0.1 + 1.0 + 0.5  # the hard deadline holds
    m = result.metrics
    assert m["GET /a"].errors == 0
    assert m["GET /a"].count == 10
    assert m["GET /b"].count == 0
    assert {k for w in m["GET /b"].windows for k in w.error_kinds} == {"http_503"}
    assert {k for w in m["GET /c"].windows for k in w.error_kinds} == {"connection"}
    assert {k for w in m["GET /d"].windows for k in w.error_kinds} == {"timeout"}
    assert m["GET /d"].errors == 10


def test_expected_status_makes_other_statuses_errors() -> None:
    result = run_load(
        BASE,
        [RequestSpec("POST", "/api/jobs", json={"type": "extract"}, expected_status=(201,))],
        OpenLoad(rate_rps=100, duration_s=0.1, windows=1),
        transport=httpx.MockTransport(_ok),
    )
    window = result.metrics["POST /api/jobs"].windows[0]
    assert window.count == 0
    assert dict(window.error_kinds) == {"http_200": 10}


def test_unsent_requests_at_hard_deadline_are_counted() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    t0 = time.monotonic()
    result = run_load(
        BASE,
        [RequestSpec("GET", "/slow")],
        OpenLoad(rate_rps=50, duration_s=0.2, windows=1, max_concurrency=1, timeout_s=0.2),
        transport=httpx.MockTransport(hang),
    )
    assert time.monotonic() - t0 < 0.2 + 0.2 + 1.0 + 0.5
    metric = result.metrics["GET /slow"]
    assert metric.count == 0
    assert metric.errors == 10
    assert result.unsent >= 7
    assert metric.windows[0].error_kinds["unsent"] == result.unsent
    assert result.longest_outage_s > 1.0


def test_identities_give_each_virtual_client_its_own_forwarded_for() -> None:
    seen: list[str | None] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("X-Forwarded-For"))
        return httpx.Response(200)

    run_load(
        BASE,
        [RequestSpec("GET", "/x")],
        OpenLoad(rate_rps=100, duration_s=0.1, windows=1, identities=3),
        transport=httpx.MockTransport(record),
    )
    assert set(seen) == {identity_address(i) for i in range(3)}
    assert len(set(seen)) == 3
    seen.clear()
    run_load(
        BASE,
        [RequestSpec("GET", "/x")],
        OpenLoad(rate_rps=100, duration_s=0.05, windows=1),
        transport=httpx.MockTransport(record),
    )
    assert set(seen) == {None}


def test_poisson_schedule_is_seeded_and_bounded() -> None:
    load = OpenLoad(rate_rps=1000, duration_s=2.0, poisson=True, seed=7)
    a, b = _schedule(load), _schedule(load)
    assert a == b
    assert 1800 < len(a) < 2200
    assert all(0 <= t < 2.0 for t in a)
    assert len(_schedule(OpenLoad(rate_rps=1000, duration_s=2.0, max_requests=50))) == 50


def test_callable_request_source_and_max_requests() -> None:
    result = run_load(
        BASE,
        lambda i: RequestSpec("GET", f"/api/jobs/job_{i % 2}", name="GET /api/jobs/{id}"),
        OpenLoad(rate_rps=500, duration_s=1.0, windows=1, max_requests=25),
        transport=httpx.MockTransport(_ok),
    )
    assert list(result.metrics) == ["GET /api/jobs/{id}"]
    assert result.metrics["GET /api/jobs/{id}"].count == 25


def test_closed_model_users_loop_with_think_time() -> None:
    seen: set[str | None] = set()

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.add(request.headers.get("X-Forwarded-For"))
        await asyncio.sleep(0.005)
        return httpx.Response(200)

    t0 = time.monotonic()
    result = run_load(
        BASE,
        [RequestSpec("GET", "/a"), RequestSpec("GET", "/b")],
        ClosedLoad(users=3, duration_s=0.3, windows=3, think_time_s=0.01, identities=True),
        transport=httpx.MockTransport(handler),
    )
    assert time.monotonic() - t0 < 2.0
    assert len(seen) == 3
    total = sum(m.count for m in result.metrics.values())
    # 3 users, ~15 ms per loop, 0.3 s: roughly 60 requests.
    assert 20 < total < 80
    assert all(len(m.windows) == 3 for m in result.metrics.values())
    assert result.load.model == "closed"
    assert result.load.users == 3


def test_closed_model_hard_deadline_cancels_hanging_requests() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    async def main() -> RunResult:
        async with httpx.AsyncClient(base_url=BASE, transport=httpx.MockTransport(hang)) as c:
            return await run_closed(
                c, [RequestSpec("GET", "/h")], ClosedLoad(users=2, duration_s=0.1, timeout_s=0.1)
            )

    t0 = time.monotonic()
    result = asyncio.run(main())
    assert time.monotonic() - t0 < 2.0
    assert result.metrics["GET /h"].errors == 2
    assert result.metrics["GET /h"].count == 0


def test_run_result_json_round_trip_with_server_samples() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/health/metrics":
            return httpx.Response(200, json={"metrics": {"memory_usage": 1000, "cpu_usage": 3}})
        return httpx.Response(200)

    async def main() -> RunResult:
        async with httpx.AsyncClient(base_url=BASE, transport=httpx.MockTransport(handler)) as c:
            return await run_open(
                c,
                [RequestSpec("GET", "/api/jobs")],
                OpenLoad(rate_rps=100, duration_s=0.2, windows=2, sample_interval_s=0.05),
            )

    result = asyncio.run(main())
    assert result.server is not None
    assert len(result.server.samples) >= 3
    text = json.dumps(result.to_json(), sort_keys=True, allow_nan=False)
    assert RunResult.from_json(json.loads(text)) == result


def test_bad_load_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="rate_rps"):
        OpenLoad(rate_rps=0, duration_s=1)
    with pytest.raises(ValueError, match="users"):
        ClosedLoad(users=0, duration_s=1)


class _DeadHealth(TargetHealth):
    """A health view whose fresh-connection probe finds the target gone (no network)."""

    def probe(self) -> str | None:
        return "connection refused"


def _refusing_after(n: int) -> httpx.MockTransport:
    """Answers `n` requests (POST /api/jobs creates a job), then refuses connections."""
    seen = {"count": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["count"] += 1
        if seen["count"] > n:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if request.method == "POST":
            return httpx.Response(201, json={"job_id": f"job_{seen['count']}"})
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("model", ["open", "closed"])
def test_a_load_stops_at_once_when_the_target_goes_away(model: str) -> None:
    """Issue 17 item 2: the first refused request is handed to the health view, which finds the
    target gone; the load stops there instead of running out its duration."""
    health = _DeadHealth(BASE)
    spec = [RequestSpec("POST", "/api/jobs", expected_status=(201,))]

    async def main() -> RunResult:
        async with httpx.AsyncClient(base_url=BASE, transport=_refusing_after(5)) as client:
            if model == "open":
                load = OpenLoad(rate_rps=50, duration_s=10.0, windows=2)
                return await run_open(client, spec, load, health=health)
            closed = ClosedLoad(users=2, duration_s=10.0, windows=2, think_time_s=0.02)
            return await run_closed(client, spec, closed, health=health)

    t0 = time.monotonic()
    run = asyncio.run(main())
    assert time.monotonic() - t0 < 3.0
    assert health.down is not None
    assert run.stopped.startswith(f"the {model}-model load stopped: the target has refused")
    assert run.duration_s < 3.0
    assert RunResult.from_json(run.to_json()).stopped == run.stopped
    # the target's last moments: the job it created last, then the first refusal
    assert "created job_5" in health.down.moments
    assert health.requests >= 6


def test_a_load_without_health_runs_out_its_duration_as_before() -> None:
    load = OpenLoad(rate_rps=40, duration_s=0.5, windows=1)
    run = run_load(BASE, [RequestSpec("GET", "/x")], load, transport=httpx.MockTransport(_ok))
    assert run.stopped == ""
    assert "stopped" not in run.to_json()
