"""The section's measurements: one async function per group of `PerfPlan`, each bounded in time.

Each returns a `GroupResult` for the session's `PerfCollector`. Failures of the target are
measured (errors, problems), never raised, except when a precondition cannot be set up (the job
that `GET /api/jobs/{id}` reads), which is a `TargetError` with the reason.

Every measurement consults the run's `TargetHealth` (`Context.health`): the loads and the
WebSocket probes stop at once when the target is known to be down, and the follow-up requests
(rate-limit headers, the pool's settling) are not sent to a target known to be down.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import httpx

from etlverify.errors import TargetError
from etlverify.measure import (
    MetricResult,
    RequestSpec,
    ServerSample,
    ServerTrace,
    identity_address,
    measure_ws_push,
    run_closed,
    run_open,
)
from etlverify.measure.sampler import METRICS_PATH, parse_metrics
from etlverify.pytest_plugin.performance import (
    POOL_METRIC,
    USERS_METRIC,
    WS_METRIC,
    GroupResult,
    PerfPlan,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping, Sequence

    from etlverify.health import TargetHealth

#: What a job created under load writes to; the reference ignores it, a real server may not.
TARGET_CONFIG = "sink=memory"
DB_FIELDS = ("connections_active", "connections_idle", "connection_timeouts", "connection_failures")
#: How long the pool gets, after the load, to hand its connections back.
POOL_SETTLE_S = 3.0


@dataclass(frozen=True)
class Context:
    """What every measurement needs: where the target is, how to talk to it, and the plan."""

    base_url: str
    ws_url: str
    headers: Mapping[str, str]
    job_type: str
    quick_profile: str
    long_profile: str
    plan: PerfPlan
    request_timeout: float = 10.0
    #: the run's view of the target's health (every measurement consults it)
    health: TargetHealth | None = None

    @property
    def down(self) -> bool:
        """The target is known to be down: send nothing more."""
        return self.health is not None and self.health.down is not None

    def client(self, connections: int) -> httpx.AsyncClient:
        """An AsyncClient sized for `connections` concurrent requests, never using a proxy."""
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=dict(self.headers),
            timeout=self.request_timeout,
            limits=httpx.Limits(
                max_connections=connections + 2, max_keepalive_connections=connections + 2
            ),
            trust_env=False,
        )

    def job_body(self, profile: str) -> dict[str, Any]:
        """A job creation body with one of the job profiles' source_config."""
        return {"type": self.job_type, "source_config": profile, "target_config": TARGET_CONFIG}


async def _probe_job(ctx: Context, client: httpx.AsyncClient) -> str:
    """Create one quick job for `GET /api/jobs/{id}` and wait (bounded) until it is done."""
    health = ctx.health
    if health is not None:
        health.before_request("POST /api/jobs (the performance probe job)")  # blocked if down
    started = time.time()
    try:
        resp = await client.post("/api/jobs", json=ctx.job_body(ctx.quick_profile))
        job_id = str(resp.json().get("job_id", "")) if resp.status_code in (200, 201) else ""
    except httpx.TransportError as exc:
        await _no_answer(health, "POST /api/jobs", exc, started)
        kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "dropped"
        if "refused" in str(exc).lower():
            kind = "refused"
        words = {"timeout": "no answer in time", "refused": "connection refused"}
        raise TargetError(
            "performance: could not create the probe job: POST /api/jobs: "
            + words.get(kind, "the connection was dropped"),
            kind=kind,
        ) from None
    except (httpx.HTTPError, ValueError):
        raise TargetError(
            "performance: could not create the probe job: POST /api/jobs did not answer with "
            "a JSON body"
        ) from None
    if health is not None and job_id:
        health.note_answered("POST /api/jobs", resp.status_code, job_id)
    if not job_id:
        raise TargetError(
            f"performance: POST /api/jobs answered {resp.status_code} {resp.text[:200]!r}; "
            "the job read under load could not be created"
        )
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and not ctx.down:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            got = await client.get(f"/api/jobs/{job_id}")
            if got.json().get("status") in ("completed", "failed", "cancelled"):
                break
        await asyncio.sleep(0.1)
    return job_id


