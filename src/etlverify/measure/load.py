"""Open- and closed-model HTTP load generators (asyncio + httpx).

Open model (`run_open`): requests follow an arrival schedule (constant rate, or Poisson with a fixed
seed) that does not wait for answers. Each request's latency is measured from its *intended* send
time, so a server stall shows up as latency for every request that should have gone out during it
(no coordinated omission). A concurrency cap bounds in-flight requests; a request that has to wait
for a free slot (or that the event loop sends late) is counted as `late`, and its latency still runs
from the intended time. A request still waiting at the hard deadline is an `unsent` error.

Closed model (`run_closed`): N users loop request -> answer -> think. Its latencies are service
times (each user waits for its answer), which understate queueing under overload; it is provided
because throughput at fixed concurrency is what a closed model measures well.

Both are bounded: a hard deadline of `duration_s + timeout_s + 1 s`, every request with a timeout,
and errors (timeouts, connection errors, 5xx, unexpected statuses) counted per route, never raised.
Results are split into `windows` trial windows of equal duration by intended send time.

With the run's `TargetHealth` (`health=`), both report every request, connection and answer to it
(`etlverify.measure.guard`) and stop at once when the target is known to be down (it stopped
answering, or refuses connections): requests in flight are cancelled, nothing more is sent, and
the result's `stopped` says why. No budget is waited out against a target known to be down.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from etlverify.measure.guard import HealthGuard
from etlverify.measure.histogram import LatencyRecorder
from etlverify.measure.results import LoadParameters, RunResult, longest_outage
from etlverify.measure.sampler import ServerSampler

if TYPE_CHECKING:
    from etlverify.health import TargetHealth

__all__ = [
    "ClosedLoad",
    "OpenLoad",
    "RequestSpec",
    "identity_address",
    "run_closed",
    "run_load",
    "run_open",
    "send_one",
]

#: Extra time after the last deadline that a run may take to cancel and collect its tasks.
GRACE_S = 1.0
#: How often a run waiting for its requests looks at the target's health.
HEALTH_POLL_S = 0.1


@dataclass(frozen=True)
class RequestSpec:
    """One kind of request; `metric` (default `"METHOD path"`) names its histogram."""

    method: str
    path: str
    name: str | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Statuses that count as success; empty means "any status below 500".
    expected_status: tuple[int, ...] = ()

    @property
    def metric(self) -> str:
        """The metric name this request is recorded under."""
        return self.name or f"{self.method.upper()} {self.path}"


RequestSource = Sequence[RequestSpec] | Callable[[int], RequestSpec]


@dataclass(frozen=True)
class OpenLoad:
    """Open-model load shape: arrivals at `rate_rps` for `duration_s`."""

    rate_rps: float
    duration_s: float
    windows: int = 5
    max_requests: int | None = None
    max_concurrency: int = 64
    poisson: bool = False
    seed: int = 0
    timeout_s: float = 5.0
    #: A send more than this after its intended time counts as late.
    late_after_s: float = 0.005
    #: Number of virtual clients, each with its own X-Forwarded-For address (0: no header).
    identities: int = 0
    #: Poll /api/health/metrics at this interval during the run (None: no sampling).
    sample_interval_s: float | None = None

    def __post_init__(self) -> None:
        if self.rate_rps <= 0 or self.duration_s <= 0 or self.windows < 1:
            raise ValueError("rate_rps and duration_s must be > 0 and windows >= 1")
        if self.max_concurrency < 1 or self.timeout_s <= 0:
            raise ValueError("max_concurrency must be >= 1 and timeout_s > 0")

    def parameters(self, routes: Sequence[str]) -> LoadParameters:
        """The `LoadParameters` a run of this shape over `routes` reports (and a baseline keeps)."""
        return LoadParameters(
            model="open",
            duration_s=self.duration_s,
            windows=self.windows,
            rate_rps=self.rate_rps,
            poisson=self.poisson,
            max_concurrency=self.max_concurrency,
            max_requests=self.max_requests,
            timeout_s=self.timeout_s,
            identities=self.identities,
            routes=tuple(sorted(routes)),
        )


@dataclass(frozen=True)
class ClosedLoad:
    """Closed-model load shape: `users` loops for `duration_s`."""

    users: int
    duration_s: float
    windows: int = 5
    think_time_s: float = 0.0
    #: Draw think times from an exponential distribution with mean `think_time_s`.
    random_think: bool = False
    seed: int = 0
    max_requests: int | None = None
    timeout_s: float = 5.0
    #: Give each user its own X-Forwarded-For address.
    identities: bool = False
    sample_interval_s: float | None = None

    def __post_init__(self) -> None:
        if self.users < 1 or self.duration_s <= 0 or self.windows < 1 or self.timeout_s <= 0:
            raise ValueError("users >= 1, duration_s > 0, windows >= 1 and timeout_s > 0 needed")

    def parameters(self, routes: Sequence[str]) -> LoadParameters:
        """The `LoadParameters` a run of this shape over `routes` reports (and a baseline keeps)."""
        return LoadParameters(
            model="closed",
            duration_s=self.duration_s,
            windows=self.windows,
            users=self.users,
            think_time_s=self.think_time_s,
            max_requests=self.max_requests,
            timeout_s=self.timeout_s,
            identities=self.users if self.identities else 0,
            routes=tuple(sorted(routes)),
        )


def identity_address(client_index: int) -> str:
    """A stable private address for virtual client `client_index` (10.x.y.z, never .0)."""
    k = client_index + 1
    return f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255 or 1}"


def _pick(requests: RequestSource, i: int) -> RequestSpec:
    if callable(requests):
        return requests(i)
    return requests[i % len(requests)]


def _routes(requests: RequestSource) -> tuple[str, ...]:
    return () if callable(requests) else tuple(sorted({r.metric for r in requests}))


async def _finish_by(
    tasks: set[asyncio.Task[None]], hard_deadline: float, guard: HealthGuard | None = None
) -> None:
    """Wait for `tasks` until `hard_deadline` (perf_counter), or until `guard` says the target is
    down, then cancel what is left."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        left = hard_deadline - time.perf_counter()
        if left <= 0 or (guard is not None and guard.should_stop()):
            break
        step = min(left, HEALTH_POLL_S) if guard is not None and guard.health else left
        _, pending = await asyncio.wait(pending, timeout=step)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _created_job(spec: RequestSpec, resp: httpx.Response) -> str:
    if spec.method.upper() != "POST" or resp.status_code not in (200, 201):
        return ""
    if not spec.path.split("?")[0].endswith("/api/jobs"):
        return ""
    try:
        body = resp.json()
    except ValueError:
        return ""
    job = body.get("job_id") if isinstance(body, dict) else None
    return str(job)[:80] if isinstance(job, str | int) else ""


