"""Checklist 3.3 (concurrency patterns rollout): contention, races, deadlocks, 25->100%.

With `new_concurrency_patterns` on, concurrent clients must see consistent state: every created job
listed once and counted once, each job's history only moving forward, everything finishing in
bounded time, and concurrent cancels of one job resolved exactly once.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from .rollout import (
    TERMINAL,
    exposed_user,
    new_job_id,
    percentile,
    subscribe_clean,
    unexposed_user,
)

if TYPE_CHECKING:
    from .rollout import RolloutChecker

FLAG = "new_concurrency_patterns"
ITEM = "deploy.phase3.3_3_concurrency_patterns"
STATUS_RANK = {
    "pending": 0,
    "scheduled": 0,
    "running": 1,
    "completed": 2,
    "failed": 2,
    "cancelled": 2,
}

pytestmark = [pytest.mark.component, pytest.mark.concurrency, pytest.mark.deploy]


def _users() -> tuple[str, str]:
    return exposed_user(25), unexposed_user(25)


def _post_job(api: Any, source: str, job_id: str, user: str) -> Any:
    return api.post(
        "/api/jobs",
        json={
            "type": "FULL_ETL",
            "source_config": source,
            "target_config": "sink=memory",
            "job_id": job_id,
        },
        headers={"X-User-Id": user},
    )


def _snapshot(
    api: Any, expect: Any, *, strict: bool = False, tries: int = 50
) -> tuple[dict[str, int], dict[str, str]]:
    """A consistent (health metrics jobs block, {job id: status} of GET /api/jobs) pair.

    The listing is read between two metrics reads that agree (on the total, or with `strict` on
    every per-status count too), so concurrent creators or transitions elsewhere cannot make the
    metrics and the listing disagree.
    """
    last: tuple[Any, Any] = (None, None)
    for _ in range(tries):
        m1 = _jobs_metrics(api, expect)
        resp = expect.status(api.get("/api/jobs"), 200)
        listing = expect.json_fields(resp, {"jobs": list, "total": int})
        m2 = _jobs_metrics(api, expect)
        ids = {str(j.get("id")): str(j.get("status")) for j in listing["jobs"]}
        same = m1 == m2 if strict else m1["total"] == m2["total"]
        if same and m2["total"] == len(ids):
            return m2, ids
        last = (m1, m2)
        time.sleep(0.02)
    raise expect.fail(
        f"no consistent snapshot of /api/health/metrics and /api/jobs in {tries} tries",
        expected="the jobs block unchanged across a listing of exactly jobs.total jobs",
        got=f"metrics {last[0]} / {last[1]}",
    )


def _jobs_metrics(api: Any, expect: Any) -> dict[str, int]:
    resp = expect.status(api.get("/api/health/metrics"), 200)
    body = expect.json_fields(
        resp,
        {
            "metrics.jobs.total": int,
            "metrics.jobs.running": int,
            "metrics.jobs.completed": int,
            "metrics.jobs.failed": int,
            "metrics.jobs.cancelled": int,
        },
    )
    return {k: int(v) for k, v in body["metrics"]["jobs"].items() if isinstance(v, int)}


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.enable_concurrency_patterns")
def test_concurrency_flag_at_25_percent_follows_fnv1a(rollout: RolloutChecker) -> None:
    """3.3 Enable new concurrency patterns (25% rollout): exposure follows FNV-1a."""
    rollout.enable(FLAG, 25)


@pytest.mark.performance
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.monitor_lock_contention")
def test_lock_contention_under_parallel_load(
    rollout: RolloutChecker,
    etl_api: Any,
    etl_expect: Any,
    etl_jobs: Any,
    record_metric: Any,
) -> None:
    """3.3 Monitor lock contention and performance: health latency, DB pool, parallel writes."""
    rollout.set(FLAG, 25)
    source = etl_jobs.profiles["quick"]

    def db_counters() -> dict[str, int]:
        resp = etl_expect.status(etl_api.get("/api/health/metrics"), 200)
        body = etl_expect.json_fields(
            resp,
            {
                "metrics.database.connection_timeouts": int,
                "metrics.database.connection_failures": int,
            },
        )
        return {k: int(v) for k, v in body["metrics"]["database"].items() if isinstance(v, int)}

    def health_ms() -> float:
        start = time.perf_counter()
        etl_expect.status(etl_api.get("/api/health"), 200)
        return (time.perf_counter() - start) * 1000

    idle = [health_ms() for _ in range(60)]
    db_before = db_counters()
    stop = time.monotonic() + 2.0
    statuses: list[int] = []
    created: list[str] = []
    users = _users()

    def writer(w: int) -> None:
        # Writes contend for the database; at most 15 creates per writer keep the run's job count
        # bounded, reads fill the rest of the window.
        i = 0
        while time.monotonic() < stop:
            if i < 15:
                job_id = new_job_id(f"lock{w}x{i}")
                resp = _post_job(etl_api, source, job_id, users[(w + i) % 2])
                statuses.append(resp.status_code)
                created.append(job_id)
            else:
                job_id = created[(w * 15 + i) % len(created)]
            statuses.append(etl_api.get(f"/api/jobs/{job_id}").status_code)
            statuses.append(etl_api.get("/api/monitor/metrics").status_code)
            i += 1

    loaded: list[float] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(writer, w) for w in range(6)]
        while time.monotonic() < stop:
            loaded.append(health_ms())
        for f in futures:
            f.result(timeout=30)
    db_after = db_counters()
    for job_id in created:
        etl_jobs.wait_for(job_id, statuses=TERMINAL, timeout=60.0)
    p50_idle, p95_idle = percentile(idle, 50), percentile(idle, 95)
    p50_load, p95_load = percentile(loaded, 50), percentile(loaded, 95)
    record_metric("concurrency_health_p50_ms_idle", round(p50_idle, 2))
    record_metric("concurrency_health_p95_ms_idle", round(p95_idle, 2))
    record_metric("concurrency_health_p50_ms_loaded", round(p50_load, 2))
    record_metric("concurrency_health_p95_ms_loaded", round(p95_load, 2))
    record_metric("concurrency_jobs_created_in_2s", len(created))
    bad = [s for s in statuses if s not in (200, 201)]
    etl_expect.that(
        not bad,
        what=f"{len(created)} parallel creates and reads over 2 s all succeed",
        expected="HTTP 200/201 for every request",
        got=f"{len(bad)} failures, statuses {sorted(set(bad))}",
    )
    grew = {k: db_after[k] - db_before[k] for k in ("connection_timeouts", "connection_failures")}
    etl_expect.that(
        not any(grew.values()),
        what="no database pool contention failures under parallel writes",
        expected="connection_timeouts and connection_failures unchanged",
        got=grew,
    )
    etl_expect.that(
        p95_load < 1000,
        what="health stays responsive while 6 writers contend",
        expected="p95 under 1 s under load (contract 3: health SHOULD answer well under 100 ms)",
        got=f"p95 {p95_load:.1f} ms under load vs {p95_idle:.1f} ms idle (p50 {p50_load:.1f} "
        f"vs {p50_idle:.1f} ms)",
    )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.deadlocks_race_conditions")
def test_parallel_creates_listed_and_counted_once(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any
) -> None:
    """3.3 Check for deadlocks or race conditions: 40 creates over 8 threads, exact counts."""
    rollout.set(FLAG, 25)
    n = 40
    source = etl_jobs.profiles["quick"]
    users = _users()
    metrics_before, listed_before = _snapshot(etl_api, etl_expect)
    ids = [new_job_id(f"par{i}") for i in range(n)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda i: _post_job(etl_api, source, ids[i], users[i % 2]), range(n))
        )
    bad = [(a.status_code, a.text[:100]) for a in answers if a.status_code not in (200, 201)]
    etl_expect.that(
        not bad,
        what=f"{n} parallel creates are all accepted",
        expected="HTTP 200/201 each",
        got=f"{len(bad)} refused: {bad[:3]}",
    )
    returned = [a.json().get("job_id") for a in answers]
    etl_expect.that(
        returned == ids,
        what="each parallel create answers its own job id",
        expected="the requested ids, in order",
        got=[r for r, i in zip(returned, ids, strict=True) if r != i][:5],
    )
    metrics_after, listed_after = _snapshot(etl_api, etl_expect)
    new_ids = set(listed_after) - set(listed_before)
    etl_expect.that(
        set(ids) <= new_ids,
        what="GET /api/jobs lists every created job",
        expected=f"all {n} ids",
        got=f"{len(set(ids) - new_ids)} missing, e.g. {sorted(set(ids) - new_ids)[:3]}",
    )
    delta = metrics_after["total"] - metrics_before["total"]
    etl_expect.that(
        delta == len(new_ids) and delta >= n,
        what="/api/health/metrics jobs.total rises by exactly the jobs created",
        expected=f"+{len(new_ids)} ({n} ours, {len(new_ids) - n} from other clients meanwhile)",
        got=f"+{delta} ({metrics_before['total']} -> {metrics_after['total']})",
    )
    resp = etl_expect.status(etl_api.get("/api/monitor/metrics"), 200)
    mon = etl_expect.json_fields(
        resp, {"total_jobs": int, "running_jobs": int, "completed_jobs": int, "failed_jobs": int}
    )
    etl_expect.that(
        mon["total_jobs"] >= metrics_after["total"]
        and mon["total_jobs"] >= mon["running_jobs"] + mon["completed_jobs"] + mon["failed_jobs"],
        what="/api/monitor/metrics counts add up",
        expected=f"total_jobs >= {metrics_after['total']} and >= running + completed + failed",
        got=mon,
    )
    for job_id in ids:
        etl_jobs.wait_for(job_id, statuses=TERMINAL, timeout=60.0)
    final_metrics, final_list = _snapshot(etl_api, etl_expect, strict=True)
    per_status: dict[str, int] = {}
    for status in final_list.values():
        per_status[status] = per_status.get(status, 0) + 1
    mismatched = {
        s: (final_metrics.get(s), per_status.get(s, 0))
        for s in ("running", "completed", "failed", "cancelled")
        if final_metrics.get(s) != per_status.get(s, 0)
    }
    etl_expect.that(
        not mismatched,
        what="per-status counts in /api/health/metrics match the job list",
        expected="metrics.jobs.<status> == number of listed jobs with that status",
        got={s: f"metrics {m}, listed {c}" for s, (m, c) in mismatched.items()},
    )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.deadlocks_race_conditions")
def test_concurrent_jobs_have_no_lost_updates(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any, etl_ws: Any
) -> None:
    """3.3 Check for deadlocks or race conditions: 8 concurrent jobs, histories move forward."""
    rollout.set(FLAG, 25)
    ids = [new_job_id(f"hist{i}") for i in range(8)]
    ws = etl_ws()
    subscribe_clean(ws, job_ids=ids, message_types=["job_status_update"], include_system=False)
    source = etl_jobs.profiles["quick"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(
            pool.map(
                lambda j: etl_expect.status(_post_job(etl_api, source, j, "etlv"), (200, 201)), ids
            )
        )

        def poll(job_id: str) -> dict[str, Any]:
            return dict(etl_jobs.wait_for(job_id, statuses=TERMINAL, timeout=60.0))

        finals = list(pool.map(poll, ids))
    problems: list[str] = []
    for job_id, final in zip(ids, finals, strict=True):
        history = etl_jobs.history(job_id)
        for prev, cur in itertools.pairwise(history):
            if STATUS_RANK.get(cur["status"], -1) < STATUS_RANK.get(prev["status"], -1):
                problems.append(f"{job_id}: status {prev['status']} -> {cur['status']}")
            for key in ("progressPercent", "recordsProcessed"):
                if (cur.get(key) or 0) < (prev.get(key) or 0):
                    problems.append(f"{job_id}: {key} {prev.get(key)} -> {cur.get(key)}")
        processed = final.get("recordsProcessed")
        parts = (final.get("recordsSuccessful"), final.get("recordsFailed"))
        ints = [v for v in (processed, *parts) if isinstance(v, int)]
        if len(ints) != 3 or ints[0] != ints[1] + ints[2]:
            problems.append(
                f"{job_id}: recordsProcessed {processed} != successful + failed {parts}"
            )
        if final.get("status") == "completed" and final.get("progressPercent") != 100:
            problems.append(f"{job_id}: completed at {final.get('progressPercent')}%")
    seen: dict[str, list[str]] = {j: [] for j in ids}
    remaining = set(ids)
    deadline = time.monotonic() + 10.0
    while remaining and time.monotonic() < deadline:
        for msg in ws.collect(until=None, timeout=0.5):
            data = msg.get("data") or {}
            job = data.get("jobId")
            if msg.get("type") == "job_status_update" and job in seen:
                seen[job].append(str(data.get("status")))
                if data.get("status") in TERMINAL:
                    remaining.discard(job)
    for job_id, pushed in seen.items():
        if pushed != ["running", "completed"]:
            problems.append(f"{job_id}: pushed statuses {pushed}, expected running, completed")
    etl_expect.that(
        not problems,
        what="8 concurrent jobs lose no update",
        expected="polled status/progress/records never go back; processed = successful + "
        "failed; each transition pushed once in order",
        got=f"{len(problems)} problems: " + "; ".join(problems[:5]),
    )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.deadlocks_race_conditions")
def test_mixed_concurrent_operations_finish_in_bounded_time(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any
) -> None:
    """3.3 Check for deadlocks or race conditions: interleaved creates/cancels/reads finish."""
    rollout.set(FLAG, 25)
    quick, long = etl_jobs.profiles["quick"], etl_jobs.profiles["long"]
    ids = [new_job_id(f"mix{i}") for i in range(16)]
    errors: list[str] = []

    def worker(i: int) -> None:
        job_id = ids[i]
        resp = _post_job(etl_api, long if i % 2 else quick, job_id, _users()[i % 2])
        if resp.status_code not in (200, 201):
            errors.append(f"create {job_id}: HTTP {resp.status_code}")
            return
        for path in ("/api/jobs", f"/api/jobs/{job_id}", "/api/monitor/metrics"):
            status = etl_api.get(path).status_code
            if status != 200:
                errors.append(f"GET {path}: HTTP {status}")
        if i % 2:
            status = etl_api.put(f"/api/jobs/{job_id}", json={"status": "cancelled"}).status_code
            if status not in (200, 409):
                errors.append(f"cancel {job_id}: HTTP {status}")

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(worker, i) for i in range(len(ids))]
        for f in futures:
            f.result(timeout=60)
    finals = {j: etl_jobs.wait_for(j, statuses=TERMINAL, timeout=30.0)["status"] for j in ids}
    took = time.monotonic() - start
    etl_expect.that(
        not errors,
        what="interleaved creates, reads and cancels are all answered",
        expected="no error answers",
        got=errors[:5],
    )
    wrong = {
        j: s
        for i, (j, s) in enumerate(finals.items())
        if s != ("cancelled" if i % 2 else "completed")
    }
    etl_expect.that(
        not wrong,
        what="every job ends as its operations say",
        expected="quick jobs completed, cancelled long jobs cancelled",
        got=wrong,
    )
    resp = etl_api.get("/api/health", timeout=2.0)
    etl_expect.that(
        resp.status_code == 200 and took < 60,
        what="the server is responsive after the mixed run (no deadlock)",
        expected="all done within 60 s, health 200 within 2 s",
        got=f"{took:.1f} s, health HTTP {resp.status_code}",
    )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.thread_safety_components")
def test_concurrent_cancels_of_one_job_resolve_once(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any
) -> None:
    """3.3 Verify thread safety of new components: 8 simultaneous cancels, one 200, seven 409."""
    rollout.set(FLAG, 25)
    threads = 8
    for round_ in range(3):
        job_id = etl_jobs.create(profile="long")
        if round_ == 2:  # one round on a running job, two while possibly still pending
            etl_jobs.wait_for(job_id, statuses={"running"}, timeout=15.0)
        barrier = threading.Barrier(threads)

        def cancel(i: int, j: str = job_id, b: threading.Barrier = barrier) -> Any:
            b.wait(timeout=10)
            return etl_api.put(
                f"/api/jobs/{j}",
                json={"status": "cancelled"},
                headers={"X-User-Id": _users()[i % 2]},
            )

        with ThreadPoolExecutor(max_workers=threads) as pool:
            answers = list(pool.map(cancel, range(threads)))
        codes = sorted(a.status_code for a in answers)
        etl_expect.that(
            codes == [200] + [409] * (threads - 1),
            what=f"{threads} simultaneous cancels of {job_id} succeed exactly once",
            expected=f"one HTTP 200 and {threads - 1} HTTP 409",
            got=codes,
        )
        for a in answers:
            if a.status_code == 409:
                etl_expect.error_body(a, status=409, code="INVALID_JOB_STATE")
        final = etl_jobs.get(job_id)
        etl_expect.that(
            final["status"] == "cancelled",
            what=f"{job_id} stays cancelled",
            expected="cancelled",
            got=final["status"],
        )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.increase_rollout_gradually")
def test_concurrency_rollout_raised_gradually_to_100(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, etl_jobs: Any
) -> None:
    """3.3 Increase rollout gradually to 100%: 25, 50, 100, exposure, parallel creates."""
    source = etl_jobs.profiles["quick"]
    for percent in (25, 50, 100):
        rollout.enable(FLAG, percent, sample=200, header_sample=20)
        ids = [new_job_id(f"up{percent}x{i}") for i in range(8)]
        user = exposed_user(percent)
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda j, u=user: _post_job(etl_api, source, j, u), ids))
        codes = [a.status_code for a in answers]
        etl_expect.that(
            all(c in (200, 201) for c in codes),
            what=f"parallel creates succeed at {percent}% rollout",
            expected="HTTP 200/201 x 8",
            got=codes,
        )
        for job_id in ids:
            etl_jobs.wait_for(job_id, statuses={"completed"}, timeout=30.0)