#: The contract's rate-limit window (fixed one-minute windows), when a 429 body does not say.
CONTRACT_WINDOW_S = 60.0
_PER_WINDOW = re.compile(r"per\s+(\d+(?:\.\d+)?)\s*s")


async def rate_limit_facts(
    client: httpx.AsyncClient,
    metrics: Mapping[str, MetricResult],
    specs: Sequence[RequestSpec],
    health: TargetHealth | None = None,
) -> dict[str, Any] | None:
    """When the target answered 429: the lowest limit it advertises over the paths of the most
    limited metric (`X-RateLimit-Limit`; window from a 429 body, else the contract's minute), and
    on which route, else None. One GET per distinct path reads the headers (every answer under a
    rule carries them; a metric can mix paths, e.g. the users' mixed reads).
    """
    counts = {name: int(m.merged.error_kinds.get("http_429", 0)) for name, m in metrics.items()}
    worst = max(counts, key=lambda name: counts[name], default=None)
    if worst is None or not counts[worst]:
        return None
    if health is not None and health.down is not None:
        return None  # nothing is sent to a target known to be down
    paths = list(dict.fromkeys(r.path for r in specs if r.metric == worst)) or ["/api/health"]
    facts: dict[str, Any] = {"route": None, "limit": None, "window_s": None}
    for path in paths:
        try:
            resp = await client.get(path, timeout=5.0)
        except httpx.HTTPError:
            continue
        limit = resp.headers.get("x-ratelimit-limit", "").strip()
        if not limit.isdigit() or (facts["limit"] is not None and int(limit) >= facts["limit"]):
            continue
        found = _PER_WINDOW.search(resp.text) if resp.status_code == 429 else None
        route = path.split("?")[0]
        if route.count("/") > 3:  # /api/jobs/<id>: name the route, not the job
            route = route.rsplit("/", 1)[0] + "/{id}"
        facts.update(
            route=route,
            limit=int(limit),
            window_s=float(found.group(1)) if found else CONTRACT_WINDOW_S,
        )
    return facts


async def _sample_until(
    client: httpx.AsyncClient,
    interval_s: float,
    stop: asyncio.Event,
    health: TargetHealth | None = None,
) -> ServerTrace:
    """Poll /api/health/metrics every `interval_s` until `stop` is set.

    Not `ServerSampler`: it is stopped by cancelling a task that sits in `asyncio.wait_for`, and on
    Python 3.11 wait_for can swallow that cancellation when the poll completes at the same moment,
    so `stop()` then waits for ever (seen here twice). An event checked every round cannot be lost.
    """
    samples: list[ServerSample] = []
    t0 = time.monotonic()
    next_at = t0
    while not stop.is_set():
        t = time.monotonic() - t0
        if health is not None and health.down is not None:
            samples.append(ServerSample(t, ok=False, error="not polled: the target is down"))
            await stop.wait()
            break
        try:
            resp = await client.get(METRICS_PATH, timeout=min(5.0, interval_s * 4))
            if resp.status_code == 200:
                samples.append(parse_metrics(t, resp.json()))
            else:
                samples.append(ServerSample(t, ok=False, error=f"HTTP {resp.status_code}"))
        except (httpx.HTTPError, ValueError) as exc:
            reason = "no answer in time" if isinstance(exc, httpx.TimeoutException) else ""
            samples.append(ServerSample(t, ok=False, error=(reason or str(exc) or "failed")[:200]))
        next_at += interval_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
    return ServerTrace(samples=tuple(samples), interval_s=interval_s)