async def send_one(
    client: httpx.AsyncClient,
    spec: RequestSpec,
    identity: str | None,
    timeout_s: float,
    guard: HealthGuard | None = None,
) -> str | None:
    """Send one request; None on success, else the error kind (never raises, except cancel).

    With a `guard`, the request, its new connections and its answer are reported to the target's
    health view, and a request that gets no answer is handed to it (see `etlverify.measure.guard`).
    """
    headers = dict(spec.headers)
    if identity:
        headers["X-Forwarded-For"] = identity
    what = f"{spec.method.upper()} {spec.path.split('?')[0]}"
    started = time.time()
    if guard is not None:
        guard.sent()
    try:
        # wait_for is the backstop for a transport that ignores httpx's own timeout.
        resp = await asyncio.wait_for(
            client.request(
                spec.method,
                spec.path,
                json=spec.json,
                headers=headers,
                timeout=timeout_s,
                extensions=dict(guard.trace()) if guard is not None else None,
            ),
            timeout_s + 0.5,
        )
    except (httpx.TimeoutException, TimeoutError) as exc:
        if guard is not None:
            await guard.no_answer(what, exc, started)
        return "timeout"
    except httpx.TransportError as exc:
        if guard is not None:
            await guard.no_answer(what, exc, started)
        return "connection"
    except httpx.HTTPError:
        return "bad_response"  # an answer httpx could not read (decoding, redirects)
    if guard is not None:
        guard.answered(what, resp.status_code, _created_job(spec, resp))
    if spec.expected_status:
        return None if resp.status_code in spec.expected_status else f"http_{resp.status_code}"
    return f"http_{resp.status_code}" if resp.status_code >= 500 else None


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _schedule(load: OpenLoad) -> list[float]:
    """Intended send offsets (seconds from start) within the duration and request cap."""
    rng = random.Random(load.seed)
    offsets: list[float] = []
    t = 0.0
    cap = load.max_requests if load.max_requests is not None else 10**9
    while t < load.duration_s and len(offsets) < cap:
        offsets.append(t)
        t = t + rng.expovariate(load.rate_rps) if load.poisson else len(offsets) / load.rate_rps
    return offsets


