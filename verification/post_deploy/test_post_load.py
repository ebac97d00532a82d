"""Post-deployment functional testing: a short concurrent load smoke.

Checklist "1. Functional Testing": "Test system under load". 8 threads x 25 requests of a job mix
(create, read, list, cancel, health, monitor) within 20 s: no 5xx, no dropped connection, and every
job created reaches a terminal state (quick jobs complete, long ones are cancelled).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from etlverify.health import TargetBlocked
from etlverify.measure.load import identity_address

from .support import TERMINAL

ITEM = "post.1_functional_testing.under_load"

pytestmark = [
    pytest.mark.post_deploy,
    pytest.mark.functional,
    pytest.mark.heavy,
    pytest.mark.checklist(ITEM),
]

THREADS, REQUESTS, BUDGET_S = 8, 25, 20.0
QUICK = {
    "type": "EXTRACT",
    "source_config": "rows=100;batch=50;delay_ms=2",
    "target_config": "sink=memory",
}
LONG = {
    "type": "LOAD",
    "source_config": "rows=100000;batch=100;delay_ms=50",
    "target_config": "sink=memory",
}


def test_job_mix_under_concurrent_load(etl_api: Any, etl_expect: Any, etl_jobs: Any) -> None:
    """Test system under load: 8 x 25 requests of a job mix, no 5xx, every job ends (or cancels)."""
    lock = threading.Lock()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    created: dict[str, str] = {}  # job id -> "quick" | "long"
    deadline = time.monotonic() + BUDGET_S

    def record(resp: Any) -> None:
        with lock:
            statuses[resp.status_code] += 1
            if resp.status_code >= 500:
                failures.append(
                    f"HTTP {resp.status_code} for {resp.request.method} {resp.request.url.path}: "
                    f"{etl_api.curl(resp)}"
                )

    blocked: list[TargetBlocked] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        mine: list[str] = []
        # each virtual user its own client identity, as the contract asks of load (section 6)
        who = {"X-Forwarded-For": identity_address(20_000 + n)}
        for i in range(REQUESTS):
            if blocked:
                return  # the target is known to be down: nothing more is sent
            if time.monotonic() > deadline:
                with lock:
                    failures.append(
                        f"thread {n} ran out of the {BUDGET_S:g} s budget at request {i}"
                    )
                return
            roll = rng.random()
            try:
                if roll < 0.2 or not mine:
                    kind = "long" if rng.random() < 0.15 else "quick"
                    resp = etl_api.post(
                        "/api/jobs", json=LONG if kind == "long" else QUICK, headers=who
                    )
                    record(resp)
                    if resp.status_code in (200, 201):
                        job_id = resp.json().get("job_id")
                        mine.append(job_id)
                        with lock:
                            created[job_id] = kind
                elif roll < 0.5:
                    record(etl_api.get(f"/api/jobs/{rng.choice(mine)}", headers=who))
                elif roll < 0.65:
                    record(etl_api.get("/api/jobs", headers=who))
                elif roll < 0.8:
                    record(etl_api.get("/api/health", headers=who))
                elif roll < 0.9:
                    record(etl_api.get("/api/monitor/metrics", headers=who))
                else:
                    record(etl_api.get(f"/api/jobs/{rng.choice(mine)}/metrics", headers=who))
            except TargetBlocked as exc:
                with lock:
                    blocked.append(exc)
                return
            except Exception as exc:
                text = str(exc).strip()
                with lock:
                    failures.append(text.splitlines()[0][:300] if text else "a request failed")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        list(pool.map(worker, range(THREADS)))
    elapsed = time.monotonic() - started
    if blocked:
        raise blocked[0]  # a consequence of the health event, counted under it
    print(
        f"load smoke: {sum(statuses.values())} requests in {elapsed:.1f} s, "
        f"statuses {dict(statuses)}"
    )
    etl_expect.that(
        not failures,
        what=f"{THREADS} threads x {REQUESTS} requests within {BUDGET_S:g} s",
        expected="no 5xx, no transport failure, within the budget",
        got=f"{len(failures)} problems: " + "; ".join(failures[:5]),
    )
    etl_expect.that(
        statuses[200] + statuses[201] >= THREADS * REQUESTS * 0.9,
        what="answers under load",
        expected=">= 90% 2xx (429 only if rate limits bite)",
        got=dict(statuses),
    )
    for job_id, kind in created.items():
        if kind == "long":
            resp = etl_jobs.cancel(job_id)
            etl_expect.that(
                resp.status_code in (200, 409),
                what=f"cancel of the long job {job_id} after the load",
                expected="200 (or 409 if it already ended)",
                got=resp.status_code,
                resp=resp,
            )
    unfinished = []
    for job_id, kind in created.items():
        final = etl_jobs.wait_for(job_id, statuses=set(TERMINAL), timeout=30)
        want = "completed" if kind == "quick" else "cancelled"
        if final.get("status") != want:
            unfinished.append(f"{job_id} ({kind}): {final.get('status')}")
    etl_expect.that(
        not unfinished,
        what=f"the {len(created)} jobs created under load reach their end",
        expected="quick jobs completed, long jobs cancelled",
        got="; ".join(unfinished),
    )