async def measure_routes(ctx: Context) -> GroupResult:
    """Open-model load over the four key routes, interleaved, with server sampling."""
    load = ctx.plan.routes
    async with ctx.client(load.max_concurrency + 1) as client:
        job_id = await _probe_job(ctx, client)
        specs = [
            RequestSpec("GET", "/api/health", expected_status=(200,)),
            RequestSpec("GET", "/api/jobs?limit=20", name="GET /api/jobs", expected_status=(200,)),
            RequestSpec(
                "GET", f"/api/jobs/{job_id}", name="GET /api/jobs/{id}", expected_status=(200,)
            ),
            RequestSpec(
                "POST",
                "/api/jobs",
                json=ctx.job_body(ctx.quick_profile),
                expected_status=(200, 201),
            ),
        ]
        stop = asyncio.Event()
        sampler = asyncio.create_task(
            _sample_until(client, ctx.plan.sample_interval_s, stop, ctx.health)
        )
        try:
            run = await run_open(client, specs, load, health=ctx.health)
        finally:
            stop.set()
            trace = await sampler
        limited = await rate_limit_facts(client, run.metrics, specs, ctx.health)
    attempts = sum(m.count + m.errors for m in run.metrics.values())
    successes = sum(m.count for m in run.metrics.values())
    return GroupResult(
        name="routes",
        metrics=dict(run.metrics),
        run=replace(run, server=trace),
        trace=trace,
        facts={
            "intended_rps": load.rate_rps,
            "achieved_rps": round(successes / load.duration_s, 3),
            "attempts": attempts,
            "successes": successes,
            "late": run.late,
            "unsent": run.unsent,
            "longest_outage_s": run.longest_outage_s,
            "probe_job": job_id,
            "rate_limit": limited,
            "stopped": run.stopped,
        },
    )


async def measure_users(ctx: Context) -> GroupResult:
    """Closed-model load: N users each looping over the read routes with think time."""
    load = ctx.plan.users
    async with ctx.client(load.users) as client:
        job_id = await _probe_job(ctx, client)
        specs = [
            RequestSpec("GET", path, name=USERS_METRIC, expected_status=(200,))
            for path in (
                "/api/health",
                "/api/jobs?limit=20",
                f"/api/jobs/{job_id}",
                "/api/monitor/metrics",
            )
        ]
        run = await run_closed(client, specs, load, health=ctx.health)
        limited = await rate_limit_facts(client, run.metrics, specs, ctx.health)
    metric = run.metrics[USERS_METRIC]
    return GroupResult(
        name="users",
        metrics=dict(run.metrics),
        run=run,
        facts={
            "users": load.users,
            "requests": metric.count + metric.errors,
            "errors": metric.errors,
            "error_kinds": dict(metric.merged.error_kinds),
            "throughput_rps": round(metric.count / load.duration_s, 3),
            "rate_limit": limited,
            "stopped": run.stopped,
        },
    )


async def _db_block(
    client: httpx.AsyncClient, health: TargetHealth | None = None
) -> dict[str, Any] | None:
    """The `metrics.database` block of `/api/health/metrics`, or None when unavailable (or the
    target is known to be down: nothing is sent then)."""
    if health is not None and health.down is not None:
        return None
    started = time.time()
    try:
        resp = await client.get("/api/health/metrics", timeout=5.0)
        block = resp.json().get("metrics", {}).get("database")
    except httpx.TransportError as exc:
        await _no_answer(health, "GET /api/health/metrics", exc, started)
        return None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return dict(block) if isinstance(block, dict) else None


async def _no_answer(
    health: TargetHealth | None, what: str, exc: httpx.TransportError, started: float
) -> None:
    """Hand a request without an answer to the health view (it probes once, in a thread)."""
    if health is None or health.down is not None:
        return
    kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "dropped"
    if "refused" in str(exc).lower():
        kind = "refused"
    await asyncio.to_thread(health.on_no_answer, what, kind, started=started)