async def run_open(
    client: httpx.AsyncClient,
    requests: RequestSource,
    load: OpenLoad,
    *,
    health: TargetHealth | None = None,
) -> RunResult:
    """Run an open-model load against `client`'s base URL and return the windowed result
    (stopped at once when `health` knows the target is down)."""
    guard = HealthGuard(health, "the open-model load")
    rec = LatencyRecorder(windows=load.windows, window_s=load.duration_s / load.windows)
    for route in _routes(requests):
        rec.touch(route)
    sem = asyncio.Semaphore(load.max_concurrency)
    events: list[tuple[float, float, bool]] = []
    counters = {"late": 0, "unsent": 0}
    started_at = _now_iso()
    sampler = (
        ServerSampler(client, interval_s=load.sample_interval_s, timeout_s=load.timeout_s)
        if load.sample_interval_s
        else None
    )
    start = time.perf_counter() + 0.005
    hard_deadline = start + load.duration_s + load.timeout_s + GRACE_S

    async def one(i: int, offset: float) -> None:
        spec = _pick(requests, i)
        window = rec.window_of(offset)
        intended = start + offset
        identity = identity_address(i % load.identities) if load.identities else None
        acquired = False
        try:
            try:
                await asyncio.wait_for(sem.acquire(), max(0.0, hard_deadline - time.perf_counter()))
                acquired = True
            except TimeoutError:
                counters["unsent"] += 1
                counters["late"] += 1
                rec.record_error(spec.metric, "unsent", window=window, late=True)
                events.append((offset, time.perf_counter() - start, False))
                return
            sent = time.perf_counter()
            late = sent - intended > load.late_after_s
            counters["late"] += late
            budget = min(load.timeout_s, max(0.001, hard_deadline - sent))
            kind = await send_one(client, spec, identity, budget, guard)
            done = time.perf_counter()
            events.append((offset, done - start, kind is None))
            if kind is None:
                rec.record(spec.metric, done - intended, window=window, late=late)
            else:
                rec.record_error(spec.metric, kind, window=window, late=late)
        except asyncio.CancelledError:
            # Cancelled at the hard deadline: still waiting for a slot means never sent.
            if not acquired:
                counters["unsent"] += 1
                counters["late"] += 1
            kind = "deadline" if acquired else "unsent"
            rec.record_error(spec.metric, kind, window=window, late=not acquired)
            events.append((offset, time.perf_counter() - start, False))
            raise
        finally:
            if acquired:
                sem.release()

    if sampler:
        sampler.start()
    tasks: set[asyncio.Task[None]] = set()
    try:
        for i, offset in enumerate(_schedule(load)):
            if guard.should_stop():
                break
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.add(asyncio.create_task(one(i, offset)))
            if len(tasks) > 4 * load.max_concurrency:
                tasks = {t for t in tasks if not t.done()}
        await _finish_by(tasks, hard_deadline, guard)
    finally:
        trace = await sampler.stop() if sampler else None
    end = time.perf_counter() - start
    if not guard.stopped:
        end = max(end, load.duration_s)
    return RunResult(
        metrics=rec.results(),
        load=load.parameters(_routes(requests)),
        started_at=started_at,
        duration_s=round(end, 6),
        late=counters["late"],
        unsent=counters["unsent"],
        longest_outage_s=longest_outage(events, end),
        server=trace,
        stopped=guard.stopped,
    )


async def run_closed(
    client: httpx.AsyncClient,
    requests: RequestSource,
    load: ClosedLoad,
    *,
    health: TargetHealth | None = None,
) -> RunResult:
    """Run a closed-model load (users looping with think time) and return the windowed result
    (stopped at once when `health` knows the target is down)."""
    guard = HealthGuard(health, "the closed-model load")
    rec = LatencyRecorder(windows=load.windows, window_s=load.duration_s / load.windows)
    for route in _routes(requests):
        rec.touch(route)
    events: list[tuple[float, float, bool]] = []
    issued = 0
    started_at = _now_iso()
    sampler = (
        ServerSampler(client, interval_s=load.sample_interval_s, timeout_s=load.timeout_s)
        if load.sample_interval_s
        else None
    )
    start = time.perf_counter()
    end_at = start + load.duration_s
    hard_deadline = end_at + load.timeout_s + GRACE_S

    async def user(u: int) -> None:
        nonlocal issued
        rng = random.Random(load.seed * 7919 + u)
        identity = identity_address(u) if load.identities else None
        while True:
            now = time.perf_counter()
            if now >= end_at or (load.max_requests is not None and issued >= load.max_requests):
                return
            if guard.should_stop():
                return
            i = issued
            issued += 1
            spec = _pick(requests, i)
            offset = now - start
            window = rec.window_of(offset)
            try:
                kind = await send_one(client, spec, identity, load.timeout_s, guard)
            except asyncio.CancelledError:
                rec.record_error(spec.metric, "deadline", window=window)
                raise
            done = time.perf_counter()
            events.append((offset, done - start, kind is None))
            if kind is None:
                rec.record(spec.metric, done - now, window=window)
            else:
                rec.record_error(spec.metric, kind, window=window)
            think = load.think_time_s
            if load.random_think and think > 0:
                think = rng.expovariate(1.0 / think)
            if think > 0:
                await asyncio.sleep(min(think, max(0.0, end_at - time.perf_counter())))

    if sampler:
        sampler.start()
    try:
        users = {asyncio.create_task(user(u)) for u in range(load.users)}
        await _finish_by(users, hard_deadline, guard)
    finally:
        trace = await sampler.stop() if sampler else None
    end = time.perf_counter() - start
    if not guard.stopped:
        end = max(end, load.duration_s)
    return RunResult(
        metrics=rec.results(),
        load=load.parameters(_routes(requests)),
        started_at=started_at,
        duration_s=round(end, 6),
        longest_outage_s=longest_outage(events, end),
        server=trace,
        stopped=guard.stopped,
    )


def run_load(
    base_url: str,
    requests: RequestSource,
    load: OpenLoad | ClosedLoad,
    *,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RunResult:
    """Synchronous convenience: own an AsyncClient for `base_url` and run one load on it."""

    async def main() -> RunResult:
        limit = load.max_concurrency if isinstance(load, OpenLoad) else load.users
        async with httpx.AsyncClient(
            base_url=base_url,
            headers=dict(headers or {}),
            timeout=httpx.Timeout(load.timeout_s),
            limits=httpx.Limits(max_connections=limit + 2, max_keepalive_connections=limit + 2),
            transport=transport,
        ) as client:
            if isinstance(load, OpenLoad):
                return await run_open(client, requests, load)
            return await run_closed(client, requests, load)

    return asyncio.run(main())