async def measure_pool(ctx: Context) -> GroupResult:
    """Concurrent job creation (closed model) while the database counters are polled."""
    load = ctx.plan.pool
    snapshots: list[tuple[float, dict[str, Any] | None]] = []
    async with ctx.client(load.users + 1) as client:
        t0 = time.monotonic()
        before = await _db_block(client, ctx.health)
        snapshots.append((0.0, before))
        stop = asyncio.Event()

        async def poll() -> None:
            while not stop.is_set():
                snapshots.append((time.monotonic() - t0, await _db_block(client, ctx.health)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)

        poller = asyncio.create_task(poll())
        spec = RequestSpec(
            "POST",
            "/api/jobs",
            name=POOL_METRIC,
            json=ctx.job_body(ctx.quick_profile),
            expected_status=(200, 201),
        )
        try:
            run = await run_closed(client, [spec], load, health=ctx.health)
        finally:
            stop.set()
            if ctx.down:
                poller.cancel()  # its request in flight would only wait out its timeout
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        limited = await rate_limit_facts(client, run.metrics, [spec], ctx.health)
        # A pool that hands connections back returns to its resting level shortly after the load.
        rest_active = (before or {}).get("connections_active")
        settled: dict[str, Any] | None = None
        deadline = time.monotonic() + POOL_SETTLE_S
        while time.monotonic() < deadline and not ctx.down:
            settled = await _db_block(client, ctx.health)
            snapshots.append((time.monotonic() - t0, settled))
            active = (settled or {}).get("connections_active")
            if (
                isinstance(active, int | float)
                and isinstance(rest_active, int | float)
                and active <= rest_active
            ):
                break
            await asyncio.sleep(0.2)
    metric = run.metrics[POOL_METRIC]
    return GroupResult(
        name="pool",
        metrics=dict(run.metrics),
        run=run,
        facts={
            "before": before,
            "after": settled,
            "samples": [block for _, block in snapshots],
            "times": [round(t, 3) for t, _ in snapshots],
            "jobs_created": metric.count,
            "errors": metric.errors,
            "error_kinds": dict(metric.merged.error_kinds),
            "rate_limit": limited,
            "stopped": run.stopped,
        },
    )


async def measure_ws(ctx: Context) -> GroupResult:
    """`probes` WebSocket push measurements; each probe's cancel latencies are one trial window."""
    plan = ctx.plan.ws
    windows = []
    facts: dict[str, Any] = {
        "connections": plan.connections,
        "jobs": 0,
        "expected": 0,
        "received": 0,
        "lost": 0,
        "duplicates": 0,
        "out_of_order": 0,
        "messages": 0,
        "problems": [],
        "messages_per_s": [],
        "stopped": "",
    }
    start = time.perf_counter()
    for k in range(plan.probes):
        if ctx.health is not None and (ctx.health.down or ctx.health.ws_down):
            break  # the probe that met it said so (`stopped`)
        offset = time.perf_counter() - start
        result = await measure_ws_push(
            ctx.ws_url,
            ctx.base_url,
            connections=plan.connections,
            jobs=plan.jobs,
            job_type=ctx.job_type,
            source_config=ctx.long_profile,
            target_config=TARGET_CONFIG,
            run_before_cancel_s=plan.run_before_cancel_s,
            timeout_s=plan.timeout_s,
            # Each probe is its own client identity (rate limits count per client).
            headers={**ctx.headers, "X-Forwarded-For": identity_address(10_000 + k)},
            job_prefix=f"etlv_perfws{k}",
            health=ctx.health,
        )
        facts["stopped"] = facts["stopped"] or result.stopped
        for key in ("jobs", "expected", "received", "lost", "duplicates", "out_of_order"):
            facts[key] += getattr(result, key)
        facts["messages"] += result.messages
        facts["problems"] += [f"probe {k}: {p}" for p in result.problems]
        facts["messages_per_s"].append(result.messages_per_s)
        window = result.cancel_latency.windows[0]
        # The probe's own span is the window: throughput is cancel pushes delivered per second.
        windows.append(
            replace(
                window,
                index=k,
                start_s=round(offset, 6),
                duration_s=max(result.duration_s, 1e-3),
            )
        )
    return GroupResult(
        name="ws",
        metrics={WS_METRIC: MetricResult(name=WS_METRIC, windows=tuple(windows))},
        facts=facts,
    )


def budget_s(group: str, plan: PerfPlan) -> float:
    """The hard time budget of one group: its load plus every bounded wait it may add."""
    if group == "routes":
        return plan.routes.duration_s + plan.routes.timeout_s + 30.0
    if group in ("users", "pool"):
        shape = plan.users if group == "users" else plan.pool
        return shape.duration_s + shape.timeout_s + 30.0
    return plan.ws.probes * (plan.ws.timeout_s * 3 + 5.0)


MEASURE: dict[str, Callable[[Context], Coroutine[Any, Any, GroupResult]]] = {
    "routes": measure_routes,
    "users": measure_users,
    "pool": measure_pool,
    "ws": measure_ws,
}
